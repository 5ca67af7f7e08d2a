"""What `rlaif review` shows, read from the run folder's files only: one row per judged comparison.

Per round: judgments.parquet through the judge's public `compare` (rlaif/judge/pairs/compare.py) gives
one comparison per judged pair; the round's candidate shards give the texts and lengths; the
status of each comparison is "kept" when pairs.parquet holds it, else the name of the first
filter it fails. The filter's checks are recomputed here in the filter's order and with the
config it ran with (pairs.card.json), because the filter stage writes counts, not reasons per
row; the page compares its counts with the card's and shows any difference. length_balance is
whatever passed every check but is missing from pairs.parquet while balancing was on.

Checklist items are weighed as the filter weighed them: the checklist recorded in pairs.card.json
(else the run's config), so the page's chosen answer is the one pairs.parquet holds.

Columns: "left" is the chosen response of a kept or labelled pair (else the pair's first id),
"right" the other. judged_by says what decided: pairwise (both orders), or checklist, score or
reward when each candidate was judged alone. left_first / right_first are the judge's verdicts in
the call that showed that side first (left, right, tie, invalid; null when no pairwise call was
made), so a position-biased judge is plain to see; left_score / right_score are each side's score
as the filter ranks it (checklist: the weighted mean of P(yes)), left_checklist / right_checklist
its answers item by item (item text, verdict, p_yes, weight).
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

import polars as pl
from pydantic import ValidationError

from rlaif.config import FilterConfig
from rlaif.errors import UserError
from rlaif.io import CANDIDATES_SCHEMA, JUDGMENTS_SCHEMA, PAIRS_SCHEMA, SINGLE_KINDS, read_parquet_checked, stable_id
from rlaif.judge.pairs.compare import checklist_items, compare, scores
from rlaif.judge.pairs.filter import FILTERS

C = pl.col
SORTS = {"prompt": (["prompt_id", "left_id"], False), "margin": (["margin"], True),
         "len_diff": (["len_diff"], False), "-len_diff": (["len_diff"], True),
         "abs_len_diff": (["abs_len_diff"], True)}


def rounds(run_dir: Path) -> list[int]:
    found = [int(m.group(1)) for p in Path(run_dir).glob("round-*")
             if p.is_dir() and (m := re.fullmatch(r"round-(\d+)", p.name))]
    return sorted(found)


def _run_config(run_dir: Path):
    """(the run's config.yaml or None, where the defaults come from when it is missing or unreadable)."""
    if not (Path(run_dir) / "config.yaml").exists():
        return None, "defaults"
    from rlaif.config import load_config

    try:
        # reading a run never imports the user's evaluate.checks module (the page and report.md only read)
        return load_config(Path(run_dir) / "config.yaml", import_checks=False), str(Path(run_dir) / "config.yaml")
    except UserError as e:  # a config an older or newer rlaif wrote: show the page anyway, and say so
        return None, f"defaults ({e})"


def filter_config(run_dir: Path, k: int) -> tuple[FilterConfig, str]:
    """The filter config that made the round's pairs (its card), else the run's config, else defaults."""
    card = Path(run_dir) / f"round-{k}" / "pairs.card.json"
    try:
        return FilterConfig(**json.loads(card.read_text())["config"]), str(card)
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        pass
    cfg, where = _run_config(run_dir)
    return (cfg.filter if cfg else FilterConfig()), where


def checklist_config(run_dir: Path, k: int) -> tuple[dict[str, dict], str]:
    """The checklist (item id -> {item, weight}) the round's filter ranked with: the one its
    pairs.card.json records, else the run's config's, else none (every item weighs 1)."""
    card = Path(run_dir) / f"round-{k}" / "pairs.card.json"
    try:
        got = json.loads(card.read_text())["checklist"]
        return {str(i): {"item": str(c["item"]), "weight": float(c["weight"])} for i, c in got.items()}, str(card)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    cfg, where = _run_config(run_dir)
    return (checklist_items(cfg.judge) if cfg else {}), where


# What compare() and the page read; the other JUDGMENTS_SCHEMA columns are optional here (null when a
# file predates them, such as `rationale`), so the page opens runs written by older versions too.
NEEDED = ("prompt_id", "kind", "a_id", "b_id", "order", "verdict")


def read_judgments(path: Path) -> pl.DataFrame:
    """judgments.parquet in JUDGMENTS_SCHEMA (+ rationale), missing optional columns as nulls."""
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:120]})") from None
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise UserError(f"{path}: not a judgments file: missing column(s) {', '.join(missing)}")
    schema = {**JUDGMENTS_SCHEMA, "rationale": pl.String}
    try:
        return df.select([(C(k) if k in df.columns else pl.lit(None)).cast(v).alias(k) for k, v in schema.items()])
    except pl.exceptions.PolarsError as e:
        raise UserError(f"{path}: a column has the wrong type ({str(e).splitlines()[0][:120]})") from None


