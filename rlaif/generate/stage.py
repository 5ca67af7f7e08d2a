"""The generate stage: prompts -> RUN_DIR/round-K/candidates/part-*.parquet + candidates.manifest.json.

    rlaif generate --config configs/quickstart.yaml [key=value ...]

A list of steps, each in its own file: the plan and fingerprint (plan.py, identity.py), sampling
the missing shards (sample.py), spawning workers for generate.data_parallel_size (spawn.py), and
the manifest, built from the files on disk (manifest.py). Resumable: a rerun after a kill skips
the finished shards and ends with the same rows as an uninterrupted run.

Scale-out uses the same plan: `generate.worker=I/N` samples only shards i with i % N == I (several
machines sharing the run folder), and `generate.data_parallel_size=D` starts D such workers on this
machine. Whoever finds every shard written after its own work writes the manifest.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.generate.identity import check_adapter, fingerprint
from rlaif.generate.manifest import write_manifest
from rlaif.generate.plan import MANIFEST, done, make_plan, render, reuse_shards, save_or_check
from rlaif.generate.sample import missing, sample_missing
from rlaif.generate.spawn import WorkerFailed, parse_worker, run_workers
from rlaif.generate.turns import Sampler, has_turns, play
from rlaif.prompts import prompt_args, read_prompts_counted
from rlaif.models import resolve_model

__all__ = ["MANIFEST", "WorkerFailed", "fingerprint", "render", "run", "sample_prompts"]


def system_prompt(cfg: RunConfig, prompts: pl.DataFrame) -> pl.DataFrame:
    """generate.system_prompt in every prompt without a system message: the candidates' messages carry
    it, so the judge, the pairs and training see the conversation the policy was given."""
    from rlaif.models import with_system

    if not cfg.generate.system_prompt:
        return prompts
    chats = with_system(prompts["messages"].to_list(), cfg.generate.system_prompt)
    return prompts.with_columns(pl.Series("messages", chats, dtype=prompts.schema["messages"]))


def run(cfg: RunConfig) -> Path:
    """The `rlaif generate` stage for cfg.round: the whole plan, this worker's share of it, or D workers.
    Round k > 0 samples from round k-1's policy unless generate.adapter names one (sampling_policy);
    the D workers are given the round's config as it came, and find the same policy."""
    from rlaif.train.policy import sampling_policy

    given, cfg = cfg, sampling_policy(cfg)
    g = cfg.generate
    worker = parse_worker(g.worker)
    prompts, counts = read_prompts_counted(*prompt_args(cfg))  # generate.system_prompt applied there
    if g.max_prompts:
        prompts = prompts.head(g.max_prompts)
    rdir, tag = cfg.round_dir(), f"r{cfg.round}"
    prompts = play(cfg, prompts, rdir, tag, "generate", sample_prompts)  # `turns` rows: the policy's own turns first
    model, fp = _identity(cfg, prompts, tag)
    if done(rdir, fp):
        print(f"generate: {rdir / MANIFEST} exists; stage already done")
        return rdir / MANIFEST
    out = rdir / "candidates"
    plan, tokens = _plan(cfg, prompts, model, fp, out, tag)
    if (reused := reuse_shards(rdir, out, plan)):
        print(f"generate: {reused} of {len(plan['shards'])} shards kept from the stale run in {rdir / 'stale'} "
              "(the same prompts, seeds and settings)")
    if g.data_parallel_size > 1:
        run_workers(given, out, worker)
    else:
        sample_missing(cfg, model, _chats(prompts), plan, tokens, out, worker=worker, tag=tag, desc="generate")
    left = missing(out, plan)
    if left and worker:
        print(f"generate: worker {g.worker}: {left}/{len(plan['shards'])} shards still missing (other workers'); "
              "the worker that finds them all written, or `rlaif generate` without generate.worker, writes "
              "the manifest")
        return out
    if left:
        raise UserError(f"{out}: {left} shard(s) missing after every worker exited 0; rerun to resume")
    return write_manifest(cfg, model, out, prompts=counts)


def sample_prompts(cfg: RunConfig, prompts: pl.DataFrame, out_dir: Path, *, tag: str, desc: str,
                   sampler: Sampler | None = None) -> Path:
    """Sample these prompts into this folder (out_dir/candidates + out_dir/candidates.manifest.json), in
    this process, resumable like the stage; `tag` replaces "rK" in candidate ids. The evaluate stage's
    held-out answers and the played turns; generate.worker and data_parallel_size do not apply.
    sampler: a model already loaded for these settings (the passes of one played conversation).
    `turns` rows are played first (turns.py) into out_dir/turns/turn-J/, every pass on one loaded model."""
    g = cfg.generate
    prompts = system_prompt(cfg, prompts)
    if g.max_prompts:
        prompts = prompts.head(g.max_prompts)
    rdir = Path(out_dir)
    if sampler is None and has_turns(prompts):
        with Sampler() as own:
            played = play(cfg, prompts, rdir, tag, desc, sample_prompts, own)
            return sample_prompts(cfg, played, rdir, tag=tag, desc=desc, sampler=own)
    model, fp = _identity(cfg, prompts, tag)
    _aside_if_other(rdir, fp, desc)
    if done(rdir, fp):
        print(f"{desc}: {rdir / MANIFEST} exists; stage already done")
        return rdir / MANIFEST
    out = rdir / "candidates"
    plan, tokens = _plan(cfg, prompts, model, fp, out, tag)
    sample_missing(cfg, model, _chats(prompts), plan, tokens, out, tag=tag, desc=desc, sampler=sampler)
    return write_manifest(cfg, model, out)


def _aside_if_other(rdir: Path, fp: str, desc: str) -> None:
    """Answers sampled under other settings (a changed evaluate.temperature, say) are moved to
    rdir/stale/ rather than refused: the evaluate stage that asks for them is itself rerunning."""
    import json
    import os
    import time

    saved = [rdir / MANIFEST, rdir / "candidates" / "plan.json"]
    fps = set()
    for f in saved:
        try:
            fps.add(json.loads(f.read_text()).get("fingerprint"))
        except (OSError, ValueError, AttributeError):
            continue
    if not fps or fps == {fp}:
        return
    dest = rdir / "stale" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, "candidates"):
        if (rdir / name).exists():
            os.replace(rdir / name, dest / name)
    print(f"{desc}: the answers in {rdir} came from other settings; moved to {dest}, sampling again")


def _identity(cfg: RunConfig, prompts: pl.DataFrame, tag: str) -> tuple[str, str]:
    """The model folder and the fingerprint the rows will carry; an unfinished adapter is refused first."""
    g = cfg.generate
    model = resolve_model(g.model or cfg.model)
    if g.adapter:
        check_adapter(g.adapter)
    return model, fingerprint(cfg, prompts, model, tag)


def _plan(cfg: RunConfig, prompts: pl.DataFrame, model: str, fp: str, out: Path, tag: str) -> tuple[dict, dict]:
    g = cfg.generate
    if g.temperature == 0 and g.n > 1:
        print(f"generate: warning: temperature=0 (greedy) with n={g.n} gives {g.n} identical responses per prompt")
    plan, tokens = make_plan(cfg, prompts, model, fp, tag)
    save_or_check(out, plan)
    return plan, tokens


def _chats(prompts: pl.DataFrame) -> dict:
    return dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()))
