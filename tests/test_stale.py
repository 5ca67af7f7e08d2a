"""Runs that follow their config (issue 20): a finished round, then one change at a time, and
exactly the stages whose output it can change rerun, saying why; the ledger pays only for changed
calls; a fork reuses the valid stages and leaves its base untouched. The tiny model generates,
trains and judges in-process (judge.backend=local, mode=score), so judge calls are counted in the
round's real ledger."""
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import ROOT, kill_seed, rlaif_cli

pytestmark = pytest.mark.slow
STEPS = ("generate", "judge", "filter", "train", "evaluate")


def _args(run_dir, tiny_model, *extra):
    return ["run", "configs/quickstart.yaml", f"run_dir={run_dir}", f"model={tiny_model}", "rounds=1",
            "generate.max_prompts=4", "generate.n=2", "generate.max_tokens=8", "generate.temperature=1.0",
            "judge.mode=score", "judge.rubric=Prefer the more helpful answer.", "train.max_steps=2",
            "train.batch_size=2", "train.max_length=96", "train.learning_rate=2e-2", "evaluate.n_prompts=2",
            "evaluate.max_tokens=8", *extra]


def ran(stdout: str) -> set[str]:
    """The steps `rlaif run` started this time ("run: round 0 judge ...")."""
    return set(re.findall(r"^run: round 0 (\w+) \.\.\.$", stdout, re.M))