def _norm(col: str) -> pl.Expr:
    # The filter's normalisation (rlaif/judge/pairs/filter.py _candidates): whitespace runs -> one space.
    return C(col).fill_null("").str.replace_all(r"\s{2,}|[^\S ]", " ").str.strip_chars()


def _verdicts(j: pl.DataFrame) -> pl.DataFrame:
    """Pairwise calls as (prompt_id, lo, hi, shown_first, winner, why): winner a candidate id, tie or invalid."""
    # the judge's reasoning when it explained (judge.explain), else the raw reply of an invalid call
    why = pl.coalesce(C("rationale"), pl.when(C("verdict") == "invalid").then("raw"))
    lo = C("a_id") < C("b_id")
    return (j.filter(C("kind") == "pairwise").select(
        "prompt_id", lo=pl.when(lo).then("a_id").otherwise("b_id"), hi=pl.when(lo).then("b_id").otherwise("a_id"),
        shown_first=pl.when(C("order") == "ab").then("a_id").otherwise("b_id"),
        winner=pl.when(C("verdict") == "a").then("a_id").when(C("verdict") == "b").then("b_id")
        .otherwise(C("verdict").fill_null("invalid")), why=why)
        .unique(["prompt_id", "lo", "hi", "shown_first"], keep="first", maintain_order=True))


def _answers(j: pl.DataFrame, items: dict[str, dict]) -> pl.DataFrame:
    """(candidate_id, checklist): each candidate's checklist answers in item order, as a list of
    (item text, verdict, p_yes, weight); an item the config does not name was generated per prompt."""
    text = {i: c["item"] for i, c in items.items()}
    weight = {i: c["weight"] for i, c in items.items()}
    order = [C("item").str.starts_with("p"), C("item").str.len_chars(), C("item")]  # 0..9, 10.., then p0..
    return (j.filter(C("kind") == "checklist").sort(order)
            .group_by(C("a_id").alias("candidate_id"), maintain_order=True).agg(checklist=pl.struct(
                item=C("item").replace_strict(text, default=pl.concat_str(pl.lit("generated item "), "item")),
                verdict="verdict", p_yes="score_a",
                weight=C("item").replace_strict(weight, default=1.0, return_dtype=pl.Float64))))


def _sides(comp: pl.DataFrame, cands: pl.DataFrame, j: pl.DataFrame, items: dict[str, dict]) -> pl.DataFrame:
    """Comparisons with both sides' text, tokens, finish reason, score, checklist answers and first-shown verdict."""
    c = cands.select("candidate_id", "messages", text="response", tokens="num_tokens", finish="finish_reason")
    weights = {i: it["weight"] for i, it in items.items()}
    sc = scores(j, weights).select(C("cid").alias("candidate_id"), "score").unique("candidate_id", keep="first")
    c = c.join(sc, on="candidate_id", how="left").join(_answers(j, items), on="candidate_id", how="left")
    single = (j.filter(C("kind").is_in(SINGLE_KINDS)).group_by("prompt_id")
              .agg(single_kind=C("kind").first()))
    df = comp.rename({"chosen_id": "left_id", "rejected_id": "right_id"}).join(single, on="prompt_id", how="left")
    df = df.with_columns(judged_by=pl.when(C("source") == "pairwise").then(pl.lit("pairwise"))
                         .otherwise("single_kind")).drop("single_kind")
    for s in ("left", "right"):
        side = c.rename(lambda n, s=s: f"{s}_{n}" if n != "candidate_id" else f"{s}_id")
        df = df.join(side, on=f"{s}_id", how="left")
    lo = C("left_id") < C("right_id")
    df = df.with_columns(lo=pl.when(lo).then("left_id").otherwise("right_id"),
                         hi=pl.when(lo).then("right_id").otherwise("left_id"))
    v = _verdicts(j)
    for s in ("left", "right"):
        side = v.rename({"shown_first": f"{s}_id", "winner": f"w_{s}", "why": f"{s}_first_why"})
        df = df.join(side, on=["prompt_id", "lo", "hi", f"{s}_id"], how="left").with_columns(
            pl.when(C(f"w_{s}") == C("left_id")).then(pl.lit("left")).when(C(f"w_{s}") == C("right_id"))
            .then(pl.lit("right")).otherwise(f"w_{s}").alias(f"{s}_first")).drop(f"w_{s}")
    return df.rename({"left_messages": "messages"}).drop("right_messages")


