"""rlaif as PID 1, as in a Docker/Kubernetes container whose entrypoint is `rlaif run` (issue 18, item 2):
every stage and data-parallel worker starts (its parent's pid is 1 from the start, and that is not a dead
parent), and the orphan guarantees of tests/test_procs.py still hold inside the container.

The container is a real PID namespace, `unshare --pid --fork --mount-proc` (util-linux; root, or an
unprivileged user namespace). CI runs as root on this kind of machine: if unshare cannot make one, these
tests fail with unshare's own message rather than skip, since skipping would hide the case they cover."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_procs import _alive, _children

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def container(cmd: list[str]) -> list[str]:
    """cmd as PID 1 of a new PID namespace, with its own /proc (as a container has)."""
    assert shutil.which("unshare"), "unshare (util-linux) is needed to run a process as PID 1"
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    # --kill-child: PID 1 dies with unshare, so a test that kills unshare ends the whole namespace
    return ["unshare", *user, "--pid", "--fork", "--kill-child", "--mount-proc", *cmd]


# A rlaif child: takes the parent-death signal first (as `rlaif ...` does in cli.main), then works.
# With a launcher argument it first waits until the launcher that forked it is gone (it is reparented).
WORKER = """import os, sys, time
from pathlib import Path
if sys.argv[2] == "after-launcher-died":  # (its pid is given: it may be gone before this line runs)
    while os.getppid() == int(sys.argv[3]):
        time.sleep(0.01)
from rlaif.procs import die_with_parent
die_with_parent()
Path(sys.argv[1]).write_text(f"ran with parent {os.getppid()}")
"""
# A launcher as `accelerate launch` / torchrun are: it forks the rlaif worker with plain Popen (no
# parent-death signal of its own), then either waits for it or exits at once.
LAUNCHER = """import os, subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3], str(os.getpid())])
sys.exit(worker.wait() if sys.argv[3] == "launcher-waits" else 0)
"""
# PID 1: starts one child through rlaif.procs, then reaps whatever was reparented to it, as init does.
INIT = """import json, os, sys
from rlaif import procs
assert os.getpid() == 1, os.getpid()
code = procs.run_child([sys.executable, "-c", *sys.argv[1:]])
orphans = []
while True:
    try:
        orphans.append(os.waitstatus_to_exitcode(os.wait()[1]))
    except ChildProcessError:
        break
print(json.dumps({"child": code, "orphans": orphans}))
"""


def _as_pid_1(*args: str) -> dict:
    res = subprocess.run(container([sys.executable, "-c", INIT, *args]), cwd=ROOT, env=ENV, capture_output=True,
                         text=True)
    assert res.returncode == 0, f"PID 1 failed (rc {res.returncode}): {res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_child_of_pid_1_runs(tmp_path):
    out = tmp_path / "ran"
    assert _as_pid_1(WORKER, str(out), "direct") == {"child": 0, "orphans": []}
    assert out.read_text() == "ran with parent 1"


def test_a_worker_under_a_launcher_of_pid_1_runs(tmp_path):
    out = tmp_path / "ran"
    assert _as_pid_1(LAUNCHER, WORKER, str(out), "launcher-waits") == {"child": 0, "orphans": []}
    assert out.read_text().startswith("ran with parent ") and out.read_text() != "ran with parent 1"


def test_a_worker_whose_launcher_died_before_it_took_the_signal_dies(tmp_path):
    """The launcher is gone before the worker sets its parent-death signal, so no signal will ever come; the
    worker is reparented to PID 1, which is also the rlaif process that started the launcher. Its parent's pid
    is its spawner's, and still it must die: a parent-is-my-spawner test alone would let it run on."""
    out = tmp_path / "ran"
    got = _as_pid_1(LAUNCHER, WORKER, str(out), "after-launcher-died")
    assert got == {"child": 0, "orphans": [-signal.SIGKILL]}, got
    assert not out.exists()


