"""Human labels from `rlaif review`: the SQLite store, the judge's agreement with it, the gold export.

    store = LabelStore(run_dir / "human-labels.sqlite"); store.put(item, "a")
    run_agreement(run_dir)["agreement"]

RUN_DIR/human-labels.sqlite is SQLite in WAL mode with synchronous=FULL and one transaction per
label (the judge ledger's pattern, rlaif/judge/ledger.py): a label the page was told is saved
survives a reload, a kill -9 of the server or a power cut. Labels are in candidate terms, never
slot terms: a comparison's "a" is the candidate with the smaller candidate_id, "b" the other, so
the random left/right order the page showed cannot leak into the label.

Agreement (the figure on the page and in report.md): the share of labelled comparisons where
the judge's both-order label equals the human's. The judge's label is what the filter reads
(rlaif/judge/pairs/filter.py `compare`, with the checklist weights the round's filter used: its
pairs.card.json): a or b when both orders name the same winner, tie when both orders say tie;
for candidates judged alone (checklist, score), the higher-scored one, tie on equal scores. An
order-inconsistent or invalid judge outcome is no label, so it never equals the human's: it
counts in the denominator as a disagreement. A human tie agrees only with a judge tie.
"""
from __future__ import annotations

import json
import sqlite3
import time
from functools import lru_cache
from pathlib import Path

import polars as pl

from rlaif.errors import UserError
from rlaif.review.data import checklist_config, read_judgments
from rlaif.io import write_text
from rlaif.judge.pairs.compare import compare

HUMAN = ("a", "b", "tie")
JUDGE = ("a", "b", "tie", "inconsistent", "invalid")
FILENAME = "human-labels.sqlite"
GOLD_COLUMNS = ("prompt_id", "messages", "response_a", "response_b", "human")
C = pl.col

_SCHEMA = """CREATE TABLE IF NOT EXISTS labels (
  item_id TEXT PRIMARY KEY,
  round INTEGER NOT NULL,
  prompt_id TEXT NOT NULL,
  a_id TEXT NOT NULL,
  b_id TEXT NOT NULL,
  messages TEXT NOT NULL,      -- the prompt as a JSON chat list, so the export needs no candidates
  response_a TEXT NOT NULL,
  response_b TEXT NOT NULL,
  shown_first TEXT NOT NULL,   -- the candidate shown in slot A: kept to study position effects
  human TEXT NOT NULL CHECK (human IN ('a', 'b', 'tie')),
  labelled_at REAL NOT NULL
)"""
_COLS = ("item_id", "round", "prompt_id", "a_id", "b_id", "messages", "response_a", "response_b", "shown_first",
         "human", "labelled_at")


class LabelStore:
    """One connection per operation, so the server's threads never share one (sqlite3's rule)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        con = self._connect()
        try:
            con.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a readable label store ({e})") from None
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")  # WAL + NORMAL may drop the last commits on power loss
            return con
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a readable label store ({e})") from None

    def put(self, item: dict, human: str) -> None:
        """Record (or change) the label of one comparison: one transaction, committed on return."""
        if human not in HUMAN:
            raise UserError(f"label {human!r}: expected one of {', '.join(HUMAN)}")
        row = {**item, "messages": json.dumps(item["messages"], ensure_ascii=False), "human": human,
               "labelled_at": time.time()}
        sql = (f"INSERT INTO labels ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))}) "
               "ON CONFLICT(item_id) DO UPDATE SET human = excluded.human, labelled_at = excluded.labelled_at")
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute(sql, [row[c] for c in _COLS])
            con.execute("COMMIT")
        finally:
            con.close()

    def rows(self) -> list[dict]:
        con = self._connect()
        try:
            cur = con.execute(f"SELECT {', '.join(_COLS)} FROM labels ORDER BY labelled_at, item_id")
            out = [dict(zip(_COLS, r)) for r in cur.fetchall()]
        finally:
            con.close()
        for r in out:
            r["messages"] = json.loads(r["messages"])
        return out

    def labels(self) -> dict[str, str]:
        return {r["item_id"]: r["human"] for r in self.rows()}


def judge_labels(comparisons: pl.DataFrame) -> pl.DataFrame:
    """compare()'s rows in candidate terms: (prompt_id, a_id, b_id, judge), a_id < b_id."""
    lo = C("chosen_id") < C("rejected_id")
    return comparisons.select(
        "prompt_id",
        a_id=pl.when(lo).then("chosen_id").otherwise("rejected_id"),
        b_id=pl.when(lo).then("rejected_id").otherwise("chosen_id"),
        judge=pl.when(C("outcome") != "label").then("outcome").when(lo).then(pl.lit("a")).otherwise(pl.lit("b")))