def _reason(cfg: FilterConfig) -> pl.Expr:
    """The first filter a comparison fails, in rlaif/judge/pairs/filter.py's order (`_reason` there)."""
    lt, rt = C("left_tokens").fill_null(0), C("right_tokens").fill_null(0)
    checks = [
        ("invalid", C("outcome") == "invalid"), ("tie", C("outcome") == "tie"),
        ("inconsistent", C("outcome") == "inconsistent"),
        ("truncated", pl.lit(cfg.drop_length_truncated) & ((C("left_finish") == "length") | (C("right_finish") == "length"))),
        ("empty", (_norm("left_text") == "") | (_norm("right_text") == "")),
        ("identical", _norm("left_text") == _norm("right_text")),
        ("low_margin", C("margin") < cfg.min_margin),
        ("length_ratio", pl.lit(cfg.max_length_ratio is not None)
         & (pl.max_horizontal(lt, rt) / pl.max_horizontal(pl.min_horizontal(lt, rt), 1) > (cfg.max_length_ratio or 0))),
    ]
    expr = pl.when(checks[0][1]).then(pl.lit(checks[0][0]))
    for name, cond in checks[1:]:
        expr = expr.when(cond.fill_null(False)).then(pl.lit(name))
    return expr.otherwise(pl.lit(None, pl.String))


def signature(run_dir: Path, k: int) -> tuple:
    rdir = Path(run_dir) / f"round-{k}"
    files = [rdir / n for n in ("judgments.parquet", "pairs.parquet", "pairs.card.json")]
    files += sorted((rdir / "candidates").glob("part-*.parquet")) + [Path(run_dir) / "config.yaml"]
    return tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())


def load_round(run_dir: Path, k: int) -> tuple[pl.DataFrame, dict]:
    """(one row per comparison of round k, meta); cached until one of the round's files changes."""
    return _load(Path(run_dir), k, signature(run_dir, k))


@lru_cache(maxsize=16)
def _load(run_dir: Path, k: int, sig: tuple) -> tuple[pl.DataFrame, dict]:
    rdir = run_dir / f"round-{k}"
    jpath, ppath, parts = rdir / "judgments.parquet", rdir / "pairs.parquet", sorted((rdir / "candidates").glob("part-*.parquet"))
    if not jpath.exists() or not parts:
        return pl.DataFrame(), {"round": k, "note": f"{rdir}: not judged yet (no judgments.parquet or candidates)"}
    j = read_judgments(jpath)
    cands = read_parquet_checked(parts, CANDIDATES_SCHEMA, "candidates").unique("candidate_id", keep="first")
    cfg, cfg_from = filter_config(run_dir, k)
    items, items_from = checklist_config(run_dir, k)
    weights = {i: it["weight"] for i, it in items.items()}  # one set of weights: the filter's
    df = _sides(compare(j, weights), cands, j, items).with_columns(reason=_reason(cfg), round=pl.lit(k, pl.Int32))
    meta = {"round": k, "filter_config": cfg.model_dump(), "filter_config_from": cfg_from, "weights": weights,
            "weights_from": items_from}
    if ppath.exists():
        kept = read_parquet_checked(ppath, PAIRS_SCHEMA, "pairs").select(
            "prompt_id", left_id="chosen_id", right_id="rejected_id", is_kept=pl.lit(True))
        df = df.join(kept.unique(), on=["prompt_id", "left_id", "right_id"], how="left")
        gone = "length_balance" if cfg.balance_length else "not in pairs.parquet"
        status = pl.when(C("is_kept").fill_null(False)).then(pl.lit("kept")).otherwise(C("reason").fill_null(gone))
    else:
        meta["note"] = f"{ppath}: missing; statuses are the filter's checks recomputed"
        status = C("reason").fill_null("kept")
    df = df.with_columns(status=status, len_diff=C("left_tokens") - C("right_tokens")).with_columns(
        abs_len_diff=C("len_diff").abs(),
        item_id=pl.concat_str([pl.lit(f"{k}"), "prompt_id", "lo", "hi"], separator="\x1f"))
    counts = dict(df.group_by("status").len().iter_rows())
    meta["counts"] = {s: int(counts.get(s, 0)) for s in ("kept", *FILTERS, "not in pairs.parquet") if counts.get(s)}
    meta["card_mismatch"] = _check_card(rdir, meta["counts"])
    return df, meta