@pytest.mark.slow
def test_rlaif_run_as_pid_1_runs_its_stages(tmp_path, tiny_model):
    """The container entrypoint is `rlaif run`: each stage is a child of PID 1, and generate's data-parallel
    workers are children of a child of PID 1."""
    cmd = [sys.executable, "-m", "rlaif", "run", "configs/quickstart.yaml", f"run_dir={tmp_path}",
           f"model={tiny_model}", "rounds=1", "prompts=tests/assets/prompts.jsonl", "generate.max_prompts=4",
           "generate.max_tokens=8", "generate.shard_size=2", "generate.data_parallel_size=2",
           "train.max_steps=1", "train.batch_size=2", "train.max_length=128", "evaluate.n_prompts=2"]
    res = subprocess.run(container(cmd), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "run: all 1 rounds done" in res.stdout
    for done in ("candidates.manifest.json", "judge-report.json", "train/train.manifest.json", "eval/eval.json"):
        assert (tmp_path / "round-0" / done).exists(), done
    assert sorted(p.name for p in (tmp_path / "round-0" / "candidates").glob("worker-*.json")) == [
        "worker-0-of-2.json", "worker-1-of-2.json"]


def test_rlaif_generate_as_pid_1_runs_its_workers(tmp_path, tiny_model):
    """The entrypoint is `rlaif generate` with data parallelism: its workers are children of PID 1."""
    cmd = [sys.executable, "-m", "rlaif", "generate", "configs/quickstart.yaml", f"run_dir={tmp_path}",
           f"model={tiny_model}", "prompts=tests/assets/prompts.jsonl", "generate.max_prompts=4",
           "generate.max_tokens=4", "generate.shard_size=2", "generate.data_parallel_size=2"]
    cmd[4:4] = ["--config"]  # the form test_procs uses, whatever positional forms the CLI also takes
    res = subprocess.run(container(cmd), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rdir = tmp_path / "round-0"
    assert json.loads((rdir / "candidates.manifest.json").read_text())["counts"]["candidates"] == 8
    assert sorted(p.name for p in (rdir / "candidates").glob("worker-*.json")) == [
        "worker-0-of-2.json", "worker-1-of-2.json"]


def _cmdline(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


# PID 1 that is not rlaif (docker --init, tini, a shell entrypoint): it starts rlaif and reaps orphans.
PLAIN_INIT = """import os, subprocess, sys
subprocess.Popen(sys.argv[1:])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


@pytest.mark.parametrize("pid_1", ["rlaif", "plain-init"])
def test_kill_9_inside_a_container_kills_the_workers(tmp_path, tiny_model, pid_1):
    """kill -9 of the rlaif parent inside a container: as PID 1 itself (`docker kill`), or as the child of a
    plain init, whose workers are then reparented to that init (pid 1). The workers must die, not finish."""
    gen = [sys.executable, "-m", "rlaif", "generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}",
           f"model={tiny_model}", "prompts=tests/assets/prompts.jsonl", "generate.shard_size=1",
           "generate.max_tokens=64", "generate.data_parallel_size=2"]
    cmd = container(gen if pid_1 == "rlaif" else [sys.executable, "-c", PLAIN_INIT, *gen])
    log = tmp_path / "generate.log"
    with open(log, "wb") as out:
        unshare = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    kids: list[int] = []
    try:
        deadline = time.time() + 240
        while len(kids) < 2 and unshare.poll() is None and time.time() < deadline:
            init = _children(unshare.pid)  # outside pids: the namespace's PID 1, then its descendants
            parent = init if pid_1 == "rlaif" else [c for i in init for c in _children(i)]
            kids = [c for p in parent for c in _children(p) if b"rlaif" in _cmdline(c)]
            time.sleep(0.05)
        assert len(kids) == 2, f"workers never started: {log.read_text()[-2000:]}"
        os.kill(parent[0], signal.SIGKILL)  # the rlaif parent only
        deadline = time.time() + 20
        while any(map(_alive, kids)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, kids)), f"workers {kids} outlived their killed parent"
        finished = sorted(p.name for p in tmp_path.rglob("worker-*.json"))
        assert not finished, f"workers finished their work after the parent died: {finished}"
    finally:
        for pid in kids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if unshare.poll() is None:
            unshare.kill()  # and with it (--kill-child) the namespace's PID 1, and so the namespace
        unshare.wait()
