"""rlaif/procs.py for real (issue 11, item 5): a kill -9 of `rlaif run` or of a data-parallel generate
parent takes its children with it, and a live stage process refuses a second one on its round folder."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, rlaif_cli

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:  # a zombie (dead, not yet reaped by init) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_parent_then_children_die(cmd: list[str], n_children: int, run_dir: Path, log: Path) -> None:
    """Start cmd on run_dir, wait for its rlaif children, kill -9 the parent alone, and expect the kernel to
    end them before they finish."""
    with open(log, "wb") as out:
        parent = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    kids: list[int] = []
    try:
        deadline = time.time() + 240
        while len(kids) < n_children and parent.poll() is None and time.time() < deadline:
            kids = [c for c in _children(parent.pid) if b"rlaif" in Path(f"/proc/{c}/cmdline").read_bytes()]
            time.sleep(0.05)
        assert len(kids) == n_children, f"children never started: {log.read_text()[-2000:]}"
        os.kill(parent.pid, signal.SIGKILL)  # the parent only, as `kill -9 PID` does: not its group
        parent.wait()
        deadline = time.time() + 20
        while any(map(_alive, kids)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, kids)), f"children {kids} outlived their killed parent"
        # killed, not finished: a child that ran on to the end (no parent-death signal, and a tiny model
        # is quick) leaves its worker record; without this check such a run passed the test
        finished = sorted(p.name for p in run_dir.rglob("worker-*.json"))
        assert not finished, f"children finished their work after the parent died: {finished}"
    finally:
        for pid in kids:  # on failure, do not leave them running (only the pids this test found)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_kill_9_of_rlaif_run_kills_its_stage(tmp_path, tiny_model):
    cmd = [sys.executable, "-m", "rlaif", "run", "configs/quickstart.yaml", f"run_dir={tmp_path}",
           f"model={tiny_model}", "rounds=1", "generate.max_tokens=64"]
    _kill_parent_then_children_die(cmd, 1, tmp_path, tmp_path / "run.log")


def test_kill_9_of_a_data_parallel_parent_kills_its_workers(tmp_path, tiny_model):
    cmd = [sys.executable, "-m", "rlaif", "generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}",
           f"model={tiny_model}", "prompts=tests/assets/prompts.jsonl", "generate.shard_size=1",
           "generate.max_tokens=64", "generate.data_parallel_size=2"]
    _kill_parent_then_children_die(cmd, 2, tmp_path, tmp_path / "generate.log")


HOLDER = """import sys, time
from pathlib import Path
from rlaif.procs import hold, lock_name
with hold(Path(sys.argv[1]), lock_name(sys.argv[2]), "rlaif " + sys.argv[2] + " round 0"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_live_stage_holds_its_round_folder_and_a_killed_one_does_not(tmp_path, tiny_model):
    rdir = tmp_path / "round-0"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(rdir), "generate"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["generate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}", f"model={tiny_model}",
                "prompts=tests/assets/prompts.jsonl", "generate.max_prompts=1", "generate.max_tokens=4"]
        res = rlaif_cli(*args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert f"in use by pid {holder.pid} on" in lines[0] and "rlaif generate round 0" in lines[0]
        assert not (rdir / "candidates").exists()  # refused before any work
        # another stage of the same round, and a shard worker of this one, are not blocked
        other = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(600)", "pass"), str(rdir),
                                "train"], cwd=ROOT, env=ENV, capture_output=True, text=True)
        assert other.returncode == 0 and other.stdout.strip() == "held", other.stderr
    finally:
        holder.kill()  # kill -9: no cleanup runs, and the kernel drops the lock
        holder.wait()
    assert json.loads((rdir / ".lock-generate").read_text())["pid"] == holder.pid  # the stale pid stays...
    res = rlaif_cli(*args)  # ...and blocks nothing
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((rdir / ".lock-generate").read_text())["pid"] != holder.pid


def test_two_runs_of_one_run_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "run"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = rlaif_cli("run", "configs/quickstart.yaml", f"run_dir={tmp_path}")
        assert res.returncode == 2 and f"in use by pid {holder.pid}" in res.stderr and "rlaif run" in res.stderr
        assert not (tmp_path / "config.yaml").exists()  # the live run's resolved config is not overwritten
    finally:
        holder.kill()
        holder.wait()