@lru_cache(maxsize=64)
def _round_judge(path: Path, mtime_ns: int, weights: tuple) -> dict[tuple[str, str, str], str]:
    j = read_judgments(path)
    return {(p, a, b): v for p, a, b, v in judge_labels(compare(j, dict(weights))).iter_rows()}


def judge_lookup(run_dir: Path, k: int) -> dict[tuple[str, str, str], str]:
    """The judge's label per (prompt_id, a_id, b_id) of round k, with the weights the round's filter
    used; cached until judgments.parquet or those weights change."""
    path = Path(run_dir) / f"round-{k}" / "judgments.parquet"
    if not path.exists():
        return {}
    weights = tuple(sorted((i, c["weight"]) for i, c in checklist_config(run_dir, k)[0].items()))
    return _round_judge(path, path.stat().st_mtime_ns, weights)


def agreement(pairs: list[tuple[str, str | None]]) -> dict:
    """(human, judge) pairs -> counts and the agreement share; judge None: comparison no longer judged."""
    matched = [(h, j) for h, j in pairs if j is not None]
    agree = sum(h == j for h, j in matched)
    return {"n": len(matched), "agree": agree, "agreement": agree / len(matched) if matched else None,
            "judge": {v: sum(j == v for _, j in matched) for v in JUDGE},
            "human": {v: sum(h == v for h, _ in matched) for v in HUMAN},
            "unmatched": len(pairs) - len(matched)}


def run_agreement(run_dir: str | Path) -> dict:
    """The judge's agreement with every label in RUN_DIR/human-labels.sqlite, overall and per round."""
    run_dir = Path(run_dir)
    rows = LabelStore(run_dir / FILENAME).rows() if (run_dir / FILENAME).exists() else []
    by_round: dict[int, list] = {}
    lookups = {k: judge_lookup(run_dir, k) for k in {r["round"] for r in rows}}  # once per round, not per label
    for r in rows:
        judge = lookups[r["round"]].get((r["prompt_id"], r["a_id"], r["b_id"]))
        by_round.setdefault(r["round"], []).append((r["human"], judge))
    out = agreement([p for ps in by_round.values() for p in ps])
    out["rounds"] = {k: agreement(ps) for k, ps in sorted(by_round.items())}
    return out


def report_lines(run_dir: str | Path) -> list[str]:
    """report.md's human-label section; nothing when no one has labelled (no human-labels.sqlite)."""
    run_dir = Path(run_dir)
    if not (run_dir / FILENAME).exists():
        return []
    a = run_agreement(run_dir)
    lines = ["", "## Judge agreement with human labels", ""]
    if not a["n"]:
        return lines + [f"No labels yet in {FILENAME} (`rlaif review {run_dir}`, Labelling)."]
    lines += ["| round | labels | agreement | judge tie / inconsistent / invalid | human ties |", "|---|---|---|---|---|"]
    for k, r in [*a["rounds"].items(), ("all", a)]:
        share = f"{100 * r['agreement']:.0f}% ({r['agree']}/{r['n']})" if r["n"] else "-"
        j = r["judge"]
        lines.append(f"| {k} | {r['n']} | {share} | {j['tie']} / {j['inconsistent']} / {j['invalid']} "
                     f"| {r['human']['tie']} |")
    lines += ["", "Agreement: share of labelled comparisons where the judge's label (a, b or tie) equals the person's: "
              "the label the filter used (both orders agreeing, or the higher score when each answer was judged "
              "alone, checklist items weighed as the filter weighed them); an order-inconsistent or invalid judge "
              "outcome counts as a disagreement."]
    if a["unmatched"]:
        lines.append(f"{a['unmatched']} label(s) name comparisons the current judgments no longer hold (not counted).")
    return lines


def export_gold(run_dir: str | Path, out: str | Path) -> int:
    """Write the labels as a JSONL gold file for `rlaif calibrate` (GOLD_COLUMNS); returns the row count."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        raise UserError(f"{path}: no labels yet; label a sample first with `rlaif review {run_dir}`")
    rows = LabelStore(path).rows()
    if not rows:
        raise UserError(f"{path}: no labels yet; label a sample first with `rlaif review {run_dir}`")
    text = "".join(json.dumps({c: r[c] for c in GOLD_COLUMNS}, ensure_ascii=False) + "\n" for r in rows)
    write_text(out, text)
    return len(rows)
