"""What the judge will be asked, read from the round's files: finished candidates, and the
(prompt, a, b) comparisons a strategy makes of them. Shared by the judge stage, evaluate and
calibrate's cost projection, so all three plan the same calls."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.io import CANDIDATES_SCHEMA, read_parquet_checked
from rlaif.judge.session import same_text


def read_candidates(rdir: Path) -> pl.DataFrame:
    files = sorted((rdir / "candidates").glob("part-*.parquet"))
    if not (rdir / "candidates.manifest.json").exists() or not files:
        raise UserError(f"{rdir}: no finished candidates (candidates.manifest.json); run `rlaif generate` first")
    return read_parquet_checked(files, CANDIDATES_SCHEMA, "candidates")


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
