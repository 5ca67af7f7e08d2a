"""The judge ledger: SQLite (WAL), one transaction per finished call; the source of truth.

Before any call the ledger is consulted, and a key with a stored reply is never sent again, in
this run or a rerun. judgments.parquet is derived from it. A call that never got a reply
(connection errors, exhausted retries) is stored as status 'error' and is retried by a rerun.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import polars as pl

from rlaif.io import JUDGMENTS_SCHEMA, stable_id

COLUMNS = ["key", "status", "prompt_id", "kind", "a_id", "b_id", "order", "verdict", "score_a", "score_b", "p_a",
           "grade", "item", "rationale", "judge_id", "judge_model", "template_version", "input_tokens",
           "output_tokens", "cost_usd", "latency_s", "error", "raw", "attempts", "request", "created_at"]
# Columns added after the first release: an older ledger gets them (null) when opened.
ADDED = {"grade": "REAL", "item": "TEXT", "rationale": "TEXT", "judge_id": "TEXT"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
  key TEXT PRIMARY KEY, status TEXT NOT NULL, prompt_id TEXT, kind TEXT, a_id TEXT, b_id TEXT, "order" TEXT,
  verdict TEXT, score_a REAL, score_b REAL, p_a REAL, grade REAL, item TEXT, rationale TEXT, judge_id TEXT,
  judge_model TEXT, template_version TEXT,
  input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, latency_s REAL, error TEXT, raw TEXT,
  attempts INTEGER, request TEXT, created_at REAL
);
-- Batch API submissions (rlaif.judge.batch), recorded before each remote step so a rerun after a
-- crash resumes the same chunk instead of submitting its keys again.
-- status: planned (keys fixed) -> uploaded (input_file_id) -> submitted (batch_id) -> done (folded)
CREATE TABLE IF NOT EXISTS batches (
  chunk_id TEXT PRIMARY KEY, status TEXT NOT NULL, keys TEXT NOT NULL, input_file_id TEXT, batch_id TEXT,
  batch_status TEXT, created_at REAL, updated_at REAL
);
"""


def call_key(identity: dict, template_version: str, messages: list[dict], first: str, second: str | None,
             order: str | None, item: str | None = None) -> str:
    """hash(judge identity, template version, prompt, response A, response B, order, checklist item).

    The identity (rlaif.judge.identity) names everything about the judge that can change a verdict:
    model, endpoint or declared identity, request style, reasoning effort, reply cap."""
    return stable_id([identity, template_version, messages, first, second, order, item], n=32)


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
        self.db.executescript(SCHEMA)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(calls)")}
        for col, typ in ADDED.items():
            if col not in have:
                self.db.execute(f"ALTER TABLE calls ADD COLUMN {col} {typ}")

    def close(self) -> None:
        self.db.close()

    def done_keys(self, keys: list[str]) -> set[str]:
        """Keys with a stored reply (status 'done'): never to be sent again."""
        return {r[0] for r in self._where_key_in("SELECT key FROM calls WHERE status='done'", keys)}

    def _where_key_in(self, query: str, keys: list[str]) -> list[tuple]:
        """Rows of `query AND key IN keys`, in chunks under SQLite's bound-parameter limit."""
        rows: list[tuple] = []
        for i in range(0, len(keys), 900):
            chunk = keys[i:i + 900]
            rows += self.db.execute(f"{query} AND key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return rows

    def record(self, row: dict) -> None:
        """One finished call, one transaction. 'done' is final; an 'error' row may be replaced later.

        Every column is written (null where the row has none), so a call that failed once and
        succeeded later keeps nothing of the failure: no stale error text beside a verdict."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"ledger.record: unknown column(s) {sorted(unknown)}")
        row = {**{c: None for c in COLUMNS}, **row, "created_at": time.time()}
        if isinstance(row.get("request"), dict):
            row["request"] = json.dumps(row["request"], sort_keys=True)
        cols = COLUMNS
        sql = (f"INSERT INTO calls ({','.join(f'{chr(34)}{c}{chr(34)}' for c in cols)}) VALUES "
               f"({','.join('?' * len(cols))}) ON CONFLICT(key) DO UPDATE SET "
               + ",".join(f'"{c}"=excluded."{c}"' for c in cols if c != "key")
               + " WHERE calls.status != 'done'")
        self.db.execute(sql, [row[c] for c in cols])

    def spent(self) -> tuple[int, float]:
        """(calls with a reply, dollars) over the whole ledger: budgets cover reruns too."""
        n, cost = self.db.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM calls WHERE status='done'").fetchone()
        return int(n), float(cost)

    def frame(self, keys: list[str] | None = None) -> pl.DataFrame:
        """Judgments for the given keys (default: all finished calls), in the judgments schema."""
        cols = ",".join(f'"{c}"' for c in JUDGMENTS_SCHEMA)
        q = f"SELECT {cols} FROM calls WHERE status='done'"
        # A ledger shared across runs can be large: fetch only the asked-for keys.
        rows = list(self.db.execute(q)) if keys is None else self._where_key_in(q, keys)
        return pl.DataFrame(rows, schema=JUDGMENTS_SCHEMA, orient="row").sort("key")

    # -- Batch API chunks

    def open_chunks(self) -> list[dict]:
        cur = self.db.execute("SELECT chunk_id, status, keys, input_file_id, batch_id, batch_status, created_at "
                              "FROM batches WHERE status != 'done' ORDER BY created_at, chunk_id")
        return [{**dict(zip(("chunk_id", "status", "keys", "input_file_id", "batch_id", "batch_status",
                             "created_at"), r)), "keys": json.loads(r[2])} for r in cur]

    def add_chunks(self, chunks: list[tuple[str, list[str]]]) -> None:
        """Plan chunks (id, keys) in one transaction: all or none survive a crash."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO batches (chunk_id, status, keys, created_at, updated_at) "
                                "VALUES (?, 'planned', ?, ?, ?)", [(c, json.dumps(k), now, now) for c, k in chunks])

    def update_chunk(self, chunk_id: str, **fields) -> None:
        cols = list(fields)
        self.db.execute(f"UPDATE batches SET {', '.join(f'{c}=?' for c in cols)}, updated_at=? WHERE chunk_id=?",
                        [fields[c] for c in cols] + [time.time(), chunk_id])

    def drop_chunk(self, chunk_id: str) -> None:
        self.db.execute("DELETE FROM batches WHERE chunk_id=?", (chunk_id,))

    def chunks(self) -> list[dict]:
        cur = self.db.execute("SELECT chunk_id, status, batch_id, batch_status FROM batches ORDER BY created_at")
        return [dict(zip(("chunk_id", "status", "batch_id", "batch_status"), r)) for r in cur]

    def attempts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT key, attempts FROM calls"))
