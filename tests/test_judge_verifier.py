"""The verifier as the judge stage's backend (issue 24, items 1 and 3): candidates' code run against
the prompts' tests in the sandbox, best-vs-worst pairs by the share passed, the tiebreak judge only
where the checks score every candidate alike, per-test outcomes in the ledger so a rerun executes
nothing, and the card counting kept pairs by source."""
import json
import sqlite3

import polars as pl
import pytest

from judges import ScriptedJudge, write_candidates
from rlaif.config import load_config
from rlaif.judge import stage

ADD = "def add(a, b):\n    return a + b\n"
TESTS = {"p0": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"],
         "p1": ["assert last([1, 2, 3]) == 3", "assert last(['x']) == 'x'"],
         "p2": ["assert add(0, 0) == 0"]}
CANDS = {
    # p0: one solves all, one 2 of 3 (a + b except for 2 + 2), one none: pair all vs none (margin 1)
    "p0": [f"```python\n{ADD}```", "```python\ndef add(a, b):\n    return 5 if a == b == 2 else a + b\n```",
           "```python\ndef add(a, b):\n    return a - b\n```"],
    # p1: both fail every test: the checks cannot choose, the tiebreak judge does (the listier reply wins)
    "p1": ["```python\ndef last(xs):\n    return xs[0] if len(xs) > 1 else None\n```",
           "Steps:\n1. take the list\n2. return its first item\n```python\ndef last(xs):\n    return xs[:1]\n```"],
    # p2: identical texts that pass: never sent to the tiebreak, counted as identical
    "p2": [f"```python\n{ADD}```", f"```python\n{ADD}```"],
}


def _cfg(tmp_path, judge_model, *extra):
    prompts = tmp_path / "code.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": p, "prompt": f"Write {p}.", "tests": t}) + "\n"
                               for p, t in TESTS.items()))
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"prompts={prompts}", "judge.backend=verifier",
                              "judge.checks.solves.tests=true", "sandbox.mode=best_effort",
                              "sandbox.wall_s=5", "filter.min_margin=0", "judge.min_consistency=0",
                              *extra] + ([f"judge.tiebreak.backend=local", f"judge.tiebreak.model={judge_model}",
                                          "judge.tiebreak.mode=pairwise"] if judge_model else []))


def _ledger_rows(cfg) -> int:
    with sqlite3.connect(cfg.round_dir() / "judge-ledger.sqlite") as db:
        return db.execute("select count(*) from calls").fetchone()[0]


def test_pairs_come_from_executed_tests_and_the_tiebreak_decides_only_ties(scripted, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, scripted)
    write_candidates(cfg.round_dir().parent, CANDS)
    stage.run(cfg)
    rdir = cfg.round_dir()
    j = pl.read_parquet(rdir / "judgments.parquet")
    scores = dict(j.filter(pl.col("kind") == "verify").select("a_id", "score_a").iter_rows())
    assert scores["p0-c0"] == 1.0 and scores["p0-c1"] == pytest.approx(2 / 3) and scores["p0-c2"] == 0.0
    assert scores["p1-c0"] == scores["p1-c1"] == 0.0
    # per-test outcomes are in the ledger's raw reply: p0-c1 failed exactly its third test
    raw = json.loads(j.filter(pl.col("a_id") == "p0-c1")["raw"][0])
    assert [t["status"] for t in raw["checks"]["solves"]["detail"]["tests"]] == ["pass", "pass", "fail"]
    # the tiebreak judge saw the tied prompt only, both orders, and never an identical pair
    assert sorted({(c.prompt_id, c.order) for c in ScriptedJudge.calls}) == [("p1", "ab"), ("p1", "ba")]
    pairs = pl.read_parquet(rdir / "pairs.parquet").sort("prompt_id")
    assert pairs.select("prompt_id", "chosen_id", "rejected_id").rows() == [("p0", "p0-c0", "p0-c2"),
                                                                            ("p1", "p1-c1", "p1-c0")]
    card = json.loads((rdir / "pairs.card.json").read_text())
    assert card["by_source"] == {"verifier": 1, "tiebreak": 1}
    report = json.loads((rdir / "judge-report.json").read_text())
    assert report["tiebreak"]["tied_prompts"] == 2 and report["tiebreak"]["comparisons"] == 1
    assert report["identical_pairs_skipped"] >= 1
    # what "better" meant is the checks, not a rubric no call saw; the length audit covers the verifier
    assert report["rubric"]["source"] == "judge.checks" and report["rubric"]["first_line"].endswith(": solves")
    # audited (None if not): p0's best and worst are of one length (a + b vs a - b), p1 and p2 tie
    assert report["single_length"]["comparisons"] == 0

    # a rerun executes nothing and asks the tiebreak nothing: every outcome is read from the ledger
    rows = _ledger_rows(cfg)
    import rlaif.judge.backends.verifier as V

    monkeypatch.setattr(V, "score_one", lambda *a, **k: pytest.fail("a rerun executed a candidate's tests"))
    ScriptedJudge.calls = []
    stage.run(cfg)
    assert ScriptedJudge.calls == [] and _ledger_rows(cfg) == rows
    assert pl.read_parquet(rdir / "pairs.parquet").sort("prompt_id").equals(pairs)


def test_without_a_tiebreak_equal_scores_are_ties_counted_and_changed_tests_run_again(tmp_path):
    cfg = _cfg(tmp_path, None)
    write_candidates(cfg.round_dir().parent, CANDS)
    stage.run(cfg)
    card = json.loads((cfg.round_dir() / "pairs.card.json").read_text())
    assert card["kept"] == 1 and card["removed"]["tie"] == 2 and card["by_source"] == {"verifier": 1}
    rows = _ledger_rows(cfg)
    # a prompt's tests changed: its candidates are executed again (new keys), the others are not
    TESTS_P1 = ["assert last([1, 2, 3]) in (1, [1])"]
    prompts = [json.loads(line) for line in (tmp_path / "code.jsonl").read_text().splitlines()]
    (tmp_path / "code.jsonl").write_text("".join(json.dumps({**p, "tests": TESTS_P1} if p["prompt_id"] == "p1"
                                                            else p) + "\n" for p in prompts))
    stage.run(cfg)
    assert _ledger_rows(cfg) == rows + 2
    j = pl.read_parquet(cfg.round_dir() / "judgments.parquet")
    assert dict(j.filter(pl.col("prompt_id") == "p1").select("a_id", "score_a").iter_rows()) == {
        "p1-c0": 1.0, "p1-c1": 1.0}


def test_rlaif_check_says_in_the_first_second_what_would_score_every_answer_zero(tmp_path):
    from rlaif.check import collect

    cfg = _cfg(tmp_path, None, "prompts=configs/prompts/quickstart.jsonl", "sandbox.command=[no-such-runtime, run]")
    lines = collect(cfg, ["judge"]).lines()
    assert "sandbox.command: 'no-such-runtime' is not on PATH here" in lines
    assert any(line.startswith("judge.checks: a tests check, but no prompt in configs/prompts/quickstart.jsonl")
               for line in lines)
    assert collect(_cfg(tmp_path, None), ["judge"]).lines() == []  # prompts with tests, rlaif's own sandbox
