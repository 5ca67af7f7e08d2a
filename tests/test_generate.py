"""The generate stage on a tiny random Llama (seconds): schema, determinism, resume, skips."""
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import ASSETS, ROOT, finished_adapter, make_adapter, rlaif_cli
from rlaif.config import GenerateConfig, RunConfig, load_config
from rlaif.errors import UserError
from rlaif.io import CANDIDATES_SCHEMA
from rlaif.prompts import read_prompts
import rlaif.generate as generate
from rlaif.generate import spawn, stage as gstage


def _cfg(tmp_path, model, *extra):
    return load_config(ROOT / "configs/quickstart.yaml",
                       [f"run_dir={tmp_path}", f"model={model}", "prompts=tests/assets/prompts.jsonl",
                        "generate.max_tokens=16", "generate.shard_size=5",
                        "generate.batch_size=4", *extra])


def _candidates(run_dir, k=0):
    files = sorted((run_dir / f"round-{k}" / "candidates").glob("part-*.parquet"))
    return pl.read_parquet(files).sort("candidate_id")


def test_candidates_schema_counts_and_manifest(tmp_path, tiny_model):
    manifest_path = generate.run(_cfg(tmp_path, tiny_model))
    df = _candidates(tmp_path)
    assert df.schema == CANDIDATES_SCHEMA
    assert df.height == 12 * 2 and df.group_by("prompt_id").len()["len"].to_list() == [2] * 12
    assert not df.select(pl.struct("prompt_id", "candidate_id").is_duplicated().any()).item()
    assert set(df["finish_reason"]) <= {"stop", "length"}
    assert df.filter(pl.col("finish_reason") == "length")["num_tokens"].to_list() == \
        [16] * df.filter(pl.col("finish_reason") == "length").height
    assert (df["num_tokens"] <= 16).all() and (df["round"] == 0).all()
    m = json.loads(manifest_path.read_text())
    assert m["counts"]["candidates"] == 24 and m["counts"]["shards"] == 3
    assert m["tokens"]["completion"] == df["num_tokens"].sum()
    assert m["sampling"] == {"n": 2, "max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "top_k": 0,
                             "sampling_args": {}, "engine_args": {}, "system_prompt": None, "chat_template": None}
    assert m["versions"]["torch"] and m["timing"]["tokens_per_s"] > 0


def test_same_seed_same_rows_other_seed_differs(tmp_path, tiny_model):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate.run(_cfg(a, tiny_model))
    generate.run(_cfg(b, tiny_model))
    generate.run(_cfg(c, tiny_model, "seed=1"))
    assert _candidates(a).equals(_candidates(b))
    assert not _candidates(a)["response"].equals(_candidates(c)["response"])


def test_rerun_is_a_no_op_and_changed_config_is_refused(tmp_path, tiny_model, capsys):
    generate.run(_cfg(tmp_path, tiny_model))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "round-0" / "candidates").glob("*")}
    generate.run(_cfg(tmp_path, tiny_model))
    assert "already done" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "round-0" / "candidates").glob("*")}
    with pytest.raises(UserError, match="different model/adapter/prompts/sampling"):
        generate.run(_cfg(tmp_path, tiny_model, "generate.n=3"))


def test_prompts_over_context_are_skipped_and_counted(tmp_path, tiny_model):
    long = tmp_path / "p.jsonl"
    long.write_text(json.dumps({"prompt_id": "short", "prompt": "Hi"}) + "\n"
                    + json.dumps({"prompt_id": "long", "prompt": "word " * 300}) + "\n")
    m = json.loads(generate.run(_cfg(tmp_path, tiny_model, f"prompts={long}", "generate.max_model_len=128")).read_text())
    assert m["counts"]["skipped_too_long"] == 1 and m["skipped_too_long"]["prompt_ids"] == ["long"]
    assert m["skipped_too_long"]["limit_tokens"] == 128 - 16
    assert set(_candidates(tmp_path)["prompt_id"]) == {"short"}


def test_render_matches_text_template(demo_model):
    from transformers import AutoTokenizer

    from rlaif.generate.stage import render

    tok = AutoTokenizer.from_pretrained(demo_model)
    chat = [{"role": "user", "content": "Name a colour."}]
    ids = render(tok, chat)
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant; no extra BOS


def _many_prompts(path, n=40):
    path.write_text("".join(json.dumps({"prompt_id": f"q{i:03d}", "prompt": f"Question {i}: count to {i}."}) + "\n"
                            for i in range(n)))
    return path


