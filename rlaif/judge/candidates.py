"""The round's candidates as the judge sees them: `read_candidates` reads the finished shards, and
`split_inputs` says which may be sent to a judge (each rejected row gets a reason, counted; no call
is made for it; rows in = accepted + rejected). Shared by the judge stage, evaluate and calibrate's
cost projection, so all three start from the same rows."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from rlaif.config import JudgeConfig
from rlaif.errors import UserError
from rlaif.io import CANDIDATES_SCHEMA, read_parquet_checked
from rlaif.judge.templates import conversation, fit_history, split_turns


def read_candidates(rdir: Path) -> pl.DataFrame:
    files = sorted((rdir / "candidates").glob("part-*.parquet"))
    if not (rdir / "candidates.manifest.json").exists() or not files:
        raise UserError(f"{rdir}: no finished candidates (candidates.manifest.json); run `rlaif generate` first")
    return read_parquet_checked(files, CANDIDATES_SCHEMA, "candidates")


def reject_reason(text: str | None, chat: list[dict], cfg: JudgeConfig) -> str | None:
    if text is None or not text.strip():
        return "empty"
    if len(text) > cfg.max_response_chars:
        return "too_long_chars"
    if "\x00" in text:
        return "nul_byte"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_unicode"
    # ~3 characters a token is a safe overestimate for English; two responses must fit in one call.
    # A multi-turn history is measured as the judge will show it: cut to judge.max_history_tokens.
    turns = split_turns(chat)
    shown = chat if turns is None else [*fit_history(turns[0], cfg.max_history_tokens)[0], turns[1], *turns[2]]
    if (len(conversation(shown)) + 2 * len(text)) / 3 > cfg.max_input_tokens:
        return "over_judge_context"
    return None


def split_inputs(candidates: pl.DataFrame, cfg: JudgeConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    reasons = [reject_reason(t, m, cfg) for t, m in zip(candidates["response"].to_list(),
                                                          candidates["messages"].to_list())]
    flagged = candidates.with_columns(pl.Series("reject", reasons, dtype=pl.String))
    rejected = dict(flagged.filter(pl.col("reject").is_not_null()).group_by("reject").len().iter_rows())
    return flagged.filter(pl.col("reject").is_null()).drop("reject"), {k: int(v) for k, v in sorted(rejected.items())}
