"""The verifier judge (rlaif/judge/backends/verifier.py) and the check kinds it shares with evaluate
(rlaif/evaluate/checks.py score_one, rlaif/evaluate/runnable.py): tiny programs executed for real in
the sandbox, reference answers matched by the stated rules, and replies paired with their calls
when several executions run at once."""
from __future__ import annotations

import json
import random

import pytest

from conftest import ASSETS
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.evaluate.checks import score_one
from rlaif.evaluate.runnable import match_reference, normalise, numbers
from rlaif.judge.backends import Call, load_judge

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]
# Programs passing 3, 2, 1 and 0 of ADD_TESTS (counted by hand against each assert)
PROGRAMS = {
    3: "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.",
    2: "```py\ndef add(a, b):\n    return abs(a) + b\n```",  # add(-1, 1) == 2
    1: "def add(a, b):\n    return a - b\n",  # no fence: the whole reply; only add(0, 0) holds
    0: "```\ndef add(a, b):\n    return 7\n```",
}
SUM_IO = [{"stdin": "2 3\n", "stdout": "5\n"}, {"stdin": "-4 4\n", "stdout": "0"}]
SUM_PROGRAM = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
CHAT = [{"role": "user", "content": "Write add(a, b)."}]


def _cfg(*over):
    return load_config(None, [f"prompts={ASSETS / 'prompts.jsonl'}", "judge.backend=verifier",
                              "sandbox.mode=best_effort", "sandbox.wall_s=5", "sandbox.cpu_s=3",
                              "sandbox.memory_mb=256", *over])


@pytest.fixture(scope="module")
def cfg():
    return _cfg("judge.checks={solves: {tests: true}, answer: {reference: numeric}, short: {max_words: 30}, "
                "prose: {regex: '```', must_match: false}}", "sandbox.concurrency=3")


def test_tests_check_scores_the_share_of_tests_passed(cfg):
    spec = cfg.judge.checks["solves"]
    for k, program in PROGRAMS.items():
        score, detail = score_one(spec, CHAT, program, {"tests": ADD_TESTS}, cfg.sandbox)
        assert (score, detail["passed"], detail["total"]) == (pytest.approx(k / 3), k, 3), (k, detail)
        statuses = [t["status"] for t in detail["tests"]]
        assert statuses.count("pass") == k and set(statuses) <= {"pass", "fail"}
        for t in detail["tests"]:
            assert t["wall_s"] >= 0 and len(t["stderr"]) <= 300
            assert ("AssertionError" in t["stderr"]) == (t["status"] == "fail")
    score, detail = score_one(spec, CHAT, SUM_PROGRAM, {"tests": SUM_IO}, cfg.sandbox)
    assert score == 1.0 and [t["status"] for t in detail["tests"]] == ["pass", "pass"]
    score, detail = score_one(spec, CHAT, "print(1)", {"tests": SUM_IO}, cfg.sandbox)
    assert score == 0.0 and [t["status"] for t in detail["tests"]] == ["fail", "fail"]
    assert score_one(spec, CHAT, PROGRAMS[3], {"tests": None}, cfg.sandbox) == \
        (0.0, {"note": "the prompt has no tests: scored 0"})


def test_a_program_that_never_ends_is_a_failed_test_within_the_wall_limit():
    cfg = _cfg("judge.checks={solves: {tests: true}}", "sandbox.wall_s=1.5", "sandbox.cpu_s=1")
    score, detail = score_one(cfg.judge.checks["solves"], CHAT, "while True:\n    pass\n",
                              {"tests": ["assert True"]}, cfg.sandbox)
    assert score == 0.0 and detail["tests"][0]["status"] == "timeout", detail
    assert detail["tests"][0]["wall_s"] < 5


