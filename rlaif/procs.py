"""Child processes that die with their parent, and folder locks that name the live process holding them.

A kill -9 runs no cleanup, so the kernel has to do it (issue 11, item 5):
- Every child rlaif starts (a stage of `rlaif run`, a generate.data_parallel_size worker) gets
  PR_SET_PDEATHSIG=SIGKILL (prctl(2), Linux): when its parent dies, however it dies, the kernel
  kills it. A child started under a launcher (`accelerate launch`, torchrun) is a grandchild; it
  sets the same signal for itself at start (`die_with_parent`), so the chain holds at every link.
- A stage holds flock(2) on a lock file in its round folder while it runs, and writes its pid
  there. The kernel drops the lock when the holder dies, so a lock left by a killed process never
  blocks a rerun, and a live holder always does: no second trainer or engine writes beside it.
  The lock file is never replaced or deleted (that would hand a new inode to the next process).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rlaif.errors import UserError

PARENT_ENV = "RLAIF_PARENT_PID"  # set for every child: the pid of the rlaif process that started it
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2  # <linux/prctl.h>


def _prctl():
    return ctypes.CDLL(None, use_errno=True).prctl


def _pdeathsig() -> None:
    if sys.platform.startswith("linux"):
        _prctl()(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _pdeathsig_was_set() -> bool:
    sig = ctypes.c_int(0)
    _prctl()(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return sig.value != 0


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0; another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ppid_of(pid: int) -> int | None:
    try:  # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descends_from(pid: int, ancestor: int) -> bool | None:
    """Whether ancestor is pid's parent, grandparent, ...; None where /proc cannot tell (it belongs to another
    PID namespace, as after `unshare --pid` without --mount-proc, or there is no /proc)."""
    try:
        if int(os.readlink("/proc/self")) != os.getpid():
            return None
    except (OSError, ValueError):
        return None
    for _ in range(64):  # a launcher is one or two levels; the bound only guards against a loop
        if pid == ancestor:
            return True
        if pid in (0, 1) or (pid := _ppid_of(pid)) is None:
            return False
    return False


def die_with_parent() -> None:
    """Called first by every `rlaif` process: if an rlaif process started it (directly or through a
    launcher), die when the direct parent dies. A parent already gone before the signal was set sends
    nothing, so that case is checked after setting it.

    The check never reads a parent pid of 1 as "parent died" by itself: in a container whose entrypoint
    is `rlaif run`, the spawner *is* PID 1 (issue 18, item 2). It compares against the spawner's pid,
    recorded in the environment by `spawn`:
    - A direct child of `spawn` arrives with the signal already set: spawn's pre-exec hook set it and
      then saw its parent alive, and the setting survives exec (prctl(2)). Nothing is left to check.
    - A process forked by a launcher (`accelerate launch`, torchrun) arrives without it (fork clears it).
      Its launcher is alive iff its parent is still a descendant of the spawner, other than the spawner
      itself: an orphan is reparented to init or a subreaper, and in a container init is the spawner."""
    spawner = os.environ.get(PARENT_ENV)
    if not spawner or not spawner.isdigit():
        return
    spawner_pid = int(spawner)
    if not sys.platform.startswith("linux"):  # no parent-death signal: the spawner's death is all one can see
        if os.getppid() != spawner_pid and not alive(spawner_pid):
            os.kill(os.getpid(), signal.SIGKILL)
        return
    if _pdeathsig_was_set():
        return
    _pdeathsig()
    ppid = os.getppid()
    lineage = _descends_from(ppid, spawner_pid)
    if ppid == spawner_pid or ppid == 1 or lineage is False or (lineage is None and not alive(spawner_pid)):
        os.kill(os.getpid(), signal.SIGKILL)


def spawn(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """Popen whose child the kernel kills when this process dies (even by kill -9)."""
    parent = os.getpid()
    env = {**(os.environ if env is None else env), PARENT_ENV: str(parent)}
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(cmd, env=env)
    prctl = _prctl()  # looked up before the fork: the child only calls it

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return subprocess.Popen(cmd, env=env, preexec_fn=in_child)


def run_child(cmd: list[str], env: dict | None = None) -> int:
    """spawn + wait; on an error or Ctrl-C here the child is stopped too, then the error goes on."""
    proc = spawn(cmd, env)
    try:
        return proc.wait()
    except BaseException:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)  # Ctrl-C reached the child as well: let it say so and exit
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def lock_name(stage: str, worker: str | None = None) -> str:
    """One lock per stage and round; shard workers (generate.worker=I/N) each hold their own, so
    workers on one folder run side by side. `rlaif filter` writes the judge's pairs: the judge lock."""
    stage = "judge" if stage == "filter" else stage
    return f".lock-{stage}" + (f"-worker-{worker.replace('/', '-of-')}" if worker else "")


@contextlib.contextmanager
def hold(folder: Path, name: str, what: str):
    """Hold folder/name for the block, or fail with one line naming the live process that holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"{folder}: in use by {_holder(f.read())} ({path} is locked); a second process would "
                            "write the same files beside it: wait for it to end or stop it, then rerun") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        f.flush()
        yield path
    finally:
        f.close()  # closing the descriptor drops the lock; the kernel does the same on death


def _holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} ({h['what']}, since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process (it has not written its pid yet)"
