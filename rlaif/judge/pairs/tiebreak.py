"""Hybrid judging (judge.backend=verifier with judge.tiebreak): the checks decide where they can, an LLM
judge where they cannot.

Where correctness can be run (code against tests, an answer against a reference), a pair should come
from the check, not from a model's opinion. But the checks often score every candidate of a prompt the
same (all pass, or all fail), and then they say nothing about which is better. For those prompts only,
the tiebreak judge (an ordinary judge section: backend openai, local or vllm, the user's rubric)
compares the candidates pairwise, both orders, through the same ledger; its verdicts become pairs
like any pairwise verdict (rlaif/judge/pairs/compare.py: prompts with pairwise calls are compared on
them, the others best vs worst by the checks' score). The filter card counts kept pairs by source.
"""
from __future__ import annotations

import polars as pl

from rlaif.judge.candidates import chats_of
from rlaif.judge.session import JudgeSession, Plan, send_all


def tied_prompts(scores: pl.DataFrame) -> set[str]:
    """Prompts whose candidates the checks scored all alike (at least two valid scores, one value)."""
    valid = scores.filter(pl.col("verdict") == "score")
    g = valid.group_by("prompt_id").agg(n=pl.len(), hi=pl.col("score_a").max(), lo=pl.col("score_a").min())
    return set(g.filter((pl.col("n") >= 2) & (pl.col("hi") == pl.col("lo")))["prompt_id"].to_list())


def tiebreak_round(js: JudgeSession, cfg, accepted: pl.DataFrame, tied: list[str], comps: list) -> tuple[Plan, dict]:
    """Send the tiebreak judge's pairwise calls for the tied prompts' comparisons (rank.plan_pairs: every
    two distinct texts); (plan, stats). Its calls go to the verifier's ledger, keyed on the tiebreak
    judge's own identity."""
    stats = {"tied_prompts": len(tied), "comparisons": len(comps), "calls": 2 * len(comps)}
    if not comps:
        return Plan(), stats
    tcfg = cfg.model_copy(update={"judge": cfg.judge.tiebreak})
    chats = chats_of(accepted)
    with JudgeSession(tcfg, js.ledger.path) as tj:
        calls = (c for pid, a, b in comps for c in tj.pairwise(pid, chats[pid], a, b))
        plan = send_all(tj, calls, "judge: tiebreak (pairwise)", 2 * len(comps))
        stats.update(judge=tj.model, judge_id=tj.judge_id, stopped=tj.runner.stopped or None)
        if tj.runner.stopped:  # a budget cap: the verifier's session reports it and the stage stops
            js.runner.stopped = tj.runner.stopped
    return plan, stats
