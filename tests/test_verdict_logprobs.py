"""Probabilities are read at the verdict's own token (issue 18, item 1).

The API returns logprobs for every reply token; with judge.explain the first token opens the
rationale, so P(yes), expected scores and p_a must come from the position of the parsed verdict
("Yes" in "Answer: Yes", the digit in "Score: 8", "A" in "Verdict: A"), or be absent. The fake
server writes rationales whose first word looks like another verdict (tests/judge_replies.py), so a
reader of the first position gets the issue's numbers: P(yes) 0.18, score 2.1, margin 0.0."""
from __future__ import annotations

import math

import polars as pl
import pytest

from judge_replies import positions, reply_plan, top_candidates
from judge_replies import content as plan_text
from rlaif.judge import stage
from rlaif.judge import templates as T
from servers import FakeJudgeServer
from test_judge_openai import ENV, KEY, config, judgments, ledger_rows, rd, standard, write_candidates


@pytest.fixture(scope="module")
def srv():
    with FakeJudgeServer(api_key=KEY, policy="hash") as s:
        yield s


@pytest.fixture
def server(srv, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    srv.reset()
    yield srv


def share(alts: list[tuple[str, float]], label: str, labels: tuple) -> float:
    """What the verdict token's alternatives give for `label`, normalised over `labels`."""
    mass = {lab: sum(p for t, p in alts if t == lab) for lab in labels}
    return mass[label] / sum(mass.values())


P_YES_AT_ANSWER = share(top_candidates("checklist", "Yes"), "Yes", ("Yes", "No"))  # 0.88 / 0.98
P_FIRST_AT_VERDICT = share(top_candidates("pairwise", "A"), "A", ("A", "B"))  # 0.8 / 0.94


def expected(alts) -> float:
    digits = [(int(t), p) for t, p in alts if t.isdigit()]
    return sum(d * p for d, p in digits) / sum(p for _, p in digits)


# ------------------------------------------------------------------ against the API's real shape

def test_explained_checklist_p_yes_is_read_at_the_answer_token(server, tmp_path):
    write_candidates(tmp_path, standard(2, 2))
    stage.run(config(tmp_path, server, "judge.mode=checklist", "judge.checklist=['Is it short?']",
                     "judge.explain=true", "judge.min_consistency=0"))
    rows = [r for r in ledger_rows(tmp_path) if r["kind"] == "checklist"]
    assert len(rows) == 4 and {r["raw"] for r in rows} <= {"The response is brief.\nAnswer: Yes",
                                                           "The response is brief.\nAnswer: No"}
    for r in rows:  # the first token "The" carries Yes 0.032 / No 0.15 (P(yes) 0.18): never read
        want = P_YES_AT_ANSWER if r["verdict"] == "yes" else 1 - P_YES_AT_ANSWER
        assert r["score_a"] == pytest.approx(want), r["raw"]


def test_explained_score_is_read_at_the_score_digit(server, tmp_path):
    write_candidates(tmp_path, standard(2, 2))
    stage.run(config(tmp_path, server, "judge.mode=score", "judge.explain=true", "judge.min_consistency=0"))
    rows = [r for r in ledger_rows(tmp_path) if r["kind"] == "score"]
    assert rows and all(r["raw"].splitlines()[-1].startswith("Score: ") for r in rows)
    for r in rows:  # "2 small slips aside ...\nScore: 8" must give ~7.9, not the first digit's 2.1
        s = int(r["raw"][-1])
        assert r["score_a"] == pytest.approx(expected(top_candidates("score", str(s)))), r["raw"]


def test_explained_pairwise_margin_comes_from_the_verdict_token(server, tmp_path):
    write_candidates(tmp_path, standard(2, 3))
    stage.run(config(tmp_path, server, "judge.explain=true", "judge.strategy=all_pairs"))
    j = judgments(tmp_path)
    assert j.height == 2 * 3 * 2 and set(j["verdict"]) <= {"a", "b"}
    # every rationale opens with the losing slot's letter ("B is shorter, but A ..."): its first
    # token says 0.125 for the winner, in both orders, which made every margin 0.0
    assert j["raw"].str.contains(r"^[AB] is shorter, but [AB] answers").all()
    pairs = pl.read_parquet(rd(tmp_path) / "pairs.parquet")
    assert pairs.height == 6 and pairs["margin"].to_list() == pytest.approx([2 * P_FIRST_AT_VERDICT - 1] * 6)
    wins_a = j.filter(pl.col("verdict") == "a")
    assert wins_a["p_a"].to_list() == pytest.approx([P_FIRST_AT_VERDICT] * wins_a.height)


def test_graded_verdicts_over_several_tokens_give_no_probability(server, tmp_path):
    # "[[A>B]]" is five tokens ("[[", "A", ">", "B", "]]"); the "A" position holds A/B alternatives,
    # but no single position holds the five grades: the grade is the parsed one, never a reading
    write_candidates(tmp_path, standard(1, 2))
    stage.run(config(tmp_path, server, "judge.verdicts=graded", "judge.explain=true", "judge.strategy=all_pairs"))
    j = judgments(tmp_path)
    assert j.height == 2 and j["raw"].str.contains(r"Verdict: \[\[(A>B|B>A)\]\]$").all()
    assert set(j["grade"].abs()) == {1.0} and j["p_a"].is_null().all()


# ------------------------------------------------------------------ the lookup itself

def lookup(kind, plan, explain=False, graded=False):
    return T.verdict_top(kind, plan_text(plan), positions(plan), explain, graded)


@pytest.mark.parametrize("kind,verdict,p", [("checklist", "Yes", P_YES_AT_ANSWER), ("pairwise", "A", P_FIRST_AT_VERDICT)])
def test_the_verdict_position_is_found_with_and_without_a_rationale(kind, verdict, p):
    for explain in (False, True):
        top = lookup(kind, reply_plan(kind, verdict, explain), explain)
        got = T.p_yes(top) if kind == "checklist" else T.p_first_slot(top)
        assert got == pytest.approx(p)
    score = lookup("score", reply_plan("score", "8", True), True)
    assert T.expected_score(score) == pytest.approx(expected(top_candidates("score", "8")))


def test_a_verdict_that_is_not_one_whole_token_gives_none():
    graded = reply_plan("pairwise", "A", True, graded=True)
    assert lookup("pairwise", graded, True, True) is None
    # "Yes." as one token: its alternatives are not the labels' alone
    plan = [("Answer", {"Answer": 0.0}), (":", {":": 0.0}), (" Yes.", {" Yes.": math.log(0.6), " No.": math.log(0.4)})]
    assert T.verdict_top("checklist", "Answer: Yes.", plan, True) is None
    # "Ye" + "s": spread over two tokens, and only the first has (its own) alternatives
    plan = [("Answer", {}), (":", {}), (" Ye", {" Ye": -0.1, " No": -2.0}), ("s", {"s": 0.0})]
    assert T.verdict_top("checklist", "Answer: Yes", plan, True) is None
    # tokens that do not spell the reply: no position can be trusted
    plan = [("Something", {"Something": 0.0}), (" else", {" else": 0.0})]
    assert T.verdict_top("pairwise", "A", plan) is None
    assert T.verdict_top("pairwise", "I prefer A.", [("A", {"A": 0.0})]) is None  # unparseable: no verdict
    assert T.verdict_top("pairwise", "A", None) is None


def test_servers_that_drop_a_tokens_leading_space_or_split_a_character():
    # SentencePiece-style detokenised tokens come without their leading space; a token holding part of
    # a UTF-8 character arrives as its bytes (rlaif keeps it as surrogate escapes): both still align
    plan = [("Fine", {}), ("\n", {}), ("Verdict", {}), (":", {}), ("B", {"B": math.log(0.7), "A": math.log(0.3)})]
    assert T.p_first_slot(T.verdict_top("pairwise", "Fine\nVerdict: B", plan, True)) == pytest.approx(0.3)
    e = "é".encode()
    split = [("Caf", {}), (e[:1].decode("utf-8", "surrogateescape"), {}), (e[1:].decode("utf-8", "surrogateescape"), {}),
             ("\n", {}), ("Answer", {}), (":", {}), (" No", {" No": math.log(0.9), " Yes": math.log(0.1)})]
    assert T.p_yes(T.verdict_top("checklist", "Café\nAnswer: No", split, True)) == pytest.approx(0.1)