def test_reference_and_rule_checks_score_one_or_zero(cfg):
    c = cfg.judge.checks
    assert score_one(c["answer"], CHAT, "So the total is 1,250.", {"reference": "1250"}, cfg.sandbox) == \
        (1.0, {"reason": "numeric: last number 1250 == reference 1250"})
    assert score_one(c["answer"], CHAT, "1250 or 1251", {"reference": "1250"}, cfg.sandbox)[0] == 0.0
    assert score_one(c["answer"], CHAT, "42", {"reference": None}, cfg.sandbox) == \
        (0.0, {"note": "the prompt has no reference: scored 0"})
    assert score_one(c["short"], CHAT, "word " * 30, {}, cfg.sandbox) == (1.0, {"reason": "max words 30: passes"})
    assert score_one(c["short"], CHAT, "word " * 31, {}, cfg.sandbox)[0] == 0.0
    assert score_one(c["prose"], CHAT, PROGRAMS[3], {}, cfg.sandbox)[0] == 0.0


@pytest.mark.parametrize("response, reference, ok", [
    ("The answer is 42.", "42", True),
    ("-3.5", "-3.50", True),
    ("about 1,234,567 people", "1234567", True),
    ("3/4 of them", "0.75", True),
    ("x = .5", "1/2", True),
    ("1,2,3", "3", True),  # a list of numbers, not 123: the last one
    ("It is 41, no wait, 43", "42", False),
    ("0.33333", "1/3", False),  # 1e-5 off: the rule is 1e-6 relative
    ("0.3333333", "1/3", True),
    ("no digits here", "0", False),
    ("7", "seven", False),  # a reference without a number never matches
    ("v2 then 10", "10", True),
])
def test_numeric_reference_rule(response, reference, ok):
    assert match_reference("numeric", response, reference)[0] is ok


def test_number_reading_and_normalised_matching():
    assert numbers("-1,000.5 and 2/0 and x3 and 7/2") == [-1000.5, 3.5]  # 2/0: no number; x3: inside a word
    assert normalise("  Hello,   WORLD!\n") == "hello world" == normalise("hello world")
    assert match_reference("normalised", " The Eiffel Tower. ", "the eiffel tower")[0]
    assert not match_reference("normalised", "the Eiffel tower is", "the eiffel tower")[0]
    assert match_reference("exact", "  Paris\n", "Paris")[0] and not match_reference("exact", "paris", "Paris")[0]


def _call(i: int, k: int, kind: str = "verify", data: dict | None = None) -> Call:
    return Call(key=f"c{i}", prompt_id=f"p{i % 3}", kind=kind, a_id=f"cand-{i}-{k}", b_id=None, order=None,
                messages=(), chat=tuple(CHAT), response=PROGRAMS[k],
                data=json.dumps(data if data is not None else {"tests": ADD_TESTS, "reference": None}))


def test_verifier_run_pairs_each_reply_with_its_call_and_pulls_lazily(cfg):
    judge = load_judge(cfg.judge, None, sandbox=cfg.sandbox)
    rng = random.Random(5)
    ks = [rng.choice(list(PROGRAMS)) for _ in range(9)]
    calls = [_call(i, k) for i, k in enumerate(ks)]
    calls.insert(4, Call(key="pw", prompt_id="p0", kind="pairwise", a_id="x", b_id="y", order="ab", messages=()))
    pulled, in_flight, replies = [], [], {}

    def source():
        for c in calls:
            pulled.append(c.key)
            yield c

    def on_reply(call, reply):
        in_flight.append(len(pulled) - len(replies))
        replies[call.key] = (call, reply)

    judge.run(source(), on_reply)
    assert sorted(replies) == sorted(c.key for c in calls)
    assert max(in_flight) <= cfg.sandbox.concurrency  # a call is pulled only when a worker is free
    assert "verify calls" in replies["pw"][1].error and replies["pw"][1].score is None
    for i, k in enumerate(ks):
        call, reply = replies[f"c{i}"]
        assert call.a_id == f"cand-{i}-{k}" and reply.error is None
        raw = json.loads(reply.text)["checks"]
        solves = raw["solves"]["detail"]["tests"]
        assert [t["status"] == "pass" for t in solves].count(True) == k
        # mean over the four checks: tests k/3, no reference 0, short 1 (all programs are under 30 words),
        # prose 1 only for the unfenced program
        assert reply.score == pytest.approx((k / 3 + 0 + 1 + (k == 1)) / 4), (k, raw)
        assert raw["answer"]["detail"] == {"note": "the prompt has no reference: scored 0"}
        assert (reply.input_tokens, reply.output_tokens) == (0, 0) and reply.latency_s > 0
        assert reply.extra["note"] == judge.note and judge.note.startswith("sandbox")
    assert (judge.stats["calls"], judge.stats["refused"], judge.stats["executions"]) == (9, 1, 27)
    assert judge.stats["passed"] == sum(ks)


