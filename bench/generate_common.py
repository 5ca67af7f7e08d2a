"""What bench/generate.py and bench/generate_vllm.py share: the arguments, the prompts, rlaif's side
(the real `rlaif generate` stage in a fresh run_dir), interleaved repetitions and the table. Neither
torch nor vLLM is imported when this file is: each mode imports its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: the stage's bar would garble our table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEMPERATURE, TOP_P = 0.8, 0.95  # the config defaults
# generate.top_k defaults to 0 (off, as in vLLM); both sides pass it explicitly, since an unset
# top_k is filled with transformers' default of 50 (which is ~20% faster on this CPU: top-p then
# sorts 50 tokens instead of the whole vocabulary).
TOP_K = 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--model", default="demo", help="model folder (default: the offline demo model)")
    p.add_argument("--prompts", default=str(ROOT / "tests/assets/prompts.jsonl"))
    p.add_argument("--prompts-count", type=int, help="instead of --prompts: this many prompts made from the "
                   "shipped quickstart prompts (each with a varied answer style past the first 40)")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=None, help="default: all prompts in one shard")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--enforce-eager", action="store_true", help="vllm: no CUDA graphs / compile (the CPU build)")
    p.add_argument("--max-model-len", type=int, default=1024, help="vllm: engine context length")
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args(argv)
    from rlaif.models import resolve_model

    args.model = resolve_model(args.model)  # "demo" -> its cached folder, for the bare side too
    if args.prompts_count:
        args.prompts = make_prompts(args.prompts_count)
    return args


STYLES = ["Answer in one sentence.", "Answer as a short bulleted list.", "Explain it to a child.",
          "Be as brief as you can."]


def make_prompts(count: int) -> str:
    """`count` distinct prompts: the quickstart and held-out prompts, then the same with a style asked for."""
    from rlaif.prompts import read_prompts

    base = [m[-1]["content"] for f in ("quickstart.jsonl", "quickstart-heldout.jsonl")
            for m in read_prompts(ROOT / "configs/prompts" / f)["messages"].to_list()]
    rows = [{"prompt_id": f"b{i:04d}", "prompt": base[i % len(base)] + (
        "" if i < len(base) else " " + STYLES[(i // len(base) - 1) % len(STYLES)])} for i in range(count)]
    path = Path(tempfile.mkdtemp(prefix="rlaif-bench-prompts-")) / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def load_chats(args) -> list[list[dict]]:
    from rlaif.prompts import read_prompts  # the stage's own reader: both sides see identical chats

    return read_prompts(args.prompts)["messages"].to_list()


def rlaif_run(args, rep: int, backend: str, shard: int | None = None, extra: list[str] = ()) -> dict:
    """One real `rlaif generate` in a fresh run_dir; figures from its manifest."""
    from rlaif.config import load_config
    from rlaif.generate.stage import MANIFEST, run

    shard = shard or args.shard_size or len(load_chats(args))
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-") as d:
        cfg = load_config(None, [f"run_dir={d}", f"model={args.model}", f"prompts={args.prompts}", f"seed={rep}",
                                 f"generate.backend={backend}", f"generate.n={args.n}",
                                 f"generate.max_tokens={args.max_tokens}", f"generate.temperature={TEMPERATURE}",
                                 f"generate.top_p={TOP_P}", f"generate.top_k={TOP_K}",
                                 f"generate.batch_size={args.batch_size}",
                                 f"generate.shard_size={shard}", f"generate.max_model_len={args.max_model_len}",
                                 *extra])
        run(cfg)
        m = json.loads((cfg.round_dir() / MANIFEST).read_text())
    t = m["timing"]
    # wall_s - model_load_s adds the per-shard row building + parquet writes that generate_s leaves out
    return {"tokens": m["tokens"]["completion"], "seconds": t["generate_s"],
            "seconds_with_writes": round(t["wall_s"] - t["model_load_s"], 3)}


def interleave(sides: dict, reps: int, cpu: bool = True) -> dict[str, list[dict]]:
    results = {name: [] for name in sides}
    names = list(sides)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotated: no side always runs first
            fn = sides[name]
            w0, c0 = time.perf_counter(), time.process_time()
            r = fn(rep)
            r["tok_s"] = round(r["tokens"] / r["seconds"], 2)
            if cpu:  # this process's CPU s per wall s: well under its thread count = other work took the cores
                r["cpu_per_wall"] = round((time.process_time() - c0) / (time.perf_counter() - w0), 2)
            r["load_1min"] = round(os.getloadavg()[0], 2)  # the machine's: other engineers' jobs show here
            results[name].append(r)
            print(f"[rep {rep}] {name}: {r['tokens']} tokens in {r['seconds']:.2f} s = {r['tok_s']} tok/s "
                  f"(cpu/wall {r.get('cpu_per_wall', '-')}, load {r['load_1min']})", flush=True)
    for name in [n for n, rs in results.items() if "seconds_with_writes" in rs[0]]:  # a derived row, same runs
        results[f"{name} (incl. shard writes)"] = [
            {"tokens": r["tokens"], "seconds": r["seconds_with_writes"], "cpu_per_wall": r.get("cpu_per_wall", "-"),
             "load_1min": r["load_1min"],
             "tok_s": round(r["tokens"] / r["seconds_with_writes"], 2)} for r in results[name]]
    return results


def report(args, results: dict, baseline: str) -> dict:
    """Print the markdown table; return (and maybe write) everything as JSON."""
    import torch  # both modes' environments have it (vLLM's too); only the versions are read here
    import transformers

    med = {name: statistics.median(r["tok_s"] for r in rs) for name, rs in results.items()}
    ratio = {n: round(v / med[baseline], 3) for n, v in med.items()}
    print("\n| side | median tok/s | vs bare | per-rep tok/s | per-rep tokens | per-rep cpu/wall | per-rep load |\n"
          "|---|---:|---:|---|---|---|---|")
    for name, rs in results.items():
        per = {k: ", ".join(str(r.get(k, "-")) for r in rs) for k in ("tok_s", "tokens", "cpu_per_wall", "load_1min")}
        print(f"| {name} | {med[name]:.1f} | {ratio[name]:.3f} | {per['tok_s']} | {per['tokens']} | "
              f"{per['cpu_per_wall']} | {per['load_1min']} |")
    out = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "threads": torch.get_num_threads()},
           "results": results, "baseline": baseline, "median_tok_s": med, "ratio_vs_baseline": ratio}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out
