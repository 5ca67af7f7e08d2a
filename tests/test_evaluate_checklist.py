"""Evaluate with a judge that scores each answer alone (evaluate.mode=score): a checklist judge's
weighted P(yes), a reward model's reward, a rubric score — the policy's answer wins when it scores
higher. The quickstart judges this way (judge.mode=checklist)."""
from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import finished_adapter, rlaif_cli
from rlaif.evaluate.metrics import invalid_rate, score_outcomes


def _row(kind, a_id, verdict, score, item=None):
    return {"prompt_id": a_id[1:], "kind": kind, "a_id": a_id, "verdict": verdict, "score_a": score, "item": item}


def test_score_outcomes_from_checklists_rewards_and_scores():
    rows = [  # q1: policy 3*0.9 + 0.1 = 2.8/4 vs SFT 3*0.2 + 0.9 = 1.5/4: policy wins on the weighted mean
        _row("checklist", "P1", "yes", 0.9, "0"), _row("checklist", "P1", "no", 0.1, "1"),
        _row("checklist", "S1", "no", 0.2, "0"), _row("checklist", "S1", "yes", 0.9, "1"),
        # q2: the unweighted mean would favour the policy (0.55 vs 0.5); the weights favour SFT
        _row("checklist", "P2", "no", 0.3, "0"), _row("checklist", "P2", "yes", 0.8, "1"),
        _row("checklist", "S2", "yes", 0.5, "0"), _row("checklist", "S2", "yes", 0.5, "1"),
        # q3: one invalid item: the answer has no score, the matchup is left out
        _row("checklist", "P3", "yes", 0.9, "0"), _row("checklist", "P3", "invalid", None, "1"),
        _row("checklist", "S3", "yes", 0.6, "0"), _row("checklist", "S3", "no", 0.1, "1"),
        # q4: rewards (reward_model judge); q5: rubric scores, equal: a tie
        _row("reward", "P4", "score", -1.5), _row("reward", "S4", "score", 0.25),
        _row("score", "P5", "score", 6.0), _row("score", "S5", "score", 6.0),
    ]
    j = pl.DataFrame(rows)
    m = pl.DataFrame({"prompt_id": [f"{i}" for i in range(1, 6)], "policy_id": [f"P{i}" for i in range(1, 6)],
                      "sft_id": [f"S{i}" for i in range(1, 6)]})
    tokens = {f"{s}{i}": 10 for s in "PS" for i in range(1, 6)}
    out = score_outcomes(j, m, tokens, {"0": 3.0, "1": 1.0}).sort("prompt_id")
    assert dict(zip(out["prompt_id"], out["y"])) == {"1": 1.0, "2": 0.0, "4": 0.0, "5": 0.5}
    q1 = out.row(0, named=True)
    assert q1["score_policy"] == pytest.approx(2.8 / 4) and q1["score_sft"] == pytest.approx(1.5 / 4)
    assert q1["policy_first"] == q1["sft_first"] == "policy"
    unweighted = score_outcomes(j, m, tokens).sort("prompt_id")
    assert unweighted.filter(pl.col("prompt_id") == "2")["y"].item() == 1.0
    assert invalid_rate(j, single=True) == pytest.approx(1 / 16)


def test_evaluate_with_a_local_checklist_judge(tmp_path, tiny_model):
    """The real `rlaif evaluate`: every non-identical answer is asked each item once, and each
    outcome follows the weighted P(yes) recorded in eval/judgments.parquet."""
    finished_adapter(tmp_path, 0, tiny_model, seed=3)  # random adapter: the policy answers differently
    args = [f"run_dir={tmp_path}", "prompts=tests/assets/prompts.jsonl", f"model={tiny_model}", "round=0",
            "evaluate.prompts=tests/assets/heldout.jsonl", "generate.max_tokens=12", "judge.backend=local",
            "judge.mode=checklist", "evaluate.mode=score",
            "judge.checklist=[{item: 'Is the response short?', weight: 3}, 'Is the response polite?']"]
    res = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", *args)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    edir = tmp_path / "round-0" / "eval"
    e = json.loads((edir / "eval.json").read_text())
    j = pl.read_parquet(edir / "judgments.parquet")
    out = pl.read_parquet(edir / "outcomes.parquet")
    judged = out.filter(pl.col("policy_first") != "identical")
    assert e["n_judged_pairs"] == judged.height > 0 and e["n_excluded"] == 0 and e["invalid_rate"] == 0.0
    assert set(j["kind"]) == {"checklist"} and j.height == 2 * 2 * judged.height  # 2 answers x 2 items
    p = {(r["a_id"], r["item"]): r["score_a"] for r in j.iter_rows(named=True)}
    score = {cid: (3 * p[(cid, "0")] + p[(cid, "1")]) / 4 for cid, _ in p}
    for r in judged.iter_rows(named=True):
        assert r["score_policy"] == pytest.approx(score[r["policy_id"]])
        assert r["y"] == (1.0 if score[r["policy_id"]] > score[r["sft_id"]] else
                          0.0 if score[r["policy_id"]] < score[r["sft_id"]] else 0.5)
    assert e["win_rate"] == pytest.approx(out["y"].mean())
