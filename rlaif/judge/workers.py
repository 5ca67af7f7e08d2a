"""judge.processes=N: one judge stage's live calls spread over N client processes writing one ledger.

A local engine (vllm serve on a GPU) can answer faster than one Python client sends: the client's
per-call CPU (AsyncOpenAI, httpx, JSON; ~2 ms a call, BENCHMARKS.md) caps one process at a few
hundred calls/s. So the stage splits its pending calls by key (crc32(key) mod N) into N files;
the parent sends share 0 itself and starts N-1 workers:

    python -m rlaif.judge.worker_main DIR INDEX  (started by the parent; never by hand)

Each worker sends its share through its own Runner and backend into the SAME ledger (SQLite WAL:
one writer at a time, readers never blocked), so every ledger guarantee holds as with one process:
one commit per result, a key with a reply is never sent again, budgets are admitted ledger-wide
(Ledger.reserve counts every process's calls in flight). Workers die with the parent (procs.spawn:
PR_SET_PDEATHSIG), and a kill -9 of any process loses only its calls in flight: a rerun sends
what the ledger lacks. The parent then reads results from the ledger as with one process.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

JOB, CALLS, STATS = "job.pkl", "calls-{}.pkl", "stats-{}.json"


def share(key: str, n: int) -> int:
    """Which process sends this key: stable across runs and processes (not Python's salted hash)."""
    return zlib.crc32(key.encode()) % n


def write_shares(todo, folder: Path, n: int) -> list[int]:
    """Stream the calls into n files, one pickle per call: nothing of the round is held here."""
    files = [open(folder / CALLS.format(i), "wb") for i in range(n)]
    counts = [0] * n
    try:
        for call in todo:
            i = share(call.key, n)
            pickle.dump(call, files[i], protocol=pickle.HIGHEST_PROTOCOL)
            counts[i] += 1
    finally:
        for f in files:
            f.close()
    return counts


def read_share(path: Path):
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def spread(runner, todo) -> None:
    """Send `todo` (pending live calls) over judge.processes processes; this one sends share 0."""
    from rlaif.procs import spawn

    n = runner.j.processes
    folder = Path(tempfile.mkdtemp(prefix="rlaif-judge-"))  # 0700: the config travels in it (no key: env only)
    procs = []
    try:
        counts = write_shares(todo, folder, n)
        job = {"cfg": runner.cfg, "model": runner.model, "spec": runner.spec, "identity": runner.identity,
               "judge_id": runner.judge_id, "cap_names": runner.cap_names, "ledger": str(runner.ledger.path)}
        (folder / JOB).write_bytes(pickle.dumps(job))
        env = {**os.environ, "TQDM_DISABLE": "1"}  # one progress bar: the parent's
        procs = [(i, spawn([sys.executable, "-m", "rlaif.judge.worker_main", str(folder), str(i)], env))
                 for i in range(1, n) if counts[i]]
        runner.backend.run(runner._admitted(read_share(folder / CALLS.format(0))), runner._on_reply)
        for i, p in procs:  # every worker is waited for before one's failure is raised
            p.wait()
        for i, p in procs:
            fold(runner, folder / STATS.format(i), i, p.returncode)
    finally:
        for _, p in procs:
            if p.poll() is None:  # an error or Ctrl-C here: no worker goes on sending alone
                p.kill()
                p.wait()
        shutil.rmtree(folder, ignore_errors=True)


def fold(runner, stats: Path, i: int, rc: int) -> None:
    """A worker's counts into the parent's report; a worker that died stops the stage (its calls are pending)."""
    if rc != 0 or not stats.is_file():  # stop the stage: a next phase (best_vs_worst's pairs) needs these results
        from rlaif.errors import JudgeIncomplete

        raise JudgeIncomplete(f"judge.processes: client process {i} exited with status {rc} before sending its "
                              "share; rerun to send only what the ledger is missing")
    got = json.loads(stats.read_text())
    for k, v in got["stats"].items():
        if k != "seconds":
            runner.stats[k] += v
    runner.bar.update(got["stats"]["calls_made"] + got["stats"]["errors"])
    runner.last_error = got["last_error"] or runner.last_error
    if got["stopped"] and not runner.stopped:
        runner.stopped, runner.left = got["stopped"], got["left"]
