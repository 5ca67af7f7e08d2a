"""A tiny hand-written run folder for the review page and label tests: real parquet files written
through rlaif.io's writers; pairs.parquet + pairs.card.json from the filter's own `filter_pairs`.

Round 0 (judgments carry a `rationale` column; round 1's do not, as older judges wrote them):
  p1  c0 beats c1 in both orders          -> kept
  p2  c1 beats c0 in both orders          -> kept (chosen is the larger id)
  p3  c0 first: c0 wins; c1 first: c1     -> inconsistent
  p4  tie in both orders                  -> tie
  p5  c0 wins both, c1 hit max_tokens     -> truncated
  p6  c0 wins both, 60 vs 10 tokens       -> length_ratio
  p7  both responses identical            -> identical
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from rlaif.config import FilterConfig
from rlaif.io import CANDIDATES_SCHEMA, JUDGMENTS_SCHEMA, PAIRS_SCHEMA, write_json, write_parquet
from rlaif.judge.pairs import filter as flt

# prompt -> (verdict ab, verdict ba, (text0, tokens0, finish0), (text1, tokens1, finish1))
ROUND0 = {
    "p1": ("a", "a", ("Paris is the capital of France.", 8, "stop"), ("It might be Lyon.", 6, "stop")),
    "p2": ("b", "b", ("2 + 2 = 5", 7, "stop"), ("2 + 2 = 4", 7, "stop")),
    "p3": ("a", "b", ("Water boils at 100 C at sea level.", 10, "stop"), ("Water boils at 90 C.", 8, "stop")),
    "p4": ("tie", "tie", ("Blue.", 2, "stop"), ("It is blue.", 4, "stop")),
    "p5": ("a", "a", ("A haiku: old pond, frog jumps in.", 12, "stop"), ("A haiku about a pond and", 16, "length")),
    "p6": ("a", "a", ("A long and careful answer " * 6, 60, "stop"), ("Short answer.", 10, "stop")),
    "p7": ("a", "a", ("Same text.", 3, "stop"), ("Same  text.", 3, "stop")),
}
ROUND1 = {
    "q1": ("a", "a", ("Round one: the better answer.", 7, "stop"), ("Round one: the worse one.", 7, "stop")),
    "q2": ("b", "a", ("Round one: a coin flip.", 6, "stop"), ("Round one: another flip.", 6, "stop")),
}


def _frames(k: int, spec: dict, rationale: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    cands, judg = [], []
    for pid, (v_ab, v_ba, *sides) in spec.items():
        for i, (text, tokens, finish) in enumerate(sides):
            cands.append({"prompt_id": pid, "candidate_id": f"{pid}/c{i}", "round": k,
                          "messages": [{"role": "user", "content": f"Question {pid} of round {k}?"}],
                          "response": text, "num_tokens": tokens, "finish_reason": finish, "model": "m",
                          "adapter": None, "seed": 0})
        for order, v in (("ab", v_ab), ("ba", v_ba)):
            row = {"key": f"{k}|{pid}|{order}", "prompt_id": pid, "kind": "pairwise", "a_id": f"{pid}/c0",
                   "b_id": f"{pid}/c1", "order": order, "verdict": v, "judge_model": "judge-m"}
            if rationale:
                row["rationale"] = f"{pid} {order}: the {'first' if v == ('a' if order == 'ab' else 'b') else 'second'} answer is right"
            judg.append(row)
    schema = {**JUDGMENTS_SCHEMA, "rationale": pl.String}
    if not rationale:
        schema.pop("rationale")
    j = pl.DataFrame({c: [r.get(c) for r in judg] for c in schema}, schema=schema)
    return pl.DataFrame(cands, schema=CANDIDATES_SCHEMA), j


def build_run(run_dir: Path, cfg: FilterConfig = FilterConfig()) -> Path:
    """Write rounds 0 and 1 under run_dir and filter each as `rlaif filter` does; returns run_dir."""
    for k, spec, rationale in ((0, ROUND0, True), (1, ROUND1, False)):
        rdir = run_dir / f"round-{k}"
        cands, j = _frames(k, spec, rationale)
        write_parquet(rdir / "candidates" / "part-00000.parquet", cands, CANDIDATES_SCHEMA)
        write_parquet(rdir / "judgments.parquet", j)  # no schema given: the file keeps exactly these columns
        pairs, card = flt.filter_pairs(j, cands, cfg, k)
        write_parquet(rdir / "pairs.parquet", pairs, PAIRS_SCHEMA)
        write_json(rdir / "pairs.card.json", {"stage": "filter", "round": k, **card})
    return run_dir


# A round judged by checklist (judge.mode=checklist: each candidate alone, item by item, no pairwise
# call), with weights that turn the ranking around: item "0" weighs 3, item "1" weighs 1.
#   k1  c0: 0 yes (0.9), 1 no (0.1)  -> weighted 0.70, unweighted 0.50
#       c1: 0 no (0.3), 1 yes (1.0)  -> weighted 0.475, unweighted 0.65: the weights pick c0
#   k2  c0: both yes (0.8, 0.7)      -> 0.775 / 0.75; c1: both no (0.2, 0.1) -> 0.175 / 0.15: c0 either way
# Round 1 is judged by rubric score (judge.mode=score): s1 c0 7.0, c1 4.0.
CHECKLIST = {"0": {"item": "Does it answer the question asked?", "weight": 3.0},
             "1": {"item": "Is it under 20 words?", "weight": 1.0}}
CHECKLIST_ROUND = {
    "k1": (("The answer is 42, because 6 x 7 = 42.", [("yes", 0.9), ("no", 0.1)]),
           ("Numbers are fun.", [("no", 0.3), ("yes", 1.0)])),
    "k2": (("Yes: boil for 9 minutes.", [("yes", 0.8), ("yes", 0.7)]),
           ("Eggs come from hens, which live on farms all over the world and lay them daily.",
            [("no", 0.2), ("no", 0.1)])),
}
SCORE_ROUND = {"s1": (("A clear, correct proof.", 7.0), ("A proof with a gap.", 4.0))}


def single_frames(k: int, spec: dict, kind: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    cands, judg = [], []
    for pid, sides in spec.items():
        for i, (text, judged) in enumerate(sides):
            cid = f"{pid}/c{i}"
            cands.append({"prompt_id": pid, "candidate_id": cid, "round": k,
                          "messages": [{"role": "user", "content": f"Question {pid} of round {k}?"}],
                          "response": text, "num_tokens": 10 + 2 * i, "finish_reason": "stop", "model": "m",
                          "adapter": None, "seed": 0})
            answers = judged if kind == "checklist" else [("score", judged)]
            for item, (verdict, p) in enumerate(answers):
                judg.append({"key": f"{k}|{cid}|{item}", "prompt_id": pid, "kind": kind, "a_id": cid,
                             "verdict": verdict, "score_a": p, "item": str(item) if kind == "checklist" else None,
                             "judge_model": "judge-m"})
    j = pl.DataFrame({c: [r.get(c) for r in judg] for c in JUDGMENTS_SCHEMA}, schema=JUDGMENTS_SCHEMA)
    return pl.DataFrame(cands, schema=CANDIDATES_SCHEMA), j


def build_checklist_run(run_dir: Path, cfg: FilterConfig = FilterConfig()) -> Path:
    """Round 0 judged by a weighted checklist, round 1 by rubric score, each filtered as `rlaif filter`
    does: with the checklist's weights, recorded in pairs.card.json as the filter stage records them."""
    weights = {i: c["weight"] for i, c in CHECKLIST.items()}
    for k, spec, kind in ((0, CHECKLIST_ROUND, "checklist"), (1, SCORE_ROUND, "score")):
        rdir = run_dir / f"round-{k}"
        cands, j = single_frames(k, spec, kind)
        write_parquet(rdir / "candidates" / "part-00000.parquet", cands, CANDIDATES_SCHEMA)
        write_parquet(rdir / "judgments.parquet", j, JUDGMENTS_SCHEMA)
        pairs, card = flt.filter_pairs(j, cands, cfg, k, weights)
        write_parquet(rdir / "pairs.parquet", pairs, PAIRS_SCHEMA)
        write_json(rdir / "pairs.card.json", {"stage": "filter", "round": k, **card, "checklist": CHECKLIST})
    return run_dir
