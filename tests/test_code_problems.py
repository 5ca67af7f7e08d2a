"""The code quickstart's hand-written problems (issue 24, item 5): configs/prompts/code-train.jsonl
and code-eval.jsonl. Each row is {prompt_id, prompt, tests, solution}; rlaif reads prompt and tests,
and `solution` is here so this file can prove every problem is solvable and its tests are right:
the reference passes every test in the real sandbox, and a program that returns None fails one.

    .venv/bin/python -m pytest tests/test_code_problems.py -q
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import pytest

from conftest import ROOT
from rlaif.prompts import prompt_data, read_prompts
from rlaif.sandbox import Limits, run_tests

FILES = {"train": ROOT / "configs" / "prompts" / "code-train.jsonl",
         "eval": ROOT / "configs" / "prompts" / "code-eval.jsonl"}
ASK = "Reply with the code in one ```python block."  # extract_code takes the first fenced block
SIGNATURE = re.compile(r"`([A-Za-z_]\w*)\(([^`]*)\)`")
LIMITS = Limits(wall_s=5)


@cache
def rows(split: str) -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in FILES[split].read_text().splitlines() if line.strip())


def name_of(row: dict) -> str:
    """The function the prompt asks for: its first backticked `name(args)`."""
    m = SIGNATURE.search(row["prompt"])
    assert m, f"{row['prompt_id']}: the prompt names no `function(args)`"
    return m.group(1)


@pytest.mark.parametrize("split", FILES)
def test_rows_have_the_shape_rlaif_reads(split):
    got = rows(split)
    assert len(got) >= 40
    for r in got:
        pid = r["prompt_id"]
        assert set(r) == {"prompt_id", "prompt", "tests", "solution"}, pid
        assert r["prompt"].startswith("Write a Python function `") and r["prompt"].endswith(ASK), pid
        assert 3 <= len(r["tests"]) <= 6 and all(isinstance(t, str) and "assert" in t for t in r["tests"]), pid
        assert len(set(r["tests"])) == len(r["tests"]), pid
        assert re.match(rf"def {name_of(r)}\(", r["solution"]), pid
        assert not re.search(r"^\s*(import|from)\s", "\n".join(r["tests"]), re.M), pid  # nothing to import
    # rlaif's own reader takes the file as a prompt set, and its tests column as it is
    prompts = read_prompts(FILES[split])
    assert prompts["prompt_id"].to_list() == [r["prompt_id"] for r in got]
    assert {k: v["tests"] for k, v in prompt_data(FILES[split]).items()} == {r["prompt_id"]: r["tests"] for r in got}


def test_train_and_eval_are_disjoint():
    train, held = rows("train"), rows("eval")
    for a in (train, held):
        assert len({r["prompt_id"] for r in a}) == len(a)
        assert len({name_of(r) for r in a}) == len(a)  # no problem asked twice in one file
    # held-out means held out: no id, prompt, function name or solution appears in both files
    for field in ("prompt_id", "prompt", "solution"):
        shared = {r[field] for r in train} & {r[field] for r in held}
        assert not shared, f"{field} in both files: {sorted(shared)[:3]}"
    shared = {name_of(r) for r in train} & {name_of(r) for r in held}
    assert not shared, f"functions asked for in both files: {sorted(shared)}"


def problems_with(row: dict) -> list[str]:
    """What is wrong with one problem: a reference that fails a test, or tests a None-stub passes."""
    pid = row["prompt_id"]
    results = run_tests(row["solution"], row["tests"], LIMITS, mode="best_effort", concurrency=2)
    bad = [f"{pid}: reference fails test {i} ({res.status}): {res.stderr[-300:]}"
           for i, res in enumerate(results) if not res.passed]
    # a program that defines the function but returns nothing must fail some test (tests that only
    # say `not f(x)` would pass it); all() stops at the first failure, usually test 0
    stub = f"def {name_of(row)}(*a, **k):\n    return None\n"
    if all(run_tests(stub, [t], LIMITS, mode="best_effort")[0].passed for t in row["tests"]):
        bad.append(f"{pid}: a stub returning None passes every test")
    return bad


@pytest.mark.parametrize("split", FILES)
def test_every_solution_passes_and_a_stub_fails(split):
    # Four problems at once: an execution mostly waits on its namespaces being set up (~0.1-0.2 s
    # wall, little CPU), so this keeps the file at seconds, not a minute
    with ThreadPoolExecutor(max_workers=4) as pool:
        bad = [b for found in pool.map(problems_with, rows(split)) for b in found]
    assert not bad, "\n".join(bad)
