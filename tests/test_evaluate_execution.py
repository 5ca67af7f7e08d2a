"""Evaluation by execution (issue 24, item 4): evaluate.checks' tests and reference kinds in
`measure`. pass@1 of policy and SFT is checked against a count made here with plain subprocesses
(not the sandbox, not checks.py), the paired interval and the headline follow from it, and the
execution cache makes a second measure of unchanged answers execute nothing."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from conftest import ASSETS
from rlaif import sandbox as SB
from rlaif.config import load_config
from rlaif.evaluate.checks import EXEC_CACHE, compare_shares, headline, measure
from rlaif.prompts import read_prompts

ADD = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
REV = [{"stdin": "abc\n", "stdout": "cba\n"}, {"stdin": "x\n", "stdout": "x"}]
PROBLEMS = [  # prompt_id, tests, reference
    ("add", ADD, None),
    ("mul", ["assert mul(2, 3) == 6", "assert mul(0, 5) == 0"], None),
    ("rev", REV, None),
    ("sq", ["assert sq(3) == 9", "assert sq(-2) == 4", "assert sq(0) == 0"], None),
    ("sum", None, "1,250"),  # no tests: a tests check fails it on both sides
]
CODE = {  # prompt_id -> (policy's program, SFT's program)
    "add": ("def add(a, b):\n    return a + b", "def add(a, b):\n    return abs(a) + b"),  # SFT: add(-1, 1) == 2
    "mul": ("def mul(a, b):\n    return a * b", "def mul(a, b):\n    return a * b"),
    "rev": ("print(input()[::-1])", "print(input())"),
    "sq": ("def sq(x):\n    return x * x", "def sq(x):\n    return x ** 2 if x > 0 else -x"),  # sq(0) ok, sq(-2) 2
}
TEXT = {"sum": ("The total is 1250.", "Roughly 1,200.")}


def _reply(code: str) -> str:
    return f"Sure.\n```python\n{code}\n```\nThis should work."


def _independent(code: str, test) -> bool:
    """The test run with a plain interpreter, as a person would check it by hand."""
    if isinstance(test, str):
        return subprocess.run([sys.executable, "-c", f"{code}\n{test}\n"], capture_output=True).returncode == 0
    out = subprocess.run([sys.executable, "-c", code], input=test["stdin"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.rstrip() == test["stdout"].rstrip()


@pytest.fixture
def setup(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"prompt_id": p, "prompt": f"Solve {p}.", "tests": t, "reference": r}) + "\n"
                               for p, t, r in PROBLEMS))
    cfg = load_config(None, [f"prompts={ASSETS / 'prompts.jsonl'}", f"evaluate.prompts={heldout}",
                             "evaluate.checks={solves: {tests: true}, answer: {reference: numeric}, "
                             "short: {max_words: 12}}",
                             "sandbox.mode=best_effort", "sandbox.concurrency=2", "sandbox.wall_s=5",
                             "evaluate.n_boot=2000", "seed=3"])
    prompts = read_prompts(heldout)
    texts = {p: tuple(map(_reply, CODE[p])) if p in CODE else TEXT[p] for p, _, _ in PROBLEMS}
    m = prompts.with_columns(policy_text=pl.col("prompt_id").replace_strict({p: t[0] for p, t in texts.items()}),
                             sft_text=pl.col("prompt_id").replace_strict({p: t[1] for p, t in texts.items()}))
    return cfg, m, tmp_path / "eval" / "checks.parquet"


@pytest.fixture
def executions(monkeypatch):
    """Every sandbox execution, counted on its way to the real sandbox."""
    seen, real = [], SB.run_test

    def run_test(code, test, *a, **kw):
        seen.append(test)
        return real(code, test, *a, **kw)

    monkeypatch.setattr(SB, "run_test", run_test)
    return seen


def test_pass_at_1_matches_an_independent_count_and_leads_the_headline(setup, executions):
    cfg, m, out = setup
    res = measure(cfg, m, out)
    ids = sorted(m["prompt_id"].to_list())
    tests = {p: t for p, t, _ in PROBLEMS}
    solved = {side: np.array([bool(tests[p]) and all(_independent(CODE[p][i], t) for t in tests[p]) for p in ids])
              for i, side in enumerate(("policy", "sft"))}
    assert solved["policy"].sum() == 4 and solved["sft"].sum() == 1  # the programs above, read by hand
    s = res["solves"]
    assert (s["kind"], s["policy"], s["sft"], s["n"]) == ("tests", 4 / 5, 1 / 5, 5)
    assert s["diff_ci"] == compare_shares(solved["policy"], solved["sft"], 2000, 3)["diff_ci"]
    n_tests = 2 * sum(len(t) for t in tests.values() if t)
    assert s["n_without_tests"] == 1 and s["executions"] == {"run": n_tests, "cached": 0}
    assert len(executions) == n_tests and sum(s["statuses"].values()) == n_tests
    a = res["answer"]  # numeric reference: only "sum" has one; policy's 1250 matches 1,250, SFT's 1,200 does not
    assert (a["kind"], a["policy"], a["sft"], a["n_without_reference"]) == ("reference", 1 / 5, 0.0, 4)
    lo, hi = s["diff_ci"]
    line = headline(res)
    assert line.startswith(f"pass@1 SFT → policy: 20.0% → 80.0% (diff +60.0 pts, 95% CI [{100 * lo:+.1f}, "
                           f"{100 * hi:+.1f}], 5 problems); checks SFT → policy: answer 0% → 20%"), line
    assert headline(res, lead=False).startswith("checks SFT → policy: answer 0% → 20%")  # the report leads itself
    rows = pl.read_parquet(out).sort("prompt_id")
    assert rows["solves_policy"].to_list() == solved["policy"].tolist()
    assert rows["solves_sft_share"].to_list() == pytest.approx([0.5, 1.0, 0.5, 2 / 3, 0.0])  # add mul rev sq sum


def test_a_second_measure_of_the_same_answers_executes_nothing(setup, executions):
    cfg, m, out = setup
    first = measure(cfg, m, out)
    n = len(executions)
    assert n > 0 and (out.parent / EXEC_CACHE).is_file()
    again = measure(cfg, m, out)
    assert len(executions) == n  # every outcome came from the cache
    assert again["solves"]["executions"] == {"run": 0, "cached": n}
    assert {k: v for k, v in again["solves"].items() if k != "executions"} == \
        {k: v for k, v in first["solves"].items() if k != "executions"}
    # One answer changed: only its tests run again
    changed = m.with_columns(policy_text=pl.when(pl.col("prompt_id") == "sq")
                             .then(pl.lit(_reply("def sq(x):\n    return 0"))).otherwise(pl.col("policy_text")))
    third = measure(cfg, changed, out)
    assert sorted(executions[n:]) == sorted([t for p, t, _ in PROBLEMS if p == "sq"][0])
    assert third["solves"]["policy"] == pytest.approx(3 / 5)