def test_verifier_reads_a_reference_from_the_call_data():
    cfg = _cfg("judge.checks={answer: {reference: normalised}}")
    judge = load_judge(cfg.judge, None, sandbox=cfg.sandbox)
    got = {}
    calls = [Call(key=str(i), prompt_id="p", kind="verify", a_id=str(i), b_id=None, order=None, messages=(),
                  chat=tuple(CHAT), response=text, data=json.dumps({"tests": None, "reference": "Paris"}))
             for i, text in enumerate(["paris!", "Lyon"])]
    judge.run(iter(calls), lambda c, r: got.__setitem__(c.key, r.score))
    assert got == {"0": 1.0, "1": 0.0}
    assert judge.note == "no code executed (no tests check)"


def test_a_broken_check_function_fails_before_any_call(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vchecks.py").write_text("X = 1\n")
    cfg = load_config(None, [f"prompts={ASSETS / 'prompts.jsonl'}", "judge.backend=verifier",
                             "judge.checks={f: {function: 'vchecks:nope'}}"], import_checks=False)
    with pytest.raises(UserError, match=r"^judge\.checks\.f: 'vchecks:nope': vchecks has no function nope$"):
        load_judge(cfg.judge, None, sandbox=cfg.sandbox)


def test_strict_mode_without_a_network_namespace_refuses_at_construction(tmp_path):
    """A host without `unshare` (PATH holds no util-linux here) cannot make a network namespace: strict
    refuses when the judge is built, before any call; best_effort runs and says so in every reply."""
    import subprocess
    import sys

    from conftest import ROOT

    script = f"""
from rlaif.config import SandboxConfig, load_config
from rlaif.errors import UserError
from rlaif.judge.backends import load_judge
cfg = load_config(None, ["prompts={ASSETS / 'prompts.jsonl'}", "judge.backend=verifier",
                         "judge.checks={{s: {{tests: true}}}}"])
try:
    load_judge(cfg.judge, None, sandbox=cfg.sandbox)
    print("strict: built")
except UserError as e:
    print("strict:", e)
print("best_effort:", load_judge(cfg.judge, None, sandbox=SandboxConfig(mode="best_effort")).note)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PATH": str(tmp_path), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    strict, best = out.stdout.strip().splitlines()
    assert strict.startswith("strict: sandbox: no network namespace can be made here"), strict
    assert best.startswith("best_effort: sandbox: no namespaces") and "network: none" in best, best


def test_evaluation_judged_by_the_verifier_wins_on_the_share_of_tests_passed():
    """Evaluate's score mode under judge.backend=verifier: each matchup is won by the answer that passed
    the larger share of checks, equal shares tie; the win rate equals a count made here."""
    import polars as pl

    from rlaif.evaluate.metrics import score_outcomes, summarize_outcomes

    rng = random.Random(5)
    shares = [(rng.choice([0, 0.5, 1]), rng.choice([0, 0.5, 1])) for _ in range(40)]
    rows = [{"key": f"k{i}{side}", "prompt_id": f"p{i}", "kind": "verify", "a_id": f"p{i}/{side}",
             "verdict": "score", "score_a": s}
            for i, pair in enumerate(shares) for side, s in zip(("pol", "sft"), pair)]
    from rlaif.io import JUDGMENTS_SCHEMA

    judgments = pl.DataFrame(rows, schema=JUDGMENTS_SCHEMA)
    matchups = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(40)], "policy_id": [f"p{i}/pol" for i in range(40)],
                             "sft_id": [f"p{i}/sft" for i in range(40)]})
    tokens = {r["a_id"]: 10 for r in rows}
    out = score_outcomes(judgments, matchups, tokens)
    assert out.height == 40  # every matchup judged: none left out as if unscored
    expect = sum(1.0 if p > s else 0.5 if p == s else 0.0 for p, s in shares) / 40
    got = summarize_outcomes(out, [10] * 40, [10] * 40, n_boot=200)
    assert got["win_rate"] == pytest.approx(expect) and got["n_comparisons"] == 40
