"""A run folder judged before the issue 19 move is rerun after it, and pays for nothing.

tests/fixtures/pre_move_run/run was made by commit 858c713 (the last before rlaif/judge/ became
sub-packages) with the real CLI against the fake OpenAI server (tests/fixtures/make_pre_move_run.py).
Rerunning `rlaif judge` and `rlaif filter` on a copy must find every call in the ledger: a ledger key
that moved (judge identity, template version, the key's hash) would send requests to the server and
make a user pay again for verdicts they own. Only the CLI, polars, sqlite3 and tests/servers.py are
used here, never an rlaif module path, so the test reads the same before and after the move.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import polars as pl
import yaml
from polars.testing import assert_frame_equal

from conftest import rlaif_cli
from servers import FakeJudgeServer

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_move_run"
KEY, ENV = "sk-fixture-not-secret-0c1d2e3f", "RLAIF_FIXTURE_KEY"  # env var named by the fixture's config.yaml
# Derived from the ledger alone, so nothing in them may change on a rerun (no wall time, no timestamps).
FILES = ("judgments.parquet", "pairs.parquet", "revisions.parquet")


def ledger_rows(rdir: Path) -> int:
    """Rows in a round's ledger. Only the scratch copy is opened: SQLite makes -shm/-wal files beside
    a WAL database even to read it, and they must not appear in tests/fixtures."""
    db = sqlite3.connect(f"file:{rdir / 'judge-ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM calls").fetchone()[0]
    finally:
        db.close()


def judge_id(rdir: Path) -> str:
    return json.loads((rdir / "judge.manifest.json").read_text())["judge_id"]


def test_a_rerun_of_a_run_judged_before_the_move_sends_no_request(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    rounds = yaml.safe_load((FIXTURE / "rounds.yaml").read_text())
    assert len(rounds) >= 4 and all((run / f"round-{k}" / "judgments.parquet").exists() for k in rounds)
    before = {k: (ledger_rows(run / f"round-{k}"), judge_id(run / f"round-{k}")) for k in rounds}
    paid, seen = {}, 0
    with FakeJudgeServer(api_key=KEY) as srv:
        for k, extra in rounds.items():
            over = [f"run_dir={run}", f"round={k}", f"judge.base_url={srv.base_url}", *extra]
            for stage in ("judge", "filter"):
                r = rlaif_cli(stage, str(FIXTURE / "config.yaml"), *over, env={ENV: KEY})
                assert r.returncode == 0, f"round {k}: rlaif {stage} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
            total = srv.stats()["requests"]
            paid[k], seen = total - seen, total
    assert paid == {k: 0 for k in rounds}, f"judge requests per round on a rerun (must be none): {paid}"
    for k in rounds:
        old, new = FIXTURE / "run" / f"round-{k}", run / f"round-{k}"
        assert ledger_rows(new) == before[k][0], f"round {k}: the ledger grew"
        assert judge_id(new) == before[k][1], f"round {k}: the judge identity changed"
        for name in FILES:
            if (old / name).exists():
                try:
                    assert_frame_equal(pl.read_parquet(new / name), pl.read_parquet(old / name))
                except AssertionError as e:
                    raise AssertionError(f"round-{k}/{name} differs from the fixture's: {e}") from None
