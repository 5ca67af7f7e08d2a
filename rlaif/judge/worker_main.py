"""One client process of `judge.processes=N` (rlaif/judge/workers.py starts it; never by hand):

    python -m rlaif.judge.worker_main DIR INDEX

It sends its share of the pending calls through its own Runner into the one ledger. Apart from
workers.py so that the runner, which starts the workers, and the worker, which runs a Runner, do
not import each other.
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from rlaif.judge.workers import CALLS, JOB, STATS, read_share


def main(argv: list[str] | None = None) -> int:
    from rlaif.judge.ledger import Ledger
    from rlaif.judge.runner import Runner
    from rlaif.procs import die_with_parent

    die_with_parent()
    folder, i = Path(argv[0]), int(argv[1])
    job = pickle.loads((folder / JOB).read_bytes())
    ledger = Ledger(job["ledger"])
    try:
        r = Runner(job["cfg"], ledger, job["model"], job["spec"], job["identity"], job["judge_id"])
        r.cap_names, r.worker = job["cap_names"], True
        r.execute(read_share(folder / CALLS.format(i)), f"judge: process {i}")
        out = {"stats": r.stats, "stopped": r.stopped, "last_error": r.last_error, "left": r.left}
    finally:
        ledger.close()
    tmp = folder / (STATS.format(i) + ".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(folder / STATS.format(i))  # written whole or not at all
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