def _check_card(rdir: Path, counts: dict) -> list[str]:
    try:
        card = json.loads((rdir / "pairs.card.json").read_text())
    except (OSError, ValueError):
        return []
    want = {"kept": card.get("kept"), **(card.get("removed") or {})}
    return [f"{name}: page {counts.get(name, 0)}, card {n}" for name, n in want.items()
            if isinstance(n, int) and counts.get(name, 0) != n]


def query(df: pl.DataFrame, status: str = "", outcome: str = "", min_diff: int | None = None,
          max_diff: int | None = None, sort: str = "prompt", offset: int = 0, limit: int = 20) -> tuple[int, list]:
    """Filter and sort one round's rows: (how many match, the page of rows asked for)."""
    if df.is_empty():
        return 0, []
    if status == "removed":
        df = df.filter(C("status") != "kept")
    elif status:
        df = df.filter(C("status") == status)
    if outcome:
        df = df.filter(C("outcome") == outcome)
    if min_diff is not None:
        df = df.filter(C("len_diff") >= min_diff)
    if max_diff is not None:
        df = df.filter(C("len_diff") <= max_diff)
    if sort not in SORTS:
        raise UserError(f"sort {sort!r}: expected one of {', '.join(SORTS)}")
    by, desc = SORTS[sort]
    df = df.sort([*by, "item_id"], descending=[desc] * len(by) + [False], nulls_last=True)
    keep = [c for c in df.columns if c not in ("lo", "hi", "reason", "is_kept")]
    return len(df), df.slice(offset, limit).select(keep).to_dicts()


def _rank(seed: int, item: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{item}{salt}".encode()).digest()[:8], "big")


def sample(run_dir: Path, n: int, seed: int) -> list[dict]:
    """The labelling sample: n comparisons over all rounds, in a seeded order, each with a seeded slot order.

    The order is a hash of (seed, comparison), so a larger n extends the same sample and a new
    round mixes in without reshuffling what was shown. Pairs with nothing to choose between
    (an empty side, identical texts, a missing candidate) are left out.
    """
    frames = [load_round(run_dir, k)[0] for k in rounds(run_dir)]
    pool = [f.filter(C("left_text").is_not_null() & C("right_text").is_not_null() & (_norm("left_text") != "")
                     & (_norm("right_text") != "") & (_norm("left_text") != _norm("right_text")))
            for f in frames if not f.is_empty()]
    if not pool:
        return []
    df = pl.concat([p.select("item_id", "round", "prompt_id", "messages", "lo", "hi", "left_id", "left_text",
                             "right_text") for p in pool])
    ids = sorted(df["item_id"].to_list(), key=lambda i: _rank(seed, i))[:n]  # rank ids only: texts stay in polars
    order = {i: r for r, i in enumerate(ids)}
    rows = sorted(df.filter(C("item_id").is_in(ids)).to_dicts(), key=lambda r: order[r["item_id"]])
    out = []
    for r in rows:
        a_is_left = r["lo"] == r["left_id"]
        a, b = (r["left_text"], r["right_text"]) if a_is_left else (r["right_text"], r["left_text"])
        a_first = _rank(seed, r["item_id"], "\x1fslot") % 2 == 0
        out.append({"item_id": stable_id(r["item_id"]), "round": r["round"], "prompt_id": r["prompt_id"],
                    "messages": r["messages"], "a_id": r["lo"], "b_id": r["hi"], "response_a": a, "response_b": b,
                    "shown_first": r["lo"] if a_first else r["hi"]})
    return out
