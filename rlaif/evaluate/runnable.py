"""Checks that can be run (issue 24): a reply's code executed against the prompt's tests in the
sandbox (rlaif/sandbox.py), and a reply compared with the prompt's reference answer. checks.py
dispatches to these; the verifier judge and evaluate.checks share them.

    outcomes, counts = run_jobs([(code, tests), ...], cfg.sandbox, cache=ExecCache(path))
    ok, why = match_reference("numeric", "so the total is 1,250.", "1250")

Reference matching, the rule:
- exact: the reply and the reference equal once leading and trailing whitespace is stripped.
- normalised: both casefolded, Unicode punctuation removed, whitespace runs collapsed to one space
  (SQuAD v1.1's answer normalisation, Rajpurkar et al. 2016, without its article removal).
- numeric: the LAST number in the reply equals the reference's (its last number too) within 1e-6
  relative (1e-12 absolute, for a zero). A number is an optional minus sign, digits with optional
  thousands commas (1,250) and an optional decimal part (3.5, .5), or a simple fraction of two
  such numbers (3/4, 0.75 after division; a zero denominator is no number). No exponents
  (3e5 reads as 3), no words ("five"), no percent sign handling (50% reads as 50).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import unicodedata
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np

STDERR_TAIL = 300  # characters of a test's stderr kept in its outcome (the traceback's last line)
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"  # 1,250,000 or 1250; "1,2,3" is three numbers
_DEC = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
# Not inside a word or after a decimal point: "x2" and "v1.2.3" do not yield 2 or 3 from the middle
_NUMBER = re.compile(rf"(?<![\w.])([-\u2212]?)({_DEC})(?:\s*/\s*([-\u2212]?)({_DEC}))?")


# ----------------------------------------------------------------------------- reference answers

def _value(sign: str, digits: str) -> float:
    return float(digits.replace(",", "")) * (-1 if sign else 1)


def numbers(text: str) -> list[float]:
    """Every number in text, in order, by the rule in the module docstring."""
    out = []
    for m in _NUMBER.finditer(text):
        x = _value(m[1], m[2])
        if m[4] is not None:
            d = _value(m[3], m[4])
            if d == 0:
                continue
            x /= d
        out.append(x)
    return out


def normalise(text: str) -> str:
    """Casefolded, punctuation removed, whitespace collapsed (SQuAD's normalize_answer, no articles)."""
    kept = "".join(ch for ch in text.casefold() if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def match_reference(how: str, response: str, reference: str) -> tuple[bool, str]:
    """(passes, a short reason) for reference matching `how` (exact | normalised | numeric)."""
    if how == "exact":
        ok = response.strip() == reference.strip()
        return ok, f"exact: {'equals' if ok else 'differs from'} the reference"
    if how == "normalised":
        ok = normalise(response) == normalise(reference)
        return ok, f"normalised: {'equals' if ok else 'differs from'} the reference"
    want, got = numbers(reference), numbers(response)
    if not want:
        return False, f"numeric: the reference {reference[:40]!r} holds no number"
    if not got:
        return False, "numeric: no number in the response"
    ok = math.isclose(got[-1], want[-1], rel_tol=1e-6, abs_tol=1e-12)
    return ok, f"numeric: last number {got[-1]:g} {'==' if ok else '!='} reference {want[-1]:g}"


# ----------------------------------------------------------------------------- code tests

def outcome(result) -> dict:
    """What the ledger and the cache keep of one execution (rlaif.sandbox.Result)."""
    return {"status": result.status, "wall_s": round(result.wall_s, 3), "stderr": result.stderr[-STDERR_TAIL:]}


def _key(code: str, test, sandbox) -> str:
    """sha256 of what decides an execution's outcome: program, test, limits and where it runs."""
    what = [code, test, asdict(sandbox.limits()), sandbox.mode, sandbox.command]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class ExecCache:
    """Outcomes of executions already run, keyed on _key, in one SQLite file: a rerun of a stage whose
    answers did not change runs nothing. An "error" outcome (could not run, killed by a signal) is not
    kept: it may come from the host rather than the program, so a rerun tries again."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("CREATE TABLE IF NOT EXISTS executions (key TEXT PRIMARY KEY, outcome TEXT NOT NULL)")

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT outcome FROM executions WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, out: dict) -> None:
        if out["status"] != "error":
            with self.db:  # committed at once: an interrupted stage keeps what it ran
                self.db.execute("INSERT OR REPLACE INTO executions VALUES (?, ?)", (key, json.dumps(out)))

    def close(self) -> None:
        self.db.close()


def _execute(code: str, test, sandbox) -> dict:
    from rlaif import sandbox as SB  # looked up at call time: the module stays the one seam

    return outcome(SB.run_test(code, test, sandbox.limits(), sandbox.mode, sandbox.command))


def run_jobs(jobs: list[tuple[str, list]], sandbox, cache: ExecCache | None = None,
             concurrency: int | None = None) -> tuple[list[list[dict]], dict]:
    """([each job's test outcomes, in test order], {"run": executions, "cached": outcomes reused}) for
    jobs of (code, tests). Every test is its own execution; up to `concurrency` (default
    sandbox.concurrency) run at once, in threads that each wait on one sandbox process."""
    outs = [[None] * len(tests) for _, tests in jobs]
    todo = []
    for i, (code, tests) in enumerate(jobs):
        for j, test in enumerate(tests):
            key = _key(code, test, sandbox) if cache is not None else None
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                outs[i][j] = hit
            else:
                todo.append((i, j, key))
    workers = min(concurrency or sandbox.concurrency, len(todo)) or 1
    if workers == 1:
        done = (((i, j, key), _execute(jobs[i][0], jobs[i][1][j], sandbox)) for i, j, key in todo)
    else:
        pool = ThreadPoolExecutor(workers)
        futures = {pool.submit(_execute, jobs[i][0], jobs[i][1][j], sandbox): (i, j, key) for i, j, key in todo}
        done = ((futures[f], f.result()) for f in as_completed(futures))
    try:
        for (i, j, key), out in done:  # results land here, in this thread: one SQLite connection
            outs[i][j] = out
            if cache is not None:
                cache.put(key, out)
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
    return outs, {"run": len(todo), "cached": sum(map(len, outs)) - len(todo)}


# ----------------------------------------------------------------------------- evaluate's two sides

def pass_tests(sandbox, ids: list[str], data: dict, texts: dict[str, list[str]], cache: ExecCache | None):
    """Per side, whether each answer's code passes ALL its prompt's tests (a prompt without tests
    fails), the share passed, and {n_without_tests, executions: {run, cached}, statuses}."""
    from rlaif.sandbox import extract_code

    where, jobs = [], []
    for side in ("policy", "sft"):
        for i, (pid, text) in enumerate(zip(ids, texts[side])):
            if tests := (data.get(pid) or {}).get("tests"):
                where.append((side, i))
                jobs.append((extract_code(text), tests))
    outs, counts = run_jobs(jobs, sandbox, cache)  # both sides in one pool: sandbox.concurrency at once
    passed = {side: np.zeros(len(ids), dtype=bool) for side in texts}
    share = {side: [0.0] * len(ids) for side in texts}
    statuses: dict[str, int] = {}
    for (side, i), o in zip(where, outs):
        k = sum(x["status"] == "pass" for x in o)
        passed[side][i], share[side][i] = k == len(o), k / len(o)
        for x in o:
            statuses[x["status"]] = statuses.get(x["status"], 0) + 1
    missing = sum(not (data.get(pid) or {}).get("tests") for pid in ids)
    return ((passed["policy"], passed["sft"]), (share["policy"], share["sft"]),
            {"n_without_tests": missing, "executions": counts, "statuses": dict(sorted(statuses.items()))})


def match_all(how: str, ids: list[str], data: dict, texts: dict[str, list[str]]):
    """Per side, whether each answer matches its prompt's reference (none: fails), and
    {n_without_reference}."""
    refs = [(data.get(pid) or {}).get("reference") for pid in ids]
    pol, sft = (np.array([ref is not None and match_reference(how, t, ref)[0]
                          for ref, t in zip(refs, texts[side])], dtype=bool) for side in ("policy", "sft"))
    return pol, sft, {"n_without_reference": sum(r is None for r in refs)}
