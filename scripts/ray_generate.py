"""Sample one round's candidates on a Ray cluster: N Ray tasks, each one `rlaif generate` shard worker.

    ray start --head ...                 # and `ray start --address=...` on the other GPU nodes
    python scripts/ray_generate.py --workers 16 --config configs/gpu-8b.yaml round=0 generate.n=8
    python scripts/ray_generate.py --workers 2 --gpus-per-worker 0 --config configs/quickstart.yaml  # CPU, local Ray

Task i runs `python -m rlaif generate --config FILE OVERRIDES generate.worker=i/N` on whatever node Ray
places it, holding `generate.tensor_parallel_size` GPUs (Ray sets CUDA_VISIBLE_DEVICES for it). Each
worker samples the shards i, i+N, i+2N, ... of the round's fixed plan, with the same per-prompt seeds and
files as a single-machine run, so the rows are the same, and a task killed or retried resumes at its
first missing shard. A final `rlaif generate` (here, no model loaded) writes candidates.manifest.json.

Requires: the run folder (run_dir) and the model/prompts paths on a filesystem every node sees at the
same path; rlaif installed on every node; `pip install 'rlaif[ray]'`. Relative paths in the config
resolve against the directory this script runs in, on every node. tests/test_scale.py runs it on a local
CPU Ray instance (--gpus-per-worker 0) and checks the rows equal a one-process run's.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import ray

from rlaif.config import load_config
from rlaif.errors import UserError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, required=True, help="N: Ray tasks, one rlaif shard worker each")
    ap.add_argument("--config", required=True, help="rlaif run config (YAML)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster address (default: $RAY_ADDRESS or the cluster `ray start` left on this node, "
                         "else a new local Ray instance; 'local' always starts a new one)")
    ap.add_argument("--gpus-per-worker", type=float, default=None,
                    help="GPUs Ray reserves per task (default: generate.tensor_parallel_size; 0 on CPU)")
    ap.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs Ray reserves per task (default 1)")
    ap.add_argument("overrides", nargs="*", help="rlaif key.sub=value overrides, passed to every worker")
    args = ap.parse_args()

    try:  # rlaif's own loader: overrides and defaults as the workers will see them, bad keys caught before Ray
        tp = load_config(args.config, args.overrides).generate.tensor_parallel_size
    except UserError as e:
        print(f"ray_generate: error: {e}", file=sys.stderr)
        return e.exit_code
    gpus = tp if args.gpus_per_worker is None else args.gpus_per_worker
    stage = ["-m", "rlaif", "generate", "--config", args.config, *args.overrides]
    n, cwd = args.workers, os.getcwd()  # relative paths in the config resolve here, on every node

    ray.init(address=args.address)

    # max_retries: a task whose node dies is retried; it resumes at its first missing shard
    @ray.remote(num_gpus=gpus, num_cpus=args.cpus_per_worker, max_retries=2)
    def worker(i: int) -> int:
        # One engine per task (data_parallel_size=1): Ray, not rlaif, spreads the engines over the GPUs.
        # RLAIF_RUN_CHILD: workers leave RUN_DIR/config.yaml to the final run below.
        cmd = [sys.executable, *stage, f"generate.worker={i}/{n}", "generate.data_parallel_size=1"]
        return subprocess.run(cmd, cwd=cwd, env={**os.environ, "RLAIF_RUN_CHILD": "1"}).returncode

    codes = ray.get([worker.remote(i) for i in range(n)])
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        print(f"ray_generate: workers failed (index, exit code): {failed}; rerun to resume", file=sys.stderr)
        return failed[0][1] if failed[0][1] > 0 else 1
    return subprocess.run([sys.executable, *stage]).returncode  # all shards there: writes the manifest


if __name__ == "__main__":
    sys.exit(main())