def test_kill_9_then_rerun_equals_clean_run(tmp_path, tiny_model):
    prompts = _many_prompts(tmp_path / "p.jsonl")
    args = ["generate", "--config", "configs/quickstart.yaml", f"model={tiny_model}", f"prompts={prompts}",
            "generate.shard_size=1", "generate.max_tokens=48", "generate.n=2"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    shards = killed / "round-0" / "candidates"
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", *args, f"run_dir={killed}"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(shards.glob("part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(shards.glob("part-*.parquet")))
    assert 1 <= done_at_kill < 40 and not (killed / "round-0" / "candidates.manifest.json").exists()

    # Bad input on the rerun fails without touching the finished shards.
    snapshot = {p.name: p.read_bytes() for p in shards.glob("part-*.parquet")}
    bad = rlaif_cli(*args, f"run_dir={killed}", "model=/no/such/model")
    assert bad.returncode == 2 and "no such folder" in bad.stderr
    assert {p.name: p.read_bytes() for p in shards.glob("part-*.parquet")} == snapshot

    resumed = rlaif_cli(*args, f"run_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {done_at_kill}/40 shards already done" in resumed.stdout
    assert rlaif_cli(*args, f"run_dir={clean}").returncode == 0
    a, b = _candidates(killed), _candidates(clean)
    assert a.height == 80 and a.equals(b)
    assert not list(shards.glob(".*.tmp"))
    saved = load_config(killed / "config.yaml")  # the CLI saved the resolved config, and it reloads
    assert saved.generate.shard_size == 1 and saved.model == str(tiny_model)



# ----------------------------------------------------------------------------- issue 11, items 6 and 8

def _adapter_args(run_dir, model, adapter):
    return ["generate", "--config", "configs/quickstart.yaml", f"run_dir={run_dir}", f"model={model}", "round=1",
            "prompts=tests/assets/prompts.jsonl", "generate.max_prompts=2", "generate.max_tokens=4",
            f"generate.adapter={adapter}"]


def test_an_adapter_retrained_in_place_is_not_taken_for_the_old_one(tmp_path, tiny_model):
    adapter = finished_adapter(tmp_path, 0, tiny_model, seed=0)
    assert rlaif_cli(*_adapter_args(tmp_path, tiny_model, adapter)).returncode == 0
    again = rlaif_cli(*_adapter_args(tmp_path, tiny_model, adapter))
    assert again.returncode == 0 and "up to date" in again.stdout
    first = json.loads((tmp_path / "round-1" / "candidates.manifest.json").read_text())
    finished_adapter(tmp_path, 0, tiny_model, seed=1)  # round 0 trained again: same path, other weights
    res = rlaif_cli(*_adapter_args(tmp_path, tiny_model, adapter))
    # stale, not reused: the old rows are moved aside and the round is sampled from the new adapter (issue 20)
    assert res.returncode == 0 and "stale (generate.adapter changed" in res.stdout, res.stdout + res.stderr[-2000:]
    m = json.loads((tmp_path / "round-1" / "candidates.manifest.json").read_text())
    assert m["adapter_id"] and m["model_id"] and m["adapter_id"] != first["adapter_id"]  # by content
    assert list((tmp_path / "round-1" / "stale").glob("generate-*/candidates.manifest.json"))


def test_an_adapter_is_used_only_once_its_training_finished(tmp_path, tiny_model):
    adapter = tmp_path / "round-0" / "train" / "adapter"
    make_adapter(tiny_model, adapter, seed=0)  # adapter_config.json and weights, but no train.manifest.json
    res = rlaif_cli(*_adapter_args(tmp_path, tiny_model, adapter))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "round 0's training is not finished" in lines[0], res.stderr
    assert not (tmp_path / "round-1" / "candidates").exists()
    lone = tmp_path / "my-lora"  # an adapter from elsewhere needs its weights, not only its config
    lone.mkdir()
    (lone / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    res = rlaif_cli(*_adapter_args(tmp_path, tiny_model, lone))
    assert res.returncode == 2 and "no adapter weights there" in res.stderr


def test_a_release_that_changes_a_default_does_not_reuse_old_rows(tmp_path, tiny_model):
    """A later release whose default top_k is 50 (transformers' own) must not take rows sampled under 0."""
    class NextGenerate(GenerateConfig):
        top_k: int = 50

    class NextRun(RunConfig):
        generate: NextGenerate = NextGenerate()

    cfg = _cfg(tmp_path, tiny_model)
    nxt = NextRun.model_validate(cfg.model_dump(exclude={"generate": {"top_k"}}))
    assert cfg.generate.top_k == 0 and nxt.generate.top_k == 50
    prompts = read_prompts(ASSETS / "prompts.jsonl")
    assert gstage.fingerprint(cfg, prompts, str(tiny_model)) != gstage.fingerprint(nxt, prompts, str(tiny_model))


def test_an_unreadable_plan_json_is_named_not_taken_for_another_config(tmp_path, tiny_model, capsys):
    cfg = _cfg(tmp_path, tiny_model, "generate.max_prompts=4", "generate.shard_size=2", "generate.max_tokens=4")
    generate.run(cfg)
    out = tmp_path / "round-0" / "candidates"
    (tmp_path / "round-0" / "candidates.manifest.json").unlink()
    (out / "plan.json").write_text('{"fingerprint": "3f')
    with pytest.raises(UserError, match=r"plan.json: unreadable .* nothing says which config made the 2 shard"):
        generate.run(cfg)
    for shard in out.glob("part-*.parquet"):
        shard.unlink()
    generate.run(cfg)  # no shard depends on it: written again, and said
    assert "was unreadable and no shard depends on it" in capsys.readouterr().out
    assert json.loads((out / "plan.json").read_text())["shards"]


def test_unreadable_worker_stats_are_counted_and_reported(tmp_path, tiny_model, capsys):
    small = ["generate.max_prompts=4", "generate.shard_size=2", "generate.max_tokens=4"]
    generate.run(_cfg(tmp_path, tiny_model, *small, "generate.worker=0/2"))
    out = tmp_path / "round-0" / "candidates"
    (out / "worker-0-of-2.json").write_text('{"worker": "0/2", "shar')
    generate.run(_cfg(tmp_path, tiny_model, *small, "generate.worker=1/2"))
    m = json.loads((tmp_path / "round-0" / "candidates.manifest.json").read_text())
    assert m["worker_stats_unreadable"] == ["worker-0-of-2.json"]
    assert [w["worker"] for w in m["workers"]] == ["1/2"]
    assert "worker-0-of-2.json: unreadable" in capsys.readouterr().err


def test_data_parallel_without_torch_says_it_runs_on_cpu(monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert spawn.visible_gpus() == []
    assert "torch is not importable here: workers run on CPU" in capsys.readouterr().out
