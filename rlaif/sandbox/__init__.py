"""Run candidate code against tests, each execution contained (issue 24, item 2; docs/sandbox.md).

    from rlaif.sandbox import extract_code, run_tests
    results = run_tests(extract_code(reply), ["assert add(2, 3) == 5", {"stdin": "2 3", "stdout": "5"}])

Every test is its own execution: a fresh temporary directory, its own process group (a pid
namespace where the kernel allows), rlimits on CPU, memory, file size and processes, a wall-time
kill, output capped while it is read, an environment with no keys in it, and no network (a new,
empty network namespace). `stub.py` is the launcher, `spawn.py` the host side, `probe.py` finds
what the kernel allows. Candidate code never runs inside an rlaif process.
"""
from __future__ import annotations

import math
import re
import signal
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlaif.errors import UserError
from rlaif.sandbox import probe, spawn
from rlaif.sandbox.spawn import Limits  # the public API: Limits, Result, run_tests, ...

STATUSES = ("pass", "fail", "timeout", "memory", "output_limit", "error")
MEMORY = re.compile(r"MemoryError|Cannot allocate memory|out of memory")
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)[^`\n]*$")
PYTHON_TAGS = ("", "python", "py", "python3")


@dataclass(frozen=True)
class Result:
    status: str  # one of STATUSES; "error": could not run, or killed by a signal
    exit_code: int | None  # negative: the signal that ended it; None: the host ended it or it never ran
    stdout: str  # capped (output_kb), decoded utf-8 with errors="replace"
    stderr: str  # capped, last lines kept (the traceback)
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def isolation(mode: str = "strict") -> dict:
    """What this kernel allows, probed once and cached: {"network": "namespace"|"none",
    "filesystem": ..., "user": ..., "processes": ..., "note": ...}. mode "strict" raises UserError
    when no new network namespace can be made; "best_effort" reports what runs instead."""
    return probe.isolation(mode)


def extract_code(reply: str) -> str:
    """The code in a candidate reply, by one rule:
    - the body of the first fenced block (``` or ~~~, three or more) whose info string's first
      word is python, py, python3 (any case) or empty, dedented; a block the reply never closes
      (cut off by max_tokens) runs to the end of the reply;
    - no fenced block at all: the whole reply;
    - fenced blocks, but none of them Python or untagged: "" (nothing to run, so every test fails).
    """
    lines, seen, i = reply.splitlines(), False, 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        i += 1
        if not m:
            continue
        seen, fence, body = True, m.group(1), []
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        if m.group(2).lower() in PYTHON_TAGS:
            return textwrap.dedent("\n".join(body)) + "\n" if body else ""
    return "" if seen else reply


def run_test(code: str, test, limits: Limits = Limits(), mode: str = "strict",
             command: list[str] | None = None) -> Result:
    """One test against one program. `test` is a str (Python source appended after `code` in one
    file; passes when it exits 0, i.e. its asserts hold) or a dict {"stdin": str, "stdout": str}
    (`code` alone, fed that stdin; passes when its stdout equals the expected one up to trailing
    whitespace on each line and trailing blank lines). `command`: an external sandbox's argv with
    {dir} and {file} in it, run instead of rlaif's own launcher (wall time and output cap still hold)."""
    source, stdin, expected = _split(code, test)
    probe.check_mode(mode)
    plan = None if _command(command) else probe.plan(mode)
    raw = spawn.execute(source, stdin, limits, plan, command)
    return _result(raw, expected, limits)


def run_tests(code: str, tests: list, limits: Limits = Limits(), mode: str = "strict",
              command: list[str] | None = None, concurrency: int = 2) -> list[Result]:
    """Every test in its own execution, up to `concurrency` at once; results in test order."""
    if not _command(command):
        probe.plan(mode)  # once, here: a strict refusal comes before any execution
    if concurrency < 1:
        raise UserError(f"sandbox concurrency: {concurrency} must be at least 1")
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda t: run_test(code, t, limits, mode, command), tests))


def _split(code: str, test) -> tuple[str, str | None, str | None]:
    if isinstance(test, str):
        return f"{code}\n\n{test}\n", None, None
    if isinstance(test, dict) and isinstance(test.get("stdin"), str) and isinstance(test.get("stdout"), str):
        return code, test["stdin"], test["stdout"]
    raise UserError(f"tests: a test is Python source (a string) or {{\"stdin\": str, \"stdout\": str}}, "
                    f"not {type(test).__name__} {str(test)[:80]!r}")


def _command(command) -> bool:
    if command is None:
        return False
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise UserError("sandbox.command: a non-empty list of strings with {dir} and {file} in it")
    return True


def _result(raw: spawn.Raw, expected: str | None, limits: Limits) -> Result:
    out = raw.stdout.decode("utf-8", errors="replace")
    err = raw.stderr.decode("utf-8", errors="replace")
    if len(raw.stderr) >= limits.output_kb * 1024 and "\n" in err:
        err = err[err.index("\n") + 1:]  # the tail was cut mid-line: keep whole lines
    code = raw.exit_code
    if raw.killed:
        status, code = raw.killed, None
    elif raw.error or code is None:
        status, code, err = "error", None, f"{err}\nsandbox: {raw.error}".lstrip()
    elif code != 0 and MEMORY.search(err[-2000:]):
        status = "memory"
    elif code < 0 and (-code == signal.SIGXCPU or raw.cpu_s >= math.ceil(limits.cpu_s)):
        status = "timeout"  # the CPU limit: SIGXCPU, or SIGKILL at the hard limit
    elif code < 0:
        status = "error"
    elif code != 0 or (expected is not None and _lines(out) != _lines(expected)):
        status = "fail"
    else:
        status = "pass"
    return Result(status, code, out, err, raw.wall_s)


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines
