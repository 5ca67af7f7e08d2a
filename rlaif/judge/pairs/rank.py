"""Ranking, the first pair source (pairs.source rank|both): the judge scores or compares the round's
candidates, and the filter (filter.py) turns its verdicts into pairs.

`rank_round` sends this round's calls, single-candidate first (rubric score, checklist, reward),
then pairwise; `plan_pairs` chooses the (prompt, a, b) comparisons a strategy makes (all_pairs, or
best_vs_worst by score); calibrate's cost projection plans with it too, so both plan the same calls.
"""
from __future__ import annotations

from itertools import combinations

import polars as pl

from rlaif.config import RunConfig
from rlaif.judge.candidates import chats_of
from rlaif.judge.session import JudgeSession, Plan, same_text, score_kind, send_all


STREAM_ROWS = 5000  # candidates read at a time when their calls are judged one by one


def rank_round(js: JudgeSession, cfg: RunConfig, accepted: pl.LazyFrame | pl.DataFrame) -> tuple[Plan, int]:
    """Send this round's calls (single-candidate first, then pairwise); returns (plan, identical).
    Calls are made as they are sent (a chunk at a time, rlaif/judge/runner.py) and the plan keeps
    their keys only, so memory stays flat in the number of calls (issue 22, item 5).

    `accepted` may be a lazy scan (the judge stage's): score, reward and verify calls judge one
    candidate each, so their candidates are read STREAM_ROWS at a time and never held whole. The
    phases that need a prompt's candidates together collect what they need: pairwise comparisons
    the round's rows, a checklist the prompts' chats, a tiebreak its tied prompts' rows."""
    j, lazy = cfg.judge, accepted.lazy()
    plan, scores, identical = Plan(), None, 0
    single = js.score_kind != "score" or j.mode == "score" or j.strategy == "best_vs_worst"
    if single:
        if js.score_kind == "checklist":  # items per prompt (generated ones included), then one call per item
            acc = _whole(accepted)
            chats = chats_of(acc)
            items = js.checklists(chats)
            rows = acc.select("prompt_id", "candidate_id", "response").iter_rows()
            calls = (c for pid, cid, text in rows for c in js.single(pid, chats[pid], (cid, text), items[pid]))
            total = sum(len(items[p]) for p in acc["prompt_id"])
        else:
            cols = lazy.select("prompt_id", "candidate_id", "response", "messages")
            total = lazy.select(pl.len()).collect(engine="streaming").item()
            calls = (c for batch in cols.collect_batches(chunk_size=STREAM_ROWS, engine="streaming")
                     for pid, cid, text, chat in batch.iter_rows() for c in js.single(pid, chat, (cid, text)))
        part = send_all(js, calls, f"judge: {js.score_kind}", total)
        plan += part
        if j.mode == "pairwise" and js.score_kind == "score":  # best_vs_worst picks its pairs by score
            scores = js.results(part)
        if j.tiebreak is not None and not js.runner.stopped:  # verifier: an LLM decides where checks tie
            from rlaif.judge.pairs.tiebreak import tiebreak_round, tied_prompts

            tied = sorted(tied_prompts(js.results(part)))  # every two distinct texts of a tied prompt, none by score
            rows = lazy.filter(pl.col("prompt_id").is_in(tied)).collect(engine="streaming")
            comps, identical = plan_pairs(cfg, rows, None)
            tb, js.tiebreak = tiebreak_round(js, cfg, rows, tied, comps)
            plan += tb
    if j.mode == "pairwise" and js.score_kind == "score" and not js.runner.stopped:
        acc = _whole(accepted)
        chats = chats_of(acc)
        comps, identical = plan_pairs(cfg, acc, scores)
        pw = (c for pid, a, b in comps for c in js.pairwise(pid, chats[pid], a, b))
        plan += send_all(js, pw, "judge: pairwise", 2 * len(comps))
    return plan, identical


def _whole(accepted: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """The accepted rows as one frame (checklist and pairwise rounds; never both in one round)."""
    return accepted if isinstance(accepted, pl.DataFrame) else accepted.collect(engine="streaming")


def plan_pairs(cfg: RunConfig, accepted: pl.DataFrame, scores: pl.DataFrame | None) -> tuple[list, int]:
    """(prompt_id, a, b) comparisons; identical texts are never sent (counted instead)."""
    out, identical = [], 0
    best = {}
    if scores is not None:
        valid = scores.filter(pl.col("verdict") == "score").sort(["score_a", "a_id"], descending=[True, False])
        for pid, grp in valid.group_by("prompt_id", maintain_order=True):
            ids = grp["a_id"].to_list()
            if len(ids) >= 2:
                best[pid[0]] = (ids[0], ids[-1])
    for pid, grp in accepted.sort("candidate_id").group_by("prompt_id", maintain_order=True):
        texts = dict(zip(grp["candidate_id"], grp["response"]))
        if cfg.judge.strategy == "all_pairs" or scores is None:
            pairs = list(combinations(sorted(texts), 2))
        else:
            pairs = [best[pid[0]]] if pid[0] in best else []
        for a, b in pairs:
            if same_text(texts[a], texts[b]):
                identical += 1
            else:
                out.append((pid[0], (a, texts[a]), (b, texts[b])))
    return out, identical


def planned_calls(cfg: RunConfig, accepted: pl.DataFrame) -> dict:
    """The calls rank_round makes for these candidates, by kind, without a judge: single-candidate
    calls (per item for a checklist), generated checklists, and pairwise calls (both orders).
    best_vs_worst's pairwise count is an upper bound (identical best and worst texts are not sent).
    calibrate's cost projection and `rlaif plan` count with it."""
    j, kind = cfg.judge, score_kind(cfg.judge)
    prompts = accepted["prompt_id"].n_unique()
    single = kind != "score" or j.mode == "score" or j.strategy == "best_vs_worst"
    out = {kind: accepted.height * (max(len(j.checklist), 1) if kind == "checklist" else 1) if single else 0}
    if kind == "checklist" and j.checklist_from_prompt:
        out["checklist_writer"] = prompts  # the generated items' calls are not known before they are written
    if j.mode == "pairwise" and kind == "score":
        multi = accepted.group_by("prompt_id").len().filter(pl.col("len") >= 2).height
        out["pairwise"] = 2 * (len(plan_pairs(cfg, accepted, None)[0]) if j.strategy == "all_pairs" else multi)
    return {k: v for k, v in out.items() if v}
