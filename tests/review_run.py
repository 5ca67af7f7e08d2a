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
from rlaif.judge import filter as flt

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
