"""Plan and fingerprint: what a round's candidates depend on, and which prompts go in which shard.

The plan is a pure function of the fingerprint's inputs (and the tokenizer): prompts that fit the
context, longest first, cut into shards of shard_size. It is saved as candidates/plan.json beside
the shards and is the only thing the manifest reads about them, so a plan that differs from the
saved one under finished shards is refused rather than mixed.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.generate.identity import fingerprint, rows_fingerprint
from rlaif.io import stable_id, write_json

MANIFEST = "candidates.manifest.json"


def tokenizer(model: str):
    from transformers import AutoConfig, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
        context = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
    except (OSError, ValueError) as e:
        raise UserError(f"model {model}: cannot load tokenizer/config: {str(e).splitlines()[0]}") from None
    if not tok.chat_template:
        raise UserError(f"model {model}: tokenizer has no chat template; rlaif needs an instruct/chat model")
    return tok, context


def render(tok, messages: list[dict]) -> list[int]:
    """Prompt token ids exactly as the chat template gives them (BOS included once, if the template has it)."""
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def prompt_seed(cfg: RunConfig, prompt_id: str) -> int:
    """A prompt's seed: the same whatever the shard size, the worker split or the prompts beside it."""
    return int(stable_id([cfg.seed, cfg.round, prompt_id]), 16) % 2**31


def done(rdir: Path, fp: str) -> bool:
    """True if the manifest is there and was written under this fingerprint; refused if another."""
    path = rdir / MANIFEST
    if not path.exists():
        return False
    try:
        old = json.loads(path.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{path}: unreadable; delete it and rerun (finished shards are kept)") from None
    if old != fp:  # the model and adapter count by content: one retrained in place differs too
        raise UserError(f"{path}: these candidates came from a different model/adapter/prompts/"
                        "sampling config; use another run_dir or round, or delete the folder")
    return True


def make_plan(cfg: RunConfig, prompts: pl.DataFrame, model: str, fp: str,
              tag: str | None = None) -> tuple[dict, dict[str, list[int]]]:
    """(the plan as saved, each kept prompt's token ids)."""
    g = cfg.generate
    tok, context = tokenizer(model)
    from rlaif.models import use_chat_template

    use_chat_template(tok, cfg)
    limit = (g.max_model_len or context or 10**9) - g.max_tokens  # room for a whole response
    keep, skipped = [], []
    for pid, chat in zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()):
        toks = render(tok, chat)
        (keep if len(toks) <= limit else skipped).append((pid, toks))
    keep.sort(key=lambda x: (-len(x[1]), x[0]))  # longest first: OOM shows up at once, padding stays low
    shards = [keep[i:i + g.shard_size] for i in range(0, len(keep), g.shard_size)]
    chats = dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()))
    plan = {"fingerprint": fp, "shards": [[pid for pid, _ in s] for s in shards], "prompt_limit_tokens": limit,
            "skipped_too_long": [pid for pid, _ in skipped],
            # what lets a rerun under a changed prompts file keep the shards whose rows cannot change
            "rows_fingerprint": rows_fingerprint(cfg, model, tag),
            "shard_ids": [stable_id([[pid, chats[pid]] for pid, _ in s]) for s in shards]}
    return plan, dict(keep)


CORE = ("fingerprint", "shards", "prompt_limit_tokens", "skipped_too_long")  # what decides the rows of a plan


def save_or_check(out: Path, plan: dict) -> None:
    """Save the plan, or check the saved one. Workers on several machines may race here: each writes
    the same content atomically, so the file is whole and the same whoever wins."""
    path = out / "plan.json"
    if path.exists():
        shards = list(out.glob("part-*.parquet"))
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            # It is written atomically, so this is damage from outside; it alone says which config made
            # the shards beside it, so they cannot be reused (issue 11, item 8).
            if shards:
                raise UserError(f"{path}: unreadable ({str(e).splitlines()[0][:80]}), so nothing says which config "
                                f"made the {len(shards)} shard(s) beside it; delete {out} and rerun") from None
            print(f"generate: {path} was unreadable and no shard depends on it: written again")
            old = {}
        if old == plan:
            return
        if shards and all(old.get(k) == plan[k] for k in CORE):  # a plan saved before rows_fingerprint existed
            write_json(path, plan)
            return
        if shards:
            if old.get("fingerprint") != plan["fingerprint"]:
                raise UserError(f"{out}: holds shards from a different model/adapter/prompts/sampling config; "
                                "delete the folder or use another run_dir")
            raise UserError(f"{path}: same config but a different cut into shards than this machine computes "
                            "(another tokenizer/transformers version?); workers sharing a run folder need "
                            "the same software")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def load(out: Path) -> dict:
    return json.loads((out / "plan.json").read_text())


def reuse_shards(rdir: Path, out: Path, plan: dict) -> int:
    """Link into `out` the shards of this plan that a stale run of this round (rdir/stale/generate-*,
    newest first) already holds: the same prompts in the same order under the same rows fingerprint,
    so the same rows an uninterrupted run would sample. Returns how many were reused."""
    import os

    def shard_path(folder: Path, i: int) -> Path:  # rlaif.generate.sample.shard_path (which imports this file)
        return folder / f"part-{i:05d}.parquet"

    reused = 0
    for old_dir in sorted(rdir.glob("stale/generate-*/candidates"), reverse=True):
        try:
            old = json.loads((old_dir / "plan.json").read_text())
        except (OSError, ValueError):
            continue
        if old.get("rows_fingerprint") != plan["rows_fingerprint"]:
            continue
        where = {sid: j for j, sid in enumerate(old.get("shard_ids", []))}
        for i, sid in enumerate(plan["shard_ids"]):
            src, dst = shard_path(old_dir, where.get(sid, -1)), shard_path(out, i)
            if sid in where and src.exists() and not dst.exists():
                try:
                    os.link(src, dst)  # atomic: the shard is whole or absent
                except FileExistsError:
                    continue  # another worker linked it first
                reused += 1
    return reused


__all__ = ["MANIFEST", "done", "fingerprint", "load", "make_plan", "prompt_seed", "render", "save_or_check",
           "tokenizer"]
