"""Which weights a round's policy is: a base folder plus a LoRA adapter.

reference=sft: every round's adapter sits on the SFT model (round k starts from round k-1's
adapter weights; the reference is the SFT model, i.e. the adapter disabled).
reference=previous: round k-1's policy is merged into a full model, round k trains a fresh
adapter on it, and that merged model (adapter disabled) is the reference.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rlaif.config import RunConfig
from rlaif.models import resolve_model


def adapter_dir(cfg: RunConfig, k: int) -> Path:
    return cfg.round_dir(k) / "train" / "adapter"


def policy_base(cfg: RunConfig, k: int) -> str:
    """The base model folder under round k's adapter (and round k's DPO reference)."""
    if cfg.train.reference == "sft" or k == 0:
        return resolve_model(cfg.model)
    return str(ensure_merged(cfg, k - 1))


def sampling_policy(cfg: RunConfig) -> RunConfig:
    """The config the generate stage samples with: round k > 0 samples from round k-1's policy (its
    base plus its adapter) unless generate.adapter names one, as the stage's fingerprint says
    (rlaif/fingerprint.py). It is resolved here, in the stage, and never passed in as config keys:
    keys set for round k would enter the fingerprints this process computes for earlier rounds
    (a round 1 generate's "round 0 train"), which then differ from the loop's, and a finished run
    would read as stale."""
    k, g = cfg.round, cfg.generate
    adapter = adapter_dir(cfg, k - 1) if k > 0 else None
    if adapter is None or g.adapter or not adapter.is_dir():
        return cfg
    return cfg.model_copy(update={"generate": g.model_copy(update={"model": policy_base(cfg, k - 1),
                                                                   "adapter": str(adapter.resolve())})})


def ensure_merged(cfg: RunConfig, k: int) -> Path:
    """round-k/train/merged: round k's base + adapter as one model (built once, atomically)."""
    out = cfg.round_dir(k) / "train" / "merged"
    if (out / "config.json").exists():
        return out
    merge_adapter(policy_base(cfg, k), adapter_dir(cfg, k), out)
    return out


def merge_adapter(base: str, adapter: Path, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.models import default_dtype

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=default_dtype()), str(adapter))
    merged = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".merged."))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
