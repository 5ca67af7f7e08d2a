"""One execution: a temporary directory, a process group, a wall-time kill and a capped read.

The host side of the sandbox. It writes the program into a fresh temporary directory, starts
`stub.py` (under `unshare` when the probe found namespaces), reads stdout and stderr while they
come, at most `output_kb` in all, and kills the whole group when time or output runs out. It
never runs candidate code itself: that only ever happens in the stub's child.
"""
from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STUB = str(Path(__file__).with_name("stub.py"))
PROGRAM = "main.py"
# Real root runs each program under a uid of its own: RLIMIT_NPROC counts processes per uid across
# the host (setrlimit(2)) and does not bind root, so a fork bomb is held by a uid nothing else uses.
# The pid namespace then kills whatever is left when the program's launcher exits.
UID_BASE = 1_900_000_000
_uids = itertools.count()


@dataclass(frozen=True)
class Limits:
    """Per execution; the run config's top-level `sandbox:` section fills them."""

    cpu_s: float = 5.0  # RLIMIT_CPU
    wall_s: float = 10.0  # killed (whole process group / namespace) after this
    memory_mb: int = 256  # RLIMIT_AS, per process (no cgroup: procs x memory_mb at worst)
    file_mb: int = 16  # RLIMIT_FSIZE (and each private tmpfs holds 4x this)
    procs: int = 16  # max processes/threads the execution may have
    output_kb: int = 64  # stdout+stderr kept; more is cut off and the run counts as "output_limit"


@dataclass(frozen=True)
class Plan:
    """How executions run on this machine (the probe picks one)."""

    ns: bool  # new mount, pid, network, IPC and UTS namespaces (unshare)
    userns: bool  # and a user namespace: a non-root user gets its namespaces from it
    drop_uid: bool  # real root: run the program under a uid of its own


@dataclass
class Raw:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    wall_s: float
    killed: str | None = None  # "timeout" | "output_limit": the host ended it
    error: str | None = None  # the launcher could not start the program
    cpu_s: float = 0.0


def unshare_argv(plan: Plan) -> list[str]:
    if not plan.ns:
        return []
    argv = [shutil.which("unshare") or "unshare", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork",
            "--kill-child", "--mount-proc", "--propagation", "private"]
    return argv + (["--user", "--map-root-user"] if plan.userns else [])