def ledger_rows(run_dir) -> int:
    db = sqlite3.connect(f"file:{run_dir / 'round-0' / 'judge-ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("select count(*) from calls").fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("base") / "run"
    res = rlaif_cli(*_args(run_dir, tiny_model), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert ran(res.stdout) == {"generate", "judge", "train", "evaluate"}
    return run_dir


def _copy(base, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(base, dst)
    return dst


@pytest.mark.parametrize("change, expect, why", [  # the judge's rubric: the next test
    (["train.beta=0.3"], {"train", "evaluate"}, "train.beta changed"),
    (["generate.temperature=0.7"], {"generate", "judge", "train", "evaluate"}, "generate.temperature changed"),
    (["filter.max_length_ratio=5.0"], {"filter", "train", "evaluate"}, "filter.max_length_ratio changed"),
])
def test_a_change_reruns_exactly_the_stages_it_touches(base, tmp_path, tiny_model, change, expect, why):
    run_dir = _copy(base, tmp_path)
    judged = (run_dir / "round-0" / "judge.manifest.json").read_text()
    res = rlaif_cli(*_args(run_dir, tiny_model, *change), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert ran(res.stdout) == expect, res.stdout
    first = min(expect, key=STEPS.index)
    assert re.search(rf"^run: round 0 {first}: stale \({re.escape(why)}: \w+ -> \w+.*\); rerunning; downstream: ",
                     res.stdout, re.M), res.stdout
    assert list((run_dir / "round-0" / "stale").iterdir()), "the stale outputs were moved aside, not deleted"
    if "judge" not in expect:  # the judge stage's output is the very file it was
        assert (run_dir / "round-0" / "judge.manifest.json").read_text() == judged
    again = rlaif_cli(*_args(run_dir, tiny_model, *change))
    assert again.returncode == 0 and "already; nothing to do" in again.stdout, again.stdout


def test_a_rubric_edit_pays_only_for_changed_calls_and_the_prompts_file_counts_by_content(base, tmp_path, tiny_model):
    """The rubric lives in a file: editing the file (not the config) makes the judge stale. Reverting
    it makes the judge stale again, and then every call is in the ledger already: none is made."""
    run_dir = _copy(base, tmp_path)
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Prefer the more helpful answer.\n")
    res = rlaif_cli(*_args(run_dir, tiny_model, f"judge.rubric={rubric}"), timeout=1200)
    assert res.returncode == 0 and "judge" in ran(res.stdout), res.stdout + res.stderr
    n1 = ledger_rows(run_dir)
    rubric.write_text("Prefer the shorter answer.\n")
    st = rlaif_cli("status", str(run_dir))
    assert "judge.rubric changed" in st.stdout and "stale" in st.stdout.splitlines()[1], st.stdout
    res = rlaif_cli(*_args(run_dir, tiny_model, f"judge.rubric={rubric}"), timeout=1200)
    assert ran(res.stdout) == {"judge", "train", "evaluate"}, res.stdout
    n2 = ledger_rows(run_dir)
    assert n2 > n1  # new criteria: new calls
    rubric.write_text("Prefer the more helpful answer.\n")
    res = rlaif_cli(*_args(run_dir, tiny_model, f"judge.rubric={rubric}"), timeout=1200)
    assert ran(res.stdout) == {"judge", "train", "evaluate"}, res.stdout
    assert ledger_rows(run_dir) == n2  # every call of the first rubric was paid for once: none again
    # the prompts file enters by content, whatever its name
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((ROOT / "configs/prompts/quickstart.jsonl").read_text())
    res = rlaif_cli(*_args(run_dir, tiny_model, f"judge.rubric={rubric}", f"prompts={prompts}"), timeout=1200)
    assert ran(res.stdout) == set() and "already; nothing to do" in res.stdout, res.stdout
    prompts.write_text("\n".join(reversed(prompts.read_text().splitlines())) + "\n")  # another order: other shards
    res = rlaif_cli(*_args(run_dir, tiny_model, f"judge.rubric={rubric}", f"prompts={prompts}"), timeout=1200)
    assert "run: round 0 generate: stale (prompts changed" in res.stdout, res.stdout


def test_settings_that_cannot_change_an_output_rerun_nothing(base, tmp_path, tiny_model):
    run_dir = _copy(base, tmp_path)
    res = rlaif_cli(*_args(run_dir, tiny_model, "judge.concurrency=3", "judge.max_cost_usd=5", "train.save_steps=7",
                           "generate.gpu_memory_utilization=0.5", "judge.max_retries=2"))
    assert res.returncode == 0 and ran(res.stdout) == set() and "already; nothing to do" in res.stdout, res.stdout
    st = rlaif_cli("status", str(run_dir))
    assert "stale" not in st.stdout and st.stdout.splitlines()[1].count("done") == 4, st.stdout


def test_a_stage_command_reruns_stale_work_and_no_resume_means_it(base, tmp_path, tiny_model):
    run_dir = _copy(base, tmp_path)
    stage = ["configs/quickstart.yaml", *_args(run_dir, tiny_model)[2:]]
    same = rlaif_cli("train", *stage)
    assert same.returncode == 0 and "up to date" in same.stdout, same.stdout + same.stderr
    old = json.loads((run_dir / "round-0" / "train" / "train.manifest.json").read_text())
    res = rlaif_cli("train", *stage, "train.loss_type=ipo", timeout=1200)
    assert res.returncode == 0 and "stale (train.loss_type changed" in res.stdout, res.stdout + res.stderr
    new = json.loads((run_dir / "round-0" / "train" / "train.manifest.json").read_text())
    assert new["made_from"]["id"] != old["made_from"]["id"]
    res = rlaif_cli("train", *stage, "train.loss_type=ipo", "--no-resume", timeout=1200)
    assert res.returncode == 0 and "stale (--no-resume)" in res.stdout, res.stdout + res.stderr
    st = rlaif_cli("status", str(run_dir), "--config", "configs/quickstart.yaml", *_args(run_dir, tiny_model)[3:])
    assert "round 0 train: stale: train.loss_type changed" in st.stdout, st.stdout


def test_kill_9_during_a_stale_rerun_then_rerun_equals_an_uninterrupted_one(base, tmp_path, tiny_model):
    change = ["train.beta=0.3"]
    clean = _copy(base, tmp_path / "clean")
    res = rlaif_cli(*_args(clean, tiny_model, *change), timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    killed = _copy(base, tmp_path / "killed")
    seed = kill_seed()
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", *_args(killed, tiny_model, *change)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "round-0" / "train" / "train.manifest.json"
    deadline = time.monotonic() + 600
    while not (killed / "round-0" / "stale").exists() and time.monotonic() < deadline:  # the stale rerun began
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 6.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    where = f"RLAIF_KILL_SEED={seed}, train finished before the kill: {manifest.exists()}"
    res = rlaif_cli(*_args(killed, tiny_model, *change), timeout=1200)
    assert res.returncode == 0, where + res.stdout + res.stderr
    from safetensors.torch import load_file

    a, b = (load_file(r / "round-0" / "train" / "adapter" / "adapter_model.safetensors") for r in (clean, killed))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a), where
    ea, eb = (json.loads((r / "round-0" / "eval" / "eval.json").read_text()) for r in (clean, killed))
    assert ea["win_rate"] == eb["win_rate"], where


def test_a_fork_reuses_valid_stages_and_leaves_its_base_alone(base, tmp_path, tiny_model):
    rows = ledger_rows(base)

    def files(run):  # -shm: SQLite's shared-memory index, which any reader of a WAL database writes to
        return {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()
                and not p.name.endswith("-shm")}

    before = files(base)
    fork = tmp_path / "fork"
    res = rlaif_cli(*_args(fork, tiny_model, "train.loss_type=ipo"), "--from", str(base), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "reused round 0 generate, round 0 judge, round 0 filter" in res.stdout, res.stdout
    assert ran(res.stdout) == {"train", "evaluate"}, res.stdout  # no new candidates, no judge calls
    assert ledger_rows(fork) == rows
    a, b = (pl.read_parquet(r / "round-0" / "pairs.parquet") for r in (base, fork))
    assert a.equals(b)
    assert files(base) == before, "the base run was changed by the fork"
    again = rlaif_cli(*_args(fork, tiny_model, "train.loss_type=ipo"), "--from", str(base))
    assert again.returncode == 0 and "already; nothing to do" in again.stdout, again.stdout
    # the two side by side: the one key that differs, the same SFT answers, both rounds' figures
    res = rlaif_cli("compare", str(base), str(fork), "--out", str(tmp_path / "cmp"))
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "train.loss_type" in text and "ipo" in text and "train.beta" not in text, text
    assert "no common baseline" not in text, text  # the fork shares the base's held-out SFT answers
    assert files(base) == before


def test_a_judge_model_counts_by_content(base, tmp_path, tiny_model):
    """The local judge's model enters by what its folder holds: the same weights elsewhere rerun
    nothing; changed weights make the judge, and everything after it, stale."""
    import torch
    from safetensors.torch import load_file, save_file

    run_dir = _copy(base, tmp_path)
    judge = tmp_path / "judge-model"
    shutil.copytree(tiny_model, judge)
    res = rlaif_cli(*_args(run_dir, tiny_model, f"judge.model={judge}"))
    assert res.returncode == 0 and ran(res.stdout) == set(), res.stdout + res.stderr
    weights = judge / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01 * torch.ones_like(tensors[name])
    save_file(tensors, weights, metadata={"format": "pt"})
    res = rlaif_cli(*_args(run_dir, tiny_model, f"judge.model={judge}"), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "run: round 0 judge: stale (judge.model changed" in res.stdout and \
        ran(res.stdout) == {"judge", "train", "evaluate"}, res.stdout


def _candidates(run_dir) -> pl.DataFrame:
    return pl.read_parquet(sorted((run_dir / "round-0" / "candidates").glob("part-*.parquet"))).sort("candidate_id")


def test_a_stale_generate_keeps_the_shards_whose_prompts_seeds_and_settings_did_not_change(tmp_path, tiny_model):
    """One prompt of four edited: the three shards holding the others are kept (linked from the stale
    run), one is sampled again, and the round equals a fresh run on the edited file."""
    lines = [json.loads(x) for x in (ROOT / "tests/assets/prompts.jsonl").read_text().splitlines()[:4]]
    first, edited = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(x) + "\n" for x in lines))
    lines[1] = {**lines[1], "prompt": lines[1]["prompt"] + " Answer in one word."}
    edited.write_text("".join(json.dumps(x) + "\n" for x in lines))
    common = ["generate", "configs/quickstart.yaml", f"model={tiny_model}", "generate.shard_size=1",
              "generate.max_tokens=8", "generate.n=2", "generate.temperature=1.0"]
    run = tmp_path / "run"
    assert rlaif_cli(*common, f"run_dir={run}", f"prompts={first}").returncode == 0
    res = rlaif_cli(*common, f"run_dir={run}", f"prompts={edited}")
    assert res.returncode == 0 and "stale (prompts changed" in res.stdout, res.stdout + res.stderr
    assert "generate: 3 of 4 shards kept from the stale run" in res.stdout, res.stdout
    m = json.loads((run / "round-0" / "candidates.manifest.json").read_text())
    assert m["counts"]["shards_generated_this_run"] == 1
    fresh = tmp_path / "fresh"
    assert rlaif_cli(*common, f"run_dir={fresh}", f"prompts={edited}").returncode == 0
    assert _candidates(run).equals(_candidates(fresh))
