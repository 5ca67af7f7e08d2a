"""What generated rows depend on: the fingerprint that decides whether finished shards may be reused,
and which adapters are finished enough to sample from (issue 11, item 6).

The model and the adapter enter by content (`rlaif.models.folder_id`), not by path: an adapter
retrained at the same path, or another model copied over the old folder, gets new shards. Every
setting enters with its value, defaults included: a release that changes a default must not reuse
rows made under the old one (a release that adds a setting regenerates once, the safe direction).
"""
from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.io import stable_id
from rlaif.models import folder_id

# Settings that never change a row: how the work is split, how much GPU memory it may take, how many
# LoRA slots vLLM reserves; the model and adapter enter by content instead of by path.
NOT_IN_ROWS = {"worker", "data_parallel_size", "gpu_memory_utilization", "max_lora_rank", "model", "adapter"}
# 1: paths and non-default settings only; 2: vLLM seeded each prompt by its index in its shard;
# 3: each prompt by (seed, round, prompt_id) (issue 14)
FINGERPRINT_VERSION = 3


def fingerprint_inputs(cfg: RunConfig, prompts: pl.DataFrame, model_path: str, tag: str | None = None) -> dict:
    g = cfg.generate
    skip = NOT_IN_ROWS | ({"batch_size"} if g.backend == "vllm" else set())  # vLLM batches by itself
    what = {"version": FINGERPRINT_VERSION, "model_id": folder_id(model_path),
            "adapter_id": folder_id(g.adapter) if g.adapter else None, "generate": g.model_dump(exclude=skip),
            "dtype": _dtype(g.backend, g.dtype), "seed": cfg.seed, "round": cfg.round, "prompts": prompts.to_dicts(),
            "tag": tag or f"r{cfg.round}"}
    return what


def fingerprint(cfg: RunConfig, prompts: pl.DataFrame, model_path: str, tag: str | None = None) -> str:
    """What the candidates depend on; finished shards are reused only under the same fingerprint."""
    return stable_id(fingerprint_inputs(cfg, prompts, model_path, tag))


def rows_fingerprint(cfg: RunConfig, model_path: str, tag: str | None = None) -> str:
    """What a shard's rows depend on besides which prompts it holds: a shard with the same prompts, in
    the same order, under the same rows fingerprint holds the same rows (each prompt, or the
    transformers backend's shard, is seeded from (seed, round, prompt_id) of its own prompts). Which
    prompts the round has (max_prompts, the prompts file) and how they are cut (shard_size) are left
    out; the model and adapter paths enter too, as the rows name them."""
    what = fingerprint_inputs(cfg, pl.DataFrame(), model_path, tag)
    what.pop("prompts")
    what["generate"] = {k: v for k, v in what["generate"].items() if k not in ("max_prompts", "shard_size")}
    what["paths"] = [cfg.generate.model or cfg.model, cfg.generate.adapter]
    return stable_id(what)


def _dtype(backend: str, dtype: str) -> str:
    """transformers' "auto" is bf16 on CUDA and fp32 on CPU: the rows differ, so the resolved one enters."""
    if backend != "transformers" or dtype != "auto":
        return dtype
    from rlaif.models import default_dtype

    return str(default_dtype(dtype)).removeprefix("torch.")


def check_adapter(adapter: str) -> None:
    """Sample from an adapter only once it is finished. `save_model` writes adapter_config.json before
    the weights, so that file proves nothing: an adapter made by `rlaif train` (round-K/train/adapter)
    needs round K's train.manifest.json, written last; any other folder needs config and weights."""
    a = Path(adapter)
    m = re.fullmatch(r"round-(\d+)", a.parent.parent.name)
    if a.name == "adapter" and a.parent.name == "train" and m:
        manifest = a.parent / "train.manifest.json"
        if not manifest.exists():
            raise UserError(f"generate.adapter {adapter}: round {m.group(1)}'s training is not finished ({manifest} "
                            "missing); finish `rlaif train` first (rlaif run does the rounds in order)")
        return
    if not (a / "adapter_config.json").is_file():
        raise UserError(f"generate.adapter {adapter}: no adapter_config.json there")
    if not any(a.glob("adapter_model.*")):
        raise UserError(f"generate.adapter {adapter}: no adapter weights there (adapter_model.safetensors)")