def env(home: str) -> dict:
    """The whole environment a program gets: no key, token or proxy of the rlaif process."""
    path = ":".join(dict.fromkeys([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]))
    return {"PATH": path, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "HOME": home, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def interpreter() -> list[str]:
    # `python -I` is -E -s -P, and -E would ignore PYTHONHASHSEED=0 (set iteration order would vary
    # between runs and so would verdicts). The environment is already exactly env(), so -s -P -B
    # isolates as much: no user site-packages, no script directory on sys.path, no bytecode.
    return [sys.executable, "-s", "-P", "-B", PROGRAM]


def _keep() -> list[str]:
    """The directories the interpreter needs, bound back when their parent (the home) is masked."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/var", "/proc", "/sys", "/dev", "/srv")


def _masked(keep: list[str]) -> list[str]:
    """Hidden under empty tmpfs mounts: homes (keys, .netrc), /run (docker, dbus sockets) and the
    directory rlaif runs in (a project's .env, the run's files), unless the interpreter lives there."""
    paths = {os.path.realpath(p) for p in (os.path.expanduser("~"), "/home", "/root", "/run")}
    cwd = os.path.realpath(os.getcwd())
    if cwd not in SYSTEM and not any(cwd == k or cwd.startswith(k + "/") for k in keep):
        paths.add(cwd)
    paths = {p for p in paths if p != "/" and os.path.isdir(p)}
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def launch_argv(plan: Plan, limits, uid: int | None, status_fd: int, lifeline_fd: int) -> tuple[list[str], str]:
    keep = _keep()
    cfg = {"ns": plan.ns, "uid": uid, "mask": _masked(keep) if plan.ns else [], "keep": keep,
           "tmpfs_mb": 4 * limits.file_mb, "argv": interpreter(), "status_fd": status_fd,
           "lifeline_fd": lifeline_fd, "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb,
                                                  "file_mb": limits.file_mb, "procs": limits.procs}}
    return unshare_argv(plan) + [sys.executable, "-I", "-S", STUB, json.dumps(cfg)], "/tmp/work" if plan.ns else ""


def execute(source: str, stdin: str | None, limits, plan: Plan | None, command: list[str] | None) -> Raw:
    """Run `source` as main.py once: under the stub with `plan`, or under the external `command`."""
    tmp = tempfile.mkdtemp(prefix="rlaif-sandbox-")
    try:
        Path(tmp, PROGRAM).write_text(source, encoding="utf-8", errors="replace")
        with tempfile.TemporaryFile() as stdin_file:  # a file, not a pipe: no deadlock with a big stdin
            stdin_file.write((stdin or "").encode(errors="replace"))
            stdin_file.seek(0)
            if command is not None:
                argv = [a.replace("{dir}", tmp).replace("{file}", PROGRAM) for a in command]
                return _run(argv, tmp, env(tmp), stdin_file, limits, (), ns=False)
            return _launch(tmp, stdin_file, limits, plan)
    finally:
        _remove(tmp)


def _launch(tmp: str, stdin_file, limits, plan: Plan) -> Raw:
    uid = UID_BASE + (os.getpid() % 100_000) * 100 + next(_uids) % 100 if plan.drop_uid else None
    if uid is not None and not plan.ns:
        os.chown(tmp, uid, uid)  # without namespaces the program writes here directly
    status_r, status_w = os.pipe()  # the stub's reports; the program never holds it
    life_r, life_w = os.pipe()  # never written: its EOF tells the stub that rlaif died
    try:
        argv, inner = launch_argv(plan, limits, uid, status_w, life_r)
        raw = _run(argv, tmp, env(inner or tmp), stdin_file, limits, (status_w, life_r), ns=plan.ns)
    finally:
        os.close(life_w)
    _read_status(status_r, raw)
    return raw


def _run(argv, cwd, environ, stdin_file, limits, pass_fds, ns: bool) -> Raw:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=environ, stdin=stdin_file, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=pass_fds, start_new_session=True)
    except OSError as e:
        return Raw(None, b"", b"", 0.0, error=f"cannot start {argv[0]}: {e}")
    finally:
        for fd in pass_fds:  # the children hold them now; our copies would keep the pipes open
            os.close(fd)
    deadline = start + limits.wall_s
    try:
        out, err, killed = _collect(proc, deadline, limits.output_kb * 1024, ns)
        if killed is None:  # the pipes closed; the program may still run (it closed its stdout)
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        killed = "timeout"
    finally:
        _kill_group(proc, ns)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return Raw(proc.returncode, out, err, time.monotonic() - start, killed)


def _collect(proc: subprocess.Popen, deadline: float, cap: int, ns: bool) -> tuple[bytes, bytes, str | None]:
    """Read both pipes as they fill; stdout keeps its head, stderr its tail (the traceback)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    out, err, total, ended = bytearray(), bytearray(), 0, False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), bytes(err), None if ended else "timeout"
        for key, _ in sel.select(min(left, 0.1)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            total += len(chunk)
            if key.data == "out":
                out += chunk[: max(0, cap - len(out))]
            else:
                err = (err + chunk)[-cap:]
            if total > cap:
                return bytes(out), bytes(err), "output_limit"
        if not ended and proc.poll() is not None:
            # Leftovers may hold the pipes: without a pid namespace one that left the process group
            # (setsid) outlives this kill, so give the pipes a second, then stop reading.
            _kill_group(proc, ns)
            ended, deadline = True, min(deadline, time.monotonic() + 1.0)
    return bytes(out), bytes(err), None


def _kill_group(proc: subprocess.Popen, ns: bool) -> None:
    """End the program and everything it started, and return only once they are gone.

    With namespaces (`ns`), the launcher (`unshare --fork`) has one child, the pid namespace's init
    (the stub). Killing it first makes the kernel kill the rest of the namespace, and the init's
    exit waits until every process in it is reaped (pid_namespaces(7)); `unshare`, waiting on it,
    exits only after that. Killing the whole group at once instead lets `unshare` exit while the
    namespace is still being emptied, so a fork bomb's processes could outlive this call by a
    moment. The group kill after it takes whatever remains (no namespace: the program's group)."""
    if proc.poll() is None and ns:
        killed = False
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed = True
            except (ProcessLookupError, PermissionError):
                pass
        if killed:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _read_status(fd: int, raw: Raw) -> None:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    for line in data.decode(errors="replace").splitlines():
        event = json.loads(line)
        if "error" in event:
            raw.error = event["error"]
        if "exit" in event:
            raw.exit_code, raw.cpu_s = event["exit"], event["cpu_s"]
    if not data and raw.killed is None:
        raw.error = raw.error or f"the sandbox launcher ended with {raw.exit_code}: " + \
            raw.stderr.decode(errors="replace").strip()[-300:]
        raw.exit_code = None


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # a program chmod-ed its own folder shut (no namespaces): open it, retry
        subprocess.run(["chmod", "-R", "u+rwX", path], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
