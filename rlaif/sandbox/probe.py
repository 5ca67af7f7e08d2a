"""What this kernel lets the sandbox do, found by trying it once per process.

Plans, best first: namespaces (as root: mount/pid/net namespaces and a uid of the run's own; as a
user: the same inside a user namespace, `unshare -r`), then nothing but rlimits, a process group
and a scrubbed environment. A plan counts only if a real program ran under it and saw what it
should (loopback down, its own directory, pid 2), so a half-working kernel is never trusted.
"""
from __future__ import annotations

import functools
import os
import shutil
import threading

from rlaif.errors import UserError
from rlaif.sandbox import spawn

MODES = ("strict", "best_effort")
_lock = threading.Lock()  # run_test may be called from many threads: probe once
# Run under each plan: it must see exactly its own sandbox (see stub.py for what that is).
CHECK = """import os, socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(("127.0.0.1", 9))
    net = "up"
except OSError:
    net = "down"
print("loopback", net, "cwd", os.getcwd(), "pid", os.getpid())
"""


@functools.cache
def _probe() -> tuple[spawn.Plan, dict]:
    root = os.geteuid() == 0
    why = "the `unshare` program (util-linux) is not installed"
    if shutil.which("unshare"):
        plan = spawn.Plan(ns=True, userns=not root, drop_uid=root)
        raw = spawn.execute(CHECK, None, spawn.Limits(wall_s=30.0), plan, None)
        seen = raw.stdout.decode(errors="replace").strip()
        if raw.exit_code == 0 and seen == "loopback down cwd /tmp/work pid 2":
            return plan, _report(plan)
        why = (raw.error or raw.stderr.decode(errors="replace").strip() or seen or "no output").splitlines()[-1]
    for drop in ([True, False] if root else [False]):  # a container's root may lack CAP_SETUID
        plan = spawn.Plan(ns=False, userns=False, drop_uid=drop)
        if spawn.execute("print('ok')", None, spawn.Limits(wall_s=30.0), plan, None).exit_code == 0:
            return plan, _report(plan, why)
    return plan, _report(plan, why)


def _report(plan: spawn.Plan, why: str = "") -> dict:
    if plan.ns:
        user = ("root: each program under a uid of its own, no capabilities" if plan.drop_uid else
                "user namespace: namespace root mapped to this user, no capabilities")
        return {"network": "namespace", "filesystem": "read-only; private /tmp (tmpfs); home and /run hidden",
                "user": user, "processes": "pid namespace", "note": "namespaces (unshare)"}
    return {"network": "none", "filesystem": "host (what the program's uid may write)",
            "user": "a uid of its own" if plan.drop_uid else "unchanged", "processes": "process group",
            "note": f"no namespaces: {why}"}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"sandbox.mode: {mode!r} is not one of {', '.join(MODES)}")


def plan(mode: str = "strict") -> spawn.Plan:
    """The plan executions use; strict refuses one without a network namespace."""
    check_mode(mode)
    with _lock:
        chosen, info = _probe()
    if mode == "strict" and info["network"] != "namespace":
        raise UserError(f"sandbox: no network namespace can be made here ({info['note']}); "
                        "sandbox.mode: best_effort runs code without one and the run's report says so")
    return chosen


def isolation(mode: str = "strict") -> dict:
    plan(mode)
    with _lock:
        return dict(_probe()[1])
