"""report.md's "Pair sources" section, for rounds whose pairs came from revise or both
(pairs.source; rlaif/judge/pairs/revise.py): per round the pairs each source gave, how many revisions the
judge confirmed, what a kept pair cost in calls and tokens per source, and a few (original ->
revision) examples with their principle. Reads pairs.card.json and pairs.parquet only; a missing or
unreadable value is a "-" cell, as everywhere in the report."""
from __future__ import annotations

import polars as pl

HEAD = ("round", "pairs: rank / revise", "revisions confirmed", "calls per kept pair: rank / revise",
        "tokens per kept pair: rank / revise")


def _num(x, fmt: str = "{:.0f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _src(card: dict, name: str) -> dict:
    s = (card.get("sources") or {}).get(name)
    return s if isinstance(s, dict) else {}


def _row(r: dict) -> str:
    rank, rev = _src(r["card"], "rank"), _src(r["card"], "revise")
    rate = rev.get("confirmation_rate")
    confirmed = (f"{rev.get('confirmed')} of {rev.get('confirm_asked')} ({100 * rate:.0f}%)"
                 if isinstance(rate, (int, float)) else "not asked" if rev else "-")
    cells = [str(r["round"]), f"{_num(rank.get('kept'))} / {_num(rev.get('kept'))}", confirmed,
             f"{_num(rank.get('calls_per_kept_pair'), '{:.1f}')} / {_num(rev.get('calls_per_kept_pair'), '{:.1f}')}",
             f"{_num(rank.get('tokens_per_kept_pair'))} / {_num(rev.get('tokens_per_kept_pair'))}"]
    return "| " + " | ".join(cells) + " |"


def _short(text: str, n: int = 160) -> str:
    one = " ".join((text or "").split())
    return one if len(one) <= n else one[: n - 1] + "…"


def examples(rdir, n: int = 3) -> list[dict]:
    try:
        pairs = pl.read_parquet(rdir / "pairs.parquet")
    except (pl.exceptions.PolarsError, OSError):
        return []
    if not {"source", "principle", "chosen", "rejected"} <= set(pairs.columns):
        return []
    return pairs.filter(pl.col("source") == "revise").head(n).to_dicts()


def lines(rounds: list[dict]) -> list[str]:
    """The section's markdown lines; none when no round has revise pairs."""
    mixed = [r for r in rounds if isinstance(r["card"].get("sources"), dict)]
    if not mixed:
        return []
    out = ["", "## Pair sources", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += [_row(r) for r in mixed]
    out += ["", "Revise pairs: a critic critiques one sampled response per prompt under one of judge.principles, "
            "then rewrites it; (revision, original) is the pair (Constitutional AI, Bai et al. 2022). Confirmed: the "
            "judge, under the same principle, preferred the revision (pairwise: in both orders). Calls and tokens "
            "per kept pair: every call of that source (critique, revision, confirmation; or ranking) over its kept "
            "pairs."]
    last = mixed[-1]
    shown = examples(last["dir"])
    if shown:
        out += ["", f"Round {last['round']}, a few kept revisions (original → revision):", ""]
        out += [f"- *{_short(x['principle'], 80)}*: “{_short(x['rejected'])}” → “{_short(x['chosen'])}”"
                for x in shown]
    return out
