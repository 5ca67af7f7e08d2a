"""The filter's side of pairs.source revise|both: revisions.parquet + confirmations -> comparisons.

Each revision (rlaif/judge/pairs/revise.py) is one comparison, chosen = the revision, rejected = the
original. One that never reached the judge keeps its status as its removal (critique_failed,
revision_failed, revision_unchanged, revision_cut_off); a confirmed one (revise.confirm) passes only
when the judge preferred the revision (pairwise: in both orders; score: a higher score), else it is
`revision_not_better` (an invalid confirmation is `invalid`). The filter's own checks then apply to
both sources alike (truncated, identical, length ratio, balance), and pairs.card.json counts every
removal per source, so each source adds up: comparisons_in == kept + removed.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from rlaif.errors import UserError
from rlaif.io import PAIRS_SCHEMA, read_parquet_checked
from rlaif.judge.pairs.revise import REVISIONS, REVISIONS_SCHEMA
from rlaif.judge.templates import TEXT_KINDS

C = pl.col
FILTERS = ("critique_failed", "revision_failed", "revision_unchanged", "revision_cut_off", "revision_not_better")
# pairs.parquet when a round has revise pairs: the training columns (train reads PAIRS_SCHEMA only) plus
# where each pair came from and, for revise pairs, the principle it was revised and confirmed under.
PAIRS_OUT = pl.Schema({**PAIRS_SCHEMA, "source": pl.String, "principle": pl.String})


def read(rdir: Path, judgments: pl.DataFrame) -> pl.DataFrame | None:
    """The round's revisions when its judgments hold critiques (they decide, not today's config)."""
    if not judgments["kind"].is_in(TEXT_KINDS).any():
        return None
    path = rdir / REVISIONS
    if not path.exists():
        raise UserError(f"{path}: not found, yet judgments.parquet holds critique calls; rerun `rlaif judge`")
    rev = read_parquet_checked(path, REVISIONS_SCHEMA, "revisions")
    if (rev["status"] == "pending").any():
        raise UserError(f"{path}: {(rev['status'] == 'pending').sum()} revisions have no reply yet; rerun `rlaif judge`")
    return rev


def confirm_keys(revisions: pl.DataFrame) -> pl.Series:
    return revisions["confirm_keys"].explode().drop_nulls()


def comparisons(judgments: pl.DataFrame, candidates: pl.DataFrame, revisions: pl.DataFrame,
                weights: dict | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(comparisons of both sources with source, principle and pre (a removal decided before the
    filter's checks), candidates plus the revisions as candidates)."""
    from rlaif.judge.pairs.compare import compare

    keys = confirm_keys(revisions).implode()
    ranked = judgments.filter(~C("kind").is_in(TEXT_KINDS) & ~C("key").is_in(keys))
    rank = compare(ranked, weights).with_columns(source=pl.lit("rank"), principle=pl.lit(None, pl.String),
                                                 pre=pl.lit(None, pl.String))
    judged = compare(judgments.filter(C("key").is_in(keys)), weights)  # one prompt, one revision
    rev = revisions.join(judged.select("prompt_id", w_chosen="chosen_id", w_outcome="outcome", w_margin="margin"),
                         on="prompt_id", how="left")
    confirmed = C("confirm_keys").list.len() > 0
    won = (C("w_outcome") == "label") & (C("w_chosen") == C("revision_id"))
    pre = (pl.when(C("status") != "ok").then("status")
           .when(confirmed & C("w_outcome").is_in(["tie", "inconsistent"]) | (C("w_outcome") == "label") & ~won)
           .then(pl.lit("revision_not_better")))
    outcome = (pl.when(C("status") != "ok").then(pl.lit("invalid")).when(~confirmed).then(pl.lit("label"))
               .when(C("w_outcome").is_null()).then(pl.lit("invalid")).otherwise("w_outcome"))
    out = rev.select("prompt_id", chosen_id=pl.when(C("revision").is_not_null()).then("revision_id"),
                     rejected_id="candidate_id", outcome=outcome, consistent=confirmed & won,
                     margin=pl.when(won).then("w_margin"), source=pl.lit("revise"), principle="principle", pre=pre)
    return pl.concat([rank, out.select(rank.columns)]), with_revisions(candidates, revisions)


def with_revisions(candidates: pl.DataFrame, revisions: pl.DataFrame) -> pl.DataFrame:
    """The candidates plus each revision with text, as a candidate the filter can join to."""
    cut = pl.when(C("status") == "revision_cut_off").then(pl.lit("length")).otherwise(pl.lit("stop"))
    extra = (revisions.filter(C("revision").is_not_null())
             .join(candidates.select("candidate_id", "model", "adapter"), on="candidate_id", how="left")
             .select("prompt_id", candidate_id="revision_id", round="round", messages="messages",
                     response="revision", num_tokens="revision_tokens", finish_reason=cut, model=pl.lit("revision"),
                     adapter="adapter", seed=pl.lit(None, pl.Int64)))
    return pl.concat([candidates, extra.select([C(k).cast(v) for k, v in candidates.schema.items()])])


def by_source(df: pl.DataFrame, pairs: pl.DataFrame, judgments: pl.DataFrame, revisions: pl.DataFrame,
              names: tuple) -> dict:
    """pairs.card.json "sources": per source, comparisons in, removals, kept, and what its pairs cost
    (calls and tokens per kept pair); for revise, the confirmation rate."""
    keys = confirm_keys(revisions).implode()
    is_rev = C("kind").is_in(TEXT_KINDS) | C("key").is_in(keys)
    out = {}
    for src, calls in (("rank", judgments.filter(~is_rev)), ("revise", judgments.filter(is_rev))):
        d = df.filter(C("source") == src)
        if src == "rank" and d.is_empty() and calls.is_empty():
            continue
        counts = dict(d.group_by("reason").len().iter_rows())
        kept = int((pairs["source"] == src).sum())
        n_calls, tokens = calls["key"].n_unique(), int((calls["input_tokens"] + calls["output_tokens"]).sum())
        out[src] = {"comparisons_in": d.height, "removed": {k: int(counts.get(k, 0)) for k in names}, "kept": kept,
                    "calls": n_calls, "tokens": tokens, "cost_usd": float(calls["cost_usd"].sum()),
                    "calls_per_kept_pair": n_calls / kept if kept else None,
                    "tokens_per_kept_pair": tokens / kept if kept else None}
    out["revise"].update(confirmation(df, revisions))
    return out


def confirmation(df: pl.DataFrame, revisions: pl.DataFrame) -> dict:
    """How many revisions the judge was asked about, and the share it confirmed (before the filter's
    own checks: a confirmed revision can still be dropped, e.g. for its length ratio)."""
    asked = revisions.filter(C("confirm_keys").list.len() > 0)
    judged = df.filter((C("source") == "revise") & C("rejected_id").is_in(asked["candidate_id"].implode()))
    yes = int(judged["consistent"].sum())
    return {"revisions": revisions.height, "status": dict(revisions.group_by("status").len().sort("status").iter_rows()),
            "confirm_asked": asked.height, "confirmed": yes,
            "confirmation_rate": yes / asked.height if asked.height else None}
