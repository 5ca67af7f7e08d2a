"""The run report's first line, check plots and training curves (rlaif/evaluate/report.py, checks.py,
curves.py): curves read from a real DPO run's train-metrics.jsonl (tiny model), flags on
hand-written logs with known answers, and a report over rounds with checks."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from conftest import ASSETS
from rlaif.config import load_config
from rlaif.evaluate import curves
from rlaif.evaluate.report import write_report
from rlaif.io import PAIRS_SCHEMA, write_parquet


def _is_png(path) -> bool:
    import matplotlib.image as mpimg

    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(path).std() > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """Round 0 of a real DPO + LoRA run: 4 steps at a high learning rate, so the policy moves."""
    from rlaif.train import stage

    run_dir = tmp_path_factory.mktemp("report-run")
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "chosen": f"{i} plus {i} is {2 * i}.", "rejected": f"No idea, maybe {i + 7}?", "chosen_id": f"c{i}",
             "rejected_id": f"r{i}", "margin": 1.0, "consistent": True, "chosen_tokens": 6, "rejected_tokens": 4,
             "round": 0} for i in range(6)]
    write_parquet(run_dir / "round-0" / "pairs.parquet", pl.DataFrame(rows, schema=PAIRS_SCHEMA), PAIRS_SCHEMA)
    cfg = load_config(None, [f"run_dir={run_dir}", f"prompts={ASSETS / 'prompts.jsonl'}", f"model={tiny_model}",
                             "train.max_steps=4", "train.batch_size=2", "train.max_length=128", "train.save_steps=4",
                             "train.learning_rate=1e-2", "train.beta=0.2"])
    stage.run(cfg)
    return run_dir


def test_real_train_metrics_have_what_curves_read(trained):
    logs, bad = curves.read_metrics(trained / "round-0" / "train" / "train-metrics.jsonl")
    assert bad == 0 and [x["step"] for x in logs] == [1, 2, 3, 4]  # the end-of-run summary line is not a step
    for key in curves.KEYS:  # the names TRL 1.16's DPOTrainer logs; a rename upstream fails here
        assert all(isinstance(x.get(key), float) for x in logs), key
    # Step 1 is the reference itself (LoRA's zero update): no drift, and a strict-> accuracy of 0, not 0.5.
    first = logs[0]
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6) and first["rewards/accuracies"] == 0.0
    assert curves.drift(first, 0.2) == pytest.approx(0, abs=1e-5)
    last = logs[-1]  # drift is the mean log-ratio on the batch: (beta*c + beta*r) / (2 beta)
    assert curves.drift(last, 0.2) == pytest.approx((last["rewards/chosen"] + last["rewards/rejected"]) / 0.4)
    assert abs(curves.drift(last, 0.2)) > 1e-3  # lr 1e-2 moved it


def test_report_has_training_table_curves_and_survives_a_torn_line(trained):
    path = trained / "round-0" / "train" / "train-metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 5, "loss": 0.6')  # torn by a kill mid-write
    text = write_report(trained).read_text()
    assert "## Training per round" in text and "![Training curves per round](training.png)" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| 0 | 4 |"))
    assert row.rstrip().endswith("| 1 |"), row  # one unreadable line, counted
    logs, _ = curves.read_metrics(path)
    beta = json.loads((trained / "round-0" / "train" / "train.manifest.json").read_text())["train"]["beta"]
    tail = np.mean([curves.drift(x, beta) for x in logs[2:]])
    assert f"{tail:+.2f}" in row
    assert _is_png(trained / "training.png")


def _log(step, acc, chosen=-0.1, rejected=-0.3, loss=0.6):
    return {"step": step, "loss": loss, "rewards/accuracies": acc, "rewards/margins": chosen - rejected,
            "rewards/chosen": chosen, "rewards/rejected": rejected, "logps/chosen": -40.0, "logps/rejected": -50.0}


def test_chance_and_drift_flags():
    # Last half = steps 3-4. Mean accuracy 0.5 is chance; 0.54 is inside the band; 0.56 learnt.
    for tail, flagged in (((0.5, 0.5), True), ((0.6, 0.48), True), ((0.62, 0.5), False), ((1.0, 1.0), False)):
        s = curves.summarize([_log(1, 1.0), _log(2, 1.0), _log(3, tail[0]), _log(4, tail[1])], beta=0.1)
        assert any("at or below chance" in f for f in s["flags"]) == flagged, (tail, s)
    # A policy that never moved: every reward 0, strict accuracy 0 (below chance, flagged too).
    still = curves.summarize([_log(k, 0.0, 0.0, 0.0) for k in (1, 2, 3)], beta=0.1)
    assert "0.00 over the last 2 of 3" in still["flags"][0] and still["drift_tail"] == 0.0
    # beta 0.1, rewards -2.5 and -1.7: log-ratio (-2.5 - 1.7) / 0.2 = -21 nats > 20: exploded.
    boom = curves.summarize([_log(1, 1.0), _log(2, 1.0, -2.5, -1.7)], beta=0.1)
    assert boom["drift_tail"] == pytest.approx(-21.0) and "exploded" in boom["flags"][-1]
    calm = curves.summarize([_log(1, 1.0), _log(2, 1.0, -1.9, -1.9)], beta=0.1)  # -19 nats
    assert calm["flags"] == []
    assert curves.summarize([_log(1, 1.0, -9.0, -9.0)], beta=None)["drift_tail"] is None  # no beta, no drift


def test_tolerant_reader(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [json.dumps(_log(1, 0.5)), "[1, 2]", "", json.dumps(_log(2, 0.5)), json.dumps(_log(2, 1.0)),
             json.dumps({"step": 2, "train_loss": 0.5, "train_runtime": 3.0}), '{"step": 3, "lo']
    path.write_text("\n".join(lines))
    logs, bad = curves.read_metrics(path)
    assert bad == 2 and [x["rewards/accuracies"] for x in logs] == [0.5, 1.0]  # a repeated step keeps its last
    assert curves.read_metrics(tmp_path / "missing.jsonl") == ([], 0)


def _round(run, k, win, ci, lc, pol_tokens, checks, train_logs=None, beta=0.1):
    rdir = run / f"round-{k}"
    (rdir / "eval").mkdir(parents=True)
    (rdir / "eval" / "eval.json").write_text(json.dumps({
        "win_rate": win, "win_rate_ci": ci, "lc_win_rate": lc, "policy_mean_tokens": pol_tokens,
        "sft_mean_tokens": 200.0, "n_prompts": 50, "n_identical": 0, "checks": checks}))
    if train_logs is not None:
        (rdir / "train").mkdir()
        (rdir / "train" / "train-metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in train_logs))
        (rdir / "train" / "train.manifest.json").write_text(json.dumps({"train": {"beta": beta}}))


def _check(pol, sft, lo, hi):
    return {"check": "regex", "policy": pol, "sft": sft, "diff": pol - sft, "diff_ci": [lo, hi], "n": 50}


def test_first_line_says_what_moved_with_intervals(tmp_path):
    run = tmp_path / "run"
    _round(run, 0, 0.52, [0.44, 0.6], 0.5, 205.0,
           {"numbered_list": _check(0.2, 0.12, -0.02, 0.18), "short": _check(0.9, 0.88, -0.06, 0.1)},
           [_log(1, 0.0, 0.0, 0.0), _log(2, 0.0, 0.0, 0.0)])
    _round(run, 1, 0.66, [0.58, 0.74], 0.6, 230.0,
           {"numbered_list": _check(0.56, 0.12, 0.25, 0.62), "short": _check(0.72, 0.88, -0.3, -0.04)},
           [_log(1, 0.5), _log(2, 1.0), _log(3, 1.0, -4.0, -6.5), _log(4, 1.0, -4.0, -6.5)])
    text = write_report(run).read_text()
    first = text.splitlines()[0]
    assert first.startswith("Round 1 policy beats SFT: wins 66% (95% CI 58–74%; LC 60%)"), first
    assert "numbered_list 12% → 56% (rose +44 pts, 95% CI +25 to +62)" in first, first
    assert "short 88% → 72% (fell -16 pts, 95% CI -30 to -4)" in first, first
    assert "responses 15% longer than SFT's (230 vs 200 mean tokens)" in first, first
    # round 0 never moved (accuracy 0: flagged), round 1's drift is (-4 - 6.5) / 0.2 = -52.5 nats
    assert "- round 0 training: reward accuracy 0.00" in text and "- round 1 training: drift" in text
    assert "-52.5 nats" in text
    for name in ("checks.png", "training.png", "winrate.png"):
        assert _is_png(run / name) and f"]({name})" in text, name


def test_checks_unclear_or_unreadable_never_crash(tmp_path):
    run = tmp_path / "run"
    _round(run, 0, 0.5, [0.4, 0.6], 0.5, 200.0, {"x": _check(0.3, 0.3, -0.1, 0.1), "y": {"policy": "bad"}, "z": 3})
    first = write_report(run).read_text().splitlines()[0]
    assert "x 30% → 30% (no clear change, +0 pts, 95% CI -10 to +10), y -, z -" in first, first
    assert _is_png(run / "checks.png")
