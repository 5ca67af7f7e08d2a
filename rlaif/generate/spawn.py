"""Spawning shard workers: generate.data_parallel_size=D starts D `rlaif generate generate.worker=J/M`
processes on this machine, each on its own block of tensor_parallel_size GPUs, over the same plan.

Each worker writes its shards and its worker record; this process only waits. With generate.worker=I/N
as well (several machines, each with D engines), worker j here takes global index I + N*j:
i % (N*D) == I + N*j implies i % N == I, so the machine still covers exactly its own shards.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rlaif.config import RunConfig, dump_config
from rlaif.errors import UserError
from rlaif.io import write_text
from rlaif.procs import spawn


def parse_worker(worker: str | None) -> tuple[int, int] | None:
    """generate.worker "I/N" -> (I, N), checked."""
    if worker is None:
        return None
    i, n = (int(x) for x in worker.split("/"))
    if n < 1 or i >= n:
        raise UserError(f"generate.worker={worker}: expected I/N with 0 <= I < N (worker I of N, counted from 0)")
    return i, n


class WorkerFailed(UserError):
    def __init__(self, worker: str, code: int) -> None:
        super().__init__(f"generate: worker {worker} failed (exit {code}); its finished shards are kept: "
                         "rerun the same command to resume")
        self.exit_code = code if 0 < code < 256 else 1


def visible_gpus() -> list[str]:
    """GPUs to pin workers to. Only a missing torch means "CPU"; a CUDA that fails to count its
    devices is an error, not a silent CPU run of D unpinned engines (issue 11, item 8)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:
        print("generate: torch is not importable here: workers run on CPU", flush=True)
        return []
    try:
        return [str(i) for i in range(torch.cuda.device_count())]
    except RuntimeError as e:
        raise UserError(f"generate.data_parallel_size: cannot count the GPUs ({str(e).splitlines()[0][:120]}); "
                        "set CUDA_VISIBLE_DEVICES to the GPUs the workers may use") from None


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    return spawn(cmd, env)  # the kernel kills the worker if this process dies, even by kill -9


def run_workers(cfg: RunConfig, out: Path, worker: tuple[int, int] | None) -> None:
    """Start the D workers, wait for all of them; a failed one fails the stage with its exit code."""
    g = cfg.generate
    d, tp = g.data_parallel_size, g.tensor_parallel_size
    base_i, base_n = worker or (0, 1)
    gpus = visible_gpus()
    if gpus and len(gpus) < d * tp:
        raise UserError(f"generate.data_parallel_size={d} x generate.tensor_parallel_size={tp} needs {d * tp} GPUs; "
                        f"{len(gpus)} visible (CUDA_VISIBLE_DEVICES={','.join(gpus)})")
    conf = out / f".config-worker-{base_i}-of-{base_n}.yaml"  # the resolved config, for the children
    write_text(conf, dump_config(cfg))
    procs = []
    try:
        for j in range(d):
            name = f"{base_i + base_n * j}/{base_n * d}"
            env = _env(gpus[j * tp:(j + 1) * tp] if gpus else None, d)
            cmd = [sys.executable, "-m", "rlaif", "generate", "--config", str(conf),
                   f"generate.worker={name}", "generate.data_parallel_size=1"]
            print(f"generate: starting worker {name}"
                  + (f" on GPU(s) {env['CUDA_VISIBLE_DEVICES']}" if gpus else ""), flush=True)
            procs.append((name, start(cmd, env)))
        failed = _wait(procs)
    except BaseException:
        for _, p in procs:  # Ctrl-C or an error here: do not leave engines running
            if p.poll() is None:
                p.terminate()
        for _, p in procs:
            p.wait()
        raise
    finally:
        conf.unlink(missing_ok=True)
    if failed:
        raise WorkerFailed(*failed)


def _env(gpus: list[str] | None, d: int) -> dict:
    env = {**os.environ, "RLAIF_RUN_CHILD": "1"}  # children must not rewrite RUN_DIR/config.yaml
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    else:  # CPU: share the cores instead of each child taking them all
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // d)))
    return env


def _wait(procs: list) -> tuple[str, int] | None:
    """Wait for every worker; the first failure (name, exit code), after all have exited."""
    failed, pending = None, dict(procs)
    while pending:
        for name, p in list(pending.items()):
            code = p.poll()
            if code is None:
                continue
            del pending[name]
            if code != 0:
                print(f"generate: worker {name} exited with code {code}; waiting for the others "
                      "(their shards are kept)", file=sys.stderr, flush=True)
                failed = failed or (name, code)
        time.sleep(0.2)
    return failed
