"""Sampling the missing shards of a plan: load the backend once, hand it every missing shard, and
write each shard (a temporary file, fsynced, renamed) as soon as all of its prompts are back.

A kill -9 costs at most the prompts in flight: a rerun skips the finished shards, and since each
prompt is seeded by (seed, round, prompt_id), it ends with the same rows as an uninterrupted run.
When this process sampled something it leaves a worker record (worker-main.json, or
worker-I-of-N.json for generate.worker=I/N) for the manifest: its shards, tokens and timings.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.generate.backends import Done, Request
from rlaif.generate.plan import prompt_seed
from rlaif.io import CANDIDATES_SCHEMA, write_json, write_parquet


def shard_path(out: Path, i: int) -> Path:
    return out / f"part-{i:05d}.parquet"


def mine(plan: dict, worker: tuple[int, int] | None) -> list[int]:
    """The shards this process owns: all of them, or i % N == I for generate.worker=I/N."""
    return [i for i in range(len(plan["shards"])) if worker is None or i % worker[1] == worker[0]]


def missing(out: Path, plan: dict) -> int:
    return sum(not shard_path(out, i).exists() for i in range(len(plan["shards"])))


def remove_stale_tmp(out: Path, owned: set[int] | None) -> None:
    """Half-written shards of a killed run. A worker removes only its own shards' temporaries: the
    others may belong to a worker writing right now."""
    for stale in out.glob(".part-*.tmp"):  # .part-00012.parquet.XXXX.tmp
        if owned is None or int(stale.name[len(".part-"):].split(".")[0]) in owned:
            stale.unlink(missing_ok=True)


def record_path(out: Path, worker: tuple[int, int] | None) -> Path:
    return out / ("worker-main.json" if worker is None else f"worker-{worker[0]}-of-{worker[1]}.json")


def sample_missing(cfg: RunConfig, model: str, chats: dict, plan: dict, tokens: dict, out: Path, *,
                   worker: tuple[int, int] | None = None, tag: str, desc: str, sampler=None) -> None:
    """Sample the shards not written yet. sampler (rlaif.generate.turns.Sampler): one model shared by the
    passes of a played conversation, loaded by the first pass that needs it and closed by its owner;
    without one, this pass loads its own backend and closes it."""
    owned = mine(plan, worker)
    remove_stale_tmp(out, None if worker is None else set(owned))
    todo = [i for i in owned if not shard_path(out, i).exists()]
    who = f"worker {cfg.generate.worker}: " if worker else ""
    if len(todo) < len(owned):
        print(f"generate: {who}resuming, {len(owned) - len(todo)}/{len(owned)} shards already done")
    if not todo:
        return
    from rlaif.generate.backends import load_backend

    t0 = time.time()
    g = cfg.generate
    if sampler is None:
        backend = load_backend(g.backend, model, g, cfg.seed)
        load_s = time.time() - t0
    else:
        backend, load_s = sampler.get(cfg, model)  # None: an earlier pass of the conversation loaded it
    shards = [[Request(pid, tokens[pid], prompt_seed(cfg, pid)) for pid in plan["shards"][i]] for i in todo]
    bar = _Progress(plan, owned, todo, desc + (f" {g.worker}" if worker else ""),
                    copies=g.n if (g.temperature == 0 and g.backend == "transformers") else 1)
    shard_of = {pid: i for i in todo for pid in plan["shards"][i]}
    waiting = {i: {} for i in todo}  # shard -> prompt_id -> Done, until the shard is whole
    try:
        for d in backend.generate(shards):
            i = shard_of[d.request.prompt_id]
            waiting[i][d.request.prompt_id] = d
            bar.prompt_done(d)
            if len(waiting[i]) == len(plan["shards"][i]):
                done = waiting.pop(i)
                write_parquet(shard_path(out, i), rows(cfg, chats, [done[p] for p in plan["shards"][i]], tag))
                bar.shard_written()
    finally:  # the engine's memory goes back before anything else in this process loads (evaluate's judge)
        if sampler is None and hasattr(backend, "close"):
            backend.close()
    bar.close()
    if waiting:  # a backend bug, never a user's: say which shards stay missing
        raise RuntimeError(f"generate: the backend left prompts of shards {sorted(waiting)} unanswered")
    write_json(record_path(out, worker), {
        "worker": g.worker if worker else "main", "host": socket.gethostname(), "fingerprint": plan["fingerprint"],
        "shards": len(todo), "new_tokens": bar.tokens, "model_load_s": load_s or 0.0,
        "model_loaded": load_s is not None, "generate_s": bar.elapsed(),
        "started": t0, "finished": time.time(), **getattr(backend, "stats", {})})


def rows(cfg: RunConfig, chats: dict, done: list[Done], tag: str) -> pl.DataFrame:
    g = cfg.generate
    out = []
    for d in done:
        pid = d.request.prompt_id
        for j, s in enumerate(d.samples):
            out.append({"prompt_id": pid, "candidate_id": f"{pid}/{tag}/{j}", "round": cfg.round,
                        "messages": chats[pid], "response": s.text, "num_tokens": s.num_tokens,
                        "finish_reason": s.finish_reason, "model": g.model or cfg.model, "adapter": g.adapter,
                        "seed": d.seed})
    return pl.DataFrame(out, schema=CANDIDATES_SCHEMA)


class _Progress:
    """tqdm over prompts while the engine runs: prompts done, tok/s, shards written."""

    def __init__(self, plan: dict, owned: list[int], todo: list[int], desc: str, copies: int) -> None:
        from tqdm.auto import tqdm

        size = {i: len(plan["shards"][i]) for i in owned}
        self.bar = tqdm(total=sum(size.values()), initial=sum(size[i] for i in owned if i not in todo),
                        unit="prompt", desc=desc)
        self.shards, self.total_shards = len(owned) - len(todo), len(owned)
        self.copies, self.tokens, self.t0 = copies, 0, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def prompt_done(self, d: Done) -> None:
        # Greedy transformers runs decode once and copy n times: count decoded tokens only.
        self.tokens += sum(s.num_tokens for s in d.samples) // self.copies
        self.bar.update(1)
        self._postfix()

    def shard_written(self) -> None:
        self.shards += 1
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"{self.tokens / max(self.elapsed(), 1e-9):.1f} tok/s, "
                                 f"shards {self.shards}/{self.total_shards}", refresh=False)

    def close(self) -> None:
        self.bar.close()
