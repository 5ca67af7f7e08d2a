"""`rlaif run` and `rlaif status` on the tiny model: two rounds with evaluation and the report,
resumable after kill -9."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from safetensors.torch import load_file

from conftest import ROOT, rlaif_cli

pytestmark = pytest.mark.slow


def _args(run_dir, tiny_model):
    return ["run", "configs/quickstart.yaml", f"run_dir={run_dir}", f"model={tiny_model}", "rounds=2",
            "generate.max_prompts=6", "generate.n=3", "generate.max_tokens=12", "generate.temperature=1.0",
            "judge.mode=score", "filter.drop_length_truncated=false", "filter.max_length_ratio=null",
            "train.max_steps=2", "train.batch_size=2", "train.max_length=128", "train.save_steps=1",
            "train.learning_rate=1e-3", "evaluate.n_prompts=4"]


def _final(run_dir):
    pairs = [pl.read_parquet(run_dir / f"round-{k}" / "pairs.parquet").sort("chosen_id") for k in (0, 1)]
    adapters = [load_file(run_dir / f"round-{k}" / "train" / "adapter" / "adapter_model.safetensors") for k in (0, 1)]
    return pairs, adapters


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("clean")
    t0 = time.monotonic()
    res = rlaif_cli(*_args(run_dir, tiny_model), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res.seconds = time.monotonic() - t0
    return run_dir, res


def test_two_rounds_then_nothing_to_do(clean_run, tiny_model):
    run_dir, res = clean_run
    assert "run: all 2 rounds done; report ->" in res.stdout
    gen1 = json.loads((run_dir / "round-1" / "candidates.manifest.json").read_text())
    assert gen1["adapter"] == str((run_dir / "round-0" / "train" / "adapter").resolve())  # round 1 samples the policy
    assert gen1["model_path"] == str(tiny_model)
    c1 = pl.read_parquet(run_dir / "round-1" / "candidates" / "part-00000.parquet")
    assert (c1["round"] == 1).all() and c1["adapter"].is_not_null().all()
    again = rlaif_cli(*_args(run_dir, tiny_model))
    assert again.returncode == 0 and "already; nothing to do" in again.stdout
    st = rlaif_cli("status", str(run_dir))
    assert st.returncode == 0
    rows = st.stdout.splitlines()
    assert rows[0].split() == ["generate", "judge", "train", "evaluate"]
    assert rows[1].startswith("round 0") and rows[2].startswith("round 1") and rows[2].count("done") == 4
    assert "done: win" in rows[2]


def test_each_round_evaluated_and_reported(clean_run):
    from matplotlib.image import imread

    run_dir, _ = clean_run
    evals = [json.loads((run_dir / f"round-{k}" / "eval" / "eval.json").read_text()) for k in (0, 1)]
    for e in evals:
        assert e["mode"] == "score" and e["n_prompts"] == 4
        assert e["win_rate"] is None or 0 <= e["win_rate"] <= 1
    assert evals[0]["vs_previous"] is None and evals[1]["vs_previous"] is not None
    # the SFT answers are made once per run and shared by both rounds
    assert len(list((run_dir / "eval-sft" / "candidates").glob("part-*.parquet"))) == 1
    report = (run_dir / "report.md").read_text()
    rows = [ln for ln in report.splitlines() if ln.startswith("| 0 ") or ln.startswith("| 1 ")]
    assert len(rows) == 2, report
    for png in ("length.png", "winrate.png", "judge_length.png"):
        if png != "length.png" and evals[-1]["win_rate"] is None:
            continue  # nothing judged validly: no rate to plot (the table says "-")
        img = imread(run_dir / png)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01, png  # a real, non-blank image
        assert f"({png})" in report


def test_status_shows_partial_and_missing(tmp_path, tiny_model):
    args = _args(tmp_path, tiny_model)
    cfg_only = rlaif_cli("generate", "--config", "configs/quickstart.yaml", *args[2:], "generate.max_prompts=1")
    assert cfg_only.returncode == 0, cfg_only.stderr
    st = rlaif_cli("status", str(tmp_path))
    lines = st.stdout.splitlines()
    assert "done: 3 cand." in lines[1] and "missing" in lines[1] and lines[2].count("missing") == 4


def test_kill_9_at_a_random_stage_then_rerun_matches(clean_run, tmp_path, tiny_model):
    """Kill the whole run (the parent and its stage process) at a random moment, then rerun."""
    killed = tmp_path / "killed"
    delay = random.Random(os.getpid()).uniform(0.1, 0.85) * clean_run[1].seconds
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", *_args(killed, tiny_model)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage child dies too, mid-write or mid-step
    proc.wait()
    assert not (killed / "round-1" / "train" / "train.manifest.json").exists(), "killed too late to test resume"
    res = rlaif_cli(*_args(killed, tiny_model), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (p_clean, a_clean), (p_killed, a_killed) = _final(clean_run[0]), _final(killed)
    for a, b in zip(p_clean, p_killed):
        assert a.drop("messages").equals(b.drop("messages"))
    for a, b in zip(a_clean, a_killed):  # CPU training resumed from a checkpoint: equal up to float noise
        assert a.keys() == b.keys()
        assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_failed_stage_stops_the_run_with_its_code(tmp_path, tiny_model):
    res = rlaif_cli(*_args(tmp_path, tiny_model), "prompts=tests/assets/missing.jsonl")
    assert res.returncode == 2
    assert "generate failed in round 0 (exit 2)" in res.stderr and "prompts file not found" in res.stderr
