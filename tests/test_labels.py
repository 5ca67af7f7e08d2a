"""The label store (rlaif/review/labels.py): a kill -9 mid-labelling loses no confirmed label, the
agreement's definition, the report section and the gold export."""
from __future__ import annotations

import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import polars as pl
import pytest

from conftest import ROOT
from review_run import build_checklist_run, build_run
from rlaif.errors import UserError
from rlaif.review import labels as L
from rlaif.review import data as review_data
from rlaif.evaluate.report import write_report


def item(i: int) -> dict:
    return {"item_id": f"it{i}", "round": 0, "prompt_id": f"p{i}", "a_id": f"p{i}/c0", "b_id": f"p{i}/c1",
            "messages": [{"role": "user", "content": f"q{i}"}], "response_a": f"A{i}", "response_b": f"B{i}",
            "shown_first": f"p{i}/c0"}


LABELLER = textwrap.dedent("""
    import sys
    from rlaif.review.labels import HUMAN, LabelStore
    exec(sys.argv[2])  # item(), as defined in this test file
    store = LabelStore(sys.argv[1])
    for i in range(100000):
        store.put(item(i), HUMAN[i % 3])
        print(i, flush=True)  # printed only after put returned: the page is told "saved" at this point
""")


def test_kill_9_mid_labelling_loses_nothing(tmp_path):
    db = tmp_path / L.FILENAME
    proc = subprocess.Popen([sys.executable, "-c", LABELLER, str(db), inspect.getsource(item)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    confirmed = -1
    try:
        deadline = time.monotonic() + 120
        while confirmed < 150 and time.monotonic() < deadline:
            confirmed = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the next put is in flight
        proc.wait()
        confirmed = max([confirmed, *(int(x) for x in proc.stdout.read().split())])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and confirmed >= 150
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    con.close()
    rows = L.LabelStore(db).rows()
    got = {r["item_id"]: r["human"] for r in rows}
    # every label confirmed before the kill is there, right; at most the one in flight beyond it
    assert all(got.get(f"it{i}") == L.HUMAN[i % 3] for i in range(confirmed + 1))
    assert set(got) == {f"it{i}" for i in range(len(got))} and len(got) <= confirmed + 2
    assert rows[0]["messages"] == [{"role": "user", "content": "q0"}]


def test_relabel_replaces_and_bad_input_is_one_line(tmp_path):
    store = L.LabelStore(tmp_path / L.FILENAME)
    store.put(item(1), "a")
    store.put(item(1), "tie")  # a person changes their mind: one row, the latest label
    assert store.labels() == {"it1": "tie"}
    with pytest.raises(UserError, match="label 'left': expected one of a, b, tie"):
        store.put(item(2), "left")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UserError, match=f"{bad}: not a readable label store"):
        L.LabelStore(bad)


def test_agreement_definition():
    a = L.agreement([("a", "a"), ("b", "a"), ("tie", "tie"), ("a", "inconsistent"), ("tie", "invalid"),
                     ("b", None)])
    # 5 judged: a=a and tie=tie agree; inconsistent and invalid judge outcomes are disagreements
    assert (a["n"], a["agree"], a["agreement"], a["unmatched"]) == (5, 2, 0.4, 1)
    assert a["judge"] == {"a": 2, "b": 0, "tie": 1, "inconsistent": 1, "invalid": 1}
    assert a["human"] == {"a": 2, "b": 1, "tie": 2}
    assert L.agreement([])["agreement"] is None


def test_run_agreement_report_and_export(tmp_path):
    run = build_run(tmp_path / "run")
    write_report(run)
    assert "human labels" not in (run / "report.md").read_text()  # no store: no section
    df, _ = review_data.load_round(run, 0)
    by_pid = {r["prompt_id"]: r for r in df.to_dicts()}

    def label(pid: str, human: str) -> None:
        r = by_pid[pid]
        a, b = sorted([r["left_id"], r["right_id"]])
        L.LabelStore(run / L.FILENAME).put({**item(0), "item_id": pid, "prompt_id": pid, "a_id": a, "b_id": b,
                                            "messages": r["messages"], "response_a": "x", "response_b": "y"}, human)

    label("p1", "a")    # judge: p1/c0 (a) in both orders -> agree
    label("p2", "a")    # judge: p2/c1 (b)                -> disagree
    label("p3", "a")    # judge inconsistent              -> disagree
    label("p4", "tie")  # judge tie in both orders        -> agree
    a = L.run_agreement(run)
    assert (a["n"], a["agree"], a["agreement"]) == (4, 2, 0.5)
    assert a["rounds"][0]["judge"]["inconsistent"] == 1
    report = write_report(run).read_text()
    assert "## Judge agreement with human labels" in report and "| all | 4 | 50% (2/4) |" in report
    gold = tmp_path / "gold.jsonl"
    assert L.export_gold(run, gold) == 4
    back = pl.read_ndjson(gold)
    assert tuple(back.columns) == L.GOLD_COLUMNS
    assert back["human"].to_list() == ["a", "a", "a", "tie"]
    assert json.loads(gold.read_text().splitlines()[0])["messages"] == by_pid["p1"]["messages"]


def test_agreement_compares_people_with_the_label_the_filter_used(tmp_path):
    """Weighted checklist items (3:1) pick k1/c0; an unweighted mean would pick k1/c1. A person who
    agrees with pairs.parquet agrees with the judge."""
    run = build_checklist_run(tmp_path / "run")
    assert pl.read_parquet(run / "round-0" / "pairs.parquet").filter(pl.col("prompt_id") == "k1")["chosen_id"][0] == "k1/c0"
    assert L.judge_lookup(run, 0)[("k1", "k1/c0", "k1/c1")] == "a"
    for pid, human in (("k1", "a"), ("k2", "a")):
        L.LabelStore(run / L.FILENAME).put({**item(0), "item_id": pid, "prompt_id": pid, "a_id": f"{pid}/c0",
                                            "b_id": f"{pid}/c1"}, human)
    a = L.run_agreement(run)
    assert (a["n"], a["agree"], a["agreement"]) == (2, 2, 1.0)
    assert "| all | 2 | 100% (2/2) |" in write_report(run).read_text()
