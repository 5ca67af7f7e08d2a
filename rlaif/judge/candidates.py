"""The round's candidates as the judge sees them: `read_candidates` reads the finished shards
(`scan_candidates`: the same rows as a lazy scan, read as a query pulls them), and `split_inputs`
says which may be sent to a judge (each rejected row gets a reason, counted; no call is made for
it; rows in = accepted + rejected). Shared by the judge stage, evaluate and calibrate's cost
projection, so all three start from the same rows."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from rlaif.config import JudgeConfig
from rlaif.errors import UserError
from rlaif.io import CANDIDATES_SCHEMA, read_parquet_checked, scan_parquet_checked

C, F = pl.col, pl.element().struct.field
# What Python's str.strip() strips (every c with c.isspace(), tests/test_memory_flat.py): polars'
# strip_chars() strips Unicode White_Space, which lacks \x1c-\x1f, so a reply of "\x1c" would pass.
SPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
         "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def _shards(rdir: Path) -> list[Path]:
    files = sorted((rdir / "candidates").glob("part-*.parquet"))
    if not (rdir / "candidates.manifest.json").exists() or not files:
        raise UserError(f"{rdir}: no finished candidates (candidates.manifest.json); run `rlaif generate` first")
    return files


def read_candidates(rdir: Path) -> pl.DataFrame:
    return read_parquet_checked(_shards(rdir), CANDIDATES_SCHEMA, "candidates")


def scan_candidates(rdir: Path) -> pl.LazyFrame:
    """read_candidates' rows, lazily: the judge stage holds no whole candidates frame it does not
    need (issue 22, item 5). Each shard's columns are checked now."""
    return scan_parquet_checked(_shards(rdir), CANDIDATES_SCHEMA, "candidates")


def chats_of(frame: pl.DataFrame) -> dict[str, list]:
    """prompt_id -> its conversation (the messages column; a prompt's candidates share it)."""
    return dict(zip(frame["prompt_id"], frame["messages"].to_list()))


def with_shown_chars(frame: pl.DataFrame | pl.LazyFrame, max_history_tokens: int) -> pl.DataFrame | pl.LazyFrame:
    """frame with `shown`: len(conversation(shown)) of each row's messages, shown as the judge shows
    the chat, a multi-turn history cut to judge.max_history_tokens by fit_history (templates.py).
    Polars list expressions in steps (each intermediate computed once), no Python per row nor per
    batch (a Python batch function here made the streaming engine queue rows ahead of it: peak RSS
    grew with the round, measured 2026-12-05).

    conversation() joins "role: content" lines (None as "None") with blank lines. A chat is multi-
    turn when an assistant turn precedes its last user turn (split_turns); fit_history then drops
    the oldest non-system history turns, the fewest that make the history at most 3 characters a
    token, and the judge is shown the rest, the final user turn and what follows it."""
    role, msgs = F("role"), C("messages")
    system = (role == "system").fill_null(False)
    part = role.fill_null("None").str.len_chars().cast(pl.Int64) + F("content").fill_null("None").str.len_chars() + 2
    users, assistants = (msgs.list.eval((role == r).fill_null(False)) for r in ("user", "assistant"))
    n, last = C("_n"), C("_last")  # last: the final user turn
    steps = [
        {"_n": msgs.list.len().cast(pl.Int64), "_parts": msgs.list.eval(part), "_users": users,
         "_first_asst": pl.when(assistants.list.any()).then(assistants.list.arg_max().cast(pl.Int64))},
        {"_last": pl.when(C("_users").list.any()).then(n - 1 - C("_users").list.reverse().list.arg_max())},
        {"_multi": (C("_first_asst") < last).fill_null(False),
         "_hist": pl.when(C("_first_asst") < last).then(msgs.list.head(last))},  # multi-turn chats only
        {"_sys_sum": C("_hist").list.eval(pl.when(system).then(part).otherwise(0)).list.sum(),
         "_sys_n": C("_hist").list.eval(system).list.sum().cast(pl.Int64),
         "_v": C("_hist").list.eval(pl.when(system).then(None).otherwise(part + 2)).list.drop_nulls()},  # + separator
        {"_m": C("_v").list.len().cast(pl.Int64), "_total": C("_v").list.sum()},
        # kept: sys_sum + 2 sys_n - 2 + (total - the first k v's) <= 3 M, for the fewest k (v > 0)
        {"_need": C("_sys_sum") + 2 * C("_sys_n") - 2 + C("_total") - 3 * max_history_tokens},
        {"_k": pl.min_horizontal((C("_v").list.eval(pl.element().cum_sum()) - C("_need")).list.eval(pl.element() < 0)
                                 .list.sum().cast(pl.Int64) + (C("_need") > 0).cast(pl.Int64), C("_m"))},
        {"shown": pl.when("_multi").then(
            C("_sys_sum") + C("_total") - C("_v").list.head(C("_k")).list.sum() - 2 * (C("_m") - C("_k"))
            + C("_parts").list.slice(last).list.sum()  # the final user turn and what follows it
            + 2 * (C("_sys_n") + C("_m") - C("_k") + n - 1 - last))
         .otherwise(pl.max_horizontal(C("_parts").list.sum() + 2 * (n - 1), 0)).fill_null(0)},
    ]
    for step in steps:
        frame = frame.with_columns(**step)
    return frame.drop([k for step in steps[:-1] for k in step])


def reject_reason(shown: pl.Expr, cfg: JudgeConfig) -> pl.Expr:
    """The reason a candidate is not sent to a judge, or null; shown: with_shown_chars' column.
    (Polars strings are valid UTF-8, so the old per-row `invalid_unicode` check cannot fire on rows
    read from parquet.)"""
    text, chars = C("response"), C("response").str.len_chars().cast(pl.Int64)
    # ~3 characters a token is a safe overestimate for English; two responses must fit in one call.
    return (pl.when(text.is_null() | (text.str.strip_chars(SPACE) == "")).then(pl.lit("empty"))
            .when(chars > cfg.max_response_chars).then(pl.lit("too_long_chars"))
            .when(text.str.contains("\x00", literal=True)).then(pl.lit("nul_byte"))
            .when((shown + 2 * chars) / 3 > cfg.max_input_tokens).then(pl.lit("over_judge_context"))
            .otherwise(pl.lit(None, pl.String)))


def split_inputs(candidates: pl.DataFrame | pl.LazyFrame, cfg: JudgeConfig
                 ) -> tuple[pl.DataFrame | pl.LazyFrame, dict[str, int]]:
    """(accepted rows in their order, {reason: count}); a lazy scan in gives a lazy frame out, read
    once more to count the rejections (no Python loop over rows either way: issue 22, item 5)."""
    flagged = (with_shown_chars(candidates, cfg.max_history_tokens)
               .with_columns(reject=reject_reason(C("shown"), cfg)).drop("shown"))
    counts = flagged.filter(C("reject").is_not_null()).group_by("reject").len()
    if isinstance(counts, pl.LazyFrame):
        counts = counts.collect(engine="streaming")
    return flagged.filter(C("reject").is_null()).drop("reject"), {k: int(v) for k, v in sorted(counts.iter_rows())}
