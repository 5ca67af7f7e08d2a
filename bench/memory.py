"""Peak memory of one real DPO step (rlaif's train stage: TRL DPOTrainer + LoRA) against rlaif.train.memory's estimate.

    .venv/bin/python bench/memory.py        # demo model (SmolLM2-135M), 2 pairs x 512 tokens, checkpointing off, on
    .venv/bin/python bench/memory.py --model PATH --batch-size 4 --max-length 256 --ckpt off --json out.json

Each measurement is a fresh process (`--child`): imports, pairs and tokenizer first, then the baseline, then
the trainer is built (the model loads here, so the weights count) and one step runs. On CPU the peak is the
process's high-water RSS, reset at the baseline (writing 5 to /proc/self/clear_refs resets VmHWM; Linux
proc(5)); growth = peak - baseline RSS. On CUDA it is torch.cuda.max_memory_allocated (the CUDA context is
outside it, so the estimate is compared without its context term; needs trl, which the lent GPU machines lack,
so there bench/gpu_smoke.py is what runs). Every sequence is exactly max_length tokens (long pairs,
train.overlong=truncate), the case the estimate is for. MALLOC_MMAP_THRESHOLD_=131072 in the environment makes
CPU RSS follow live tensors (glibc then returns freed buffers); rlaif/train/memory.py has both sets of figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss(field: str = "VmRSS") -> int:
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith(field + ":"):
            return int(ln.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def overrides(a: dict) -> list[str]:
    return [f"run_dir={a['run_dir']}", f"model={a['model']}", f"prompts={ROOT / 'tests/assets/prompts.jsonl'}",
            "train.max_steps=1", f"train.batch_size={a['batch_size']}", f"train.max_length={a['max_length']}",
            "train.overlong=truncate", f"train.gradient_checkpointing={str(a['ckpt']).lower()}"]


def child(a: dict) -> dict:
    """One step in this process; returns baseline and peak bytes."""
    if a["device"] == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import polars as pl
    import torch
    from transformers import AutoTokenizer

    from rlaif.config import load_config
    from rlaif.io import PAIRS_SCHEMA, write_parquet
    from rlaif.train import stage
    from rlaif.train.data import load_pairs, to_dataset

    n = 2 * a["batch_size"]
    words = "the quick brown fox jumps over the lazy dog while counting sheep and numbers"
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"Tell a long story number {i}."}],
             "chosen": f"{i} " + words * 200, "rejected": f"no {i} " + words[::-1] * 200, "chosen_id": f"c{i}",
             "rejected_id": f"r{i}", "margin": 1.0, "consistent": True, "chosen_tokens": 2000, "rejected_tokens": 2000,
             "round": 0} for i in range(n)]
    write_parquet(Path(a["run_dir"]) / "round-0" / "pairs.parquet", pl.DataFrame(rows), PAIRS_SCHEMA)
    cfg = load_config(None, overrides(a))
    pairs, _ = load_pairs(cfg)
    tok = AutoTokenizer.from_pretrained(a["model"])
    dataset, _ = to_dataset(pairs, tok, cfg)
    import peft, trl  # noqa: E401,F401  (imported before the baseline: their import is not the step's memory)

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
        base = rss()
    trainer = stage.build_trainer(cfg, a["model"], dataset, tok)
    trainer.train()
    if cuda:
        return {"device": torch.cuda.get_device_name(0), "baseline": base, "peak": torch.cuda.max_memory_allocated(),
                "reserved": torch.cuda.max_memory_reserved()}
    return {"device": "cpu", "baseline": base, "peak": rss("VmHWM")}


def measure(model: str, batch_size: int, max_length: int, ckpt: bool, device: str, run_dir: str) -> dict:
    """Run `child` in a fresh process; return its figures and rlaif's estimate for the same config."""
    from rlaif.config import load_config
    from rlaif.train import memory

    a = {"model": model, "batch_size": batch_size, "max_length": max_length, "ckpt": ckpt, "device": device,
         "run_dir": run_dir}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(a)], capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"measurement failed (rc {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    got = json.loads(line[len("RESULT "):])
    cfg = load_config(None, overrides(a))
    s = memory.settings(cfg, cuda=device == "cuda")
    logits = "fused" if memory.trl_fused_head() else "full"
    terms = memory.train_memory(memory.read_dims(model), s, logits)
    growth = got["peak"] - got["baseline"]
    return {**a, **got, "growth": growth, "estimate": memory.peak(terms), "ratio": growth / memory.peak(terms),
            "terms": {k: v for k, v in terms.items() if k != "logits_model"}, "logits_model": logits}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--ckpt", choices=["off", "on", "both"], default="both")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    import tempfile

    from rlaif.models import resolve_model

    model = resolve_model(args.model)
    out = []
    for ckpt in {"off": [False], "on": [True], "both": [False, True]}[args.ckpt]:
        with tempfile.TemporaryDirectory(prefix="rlaif-bench-memory-") as d:
            r = measure(model, args.batch_size, args.max_length, ckpt, args.device, d)
        out.append(r)
        t, gib = r["terms"], lambda x: f"{x / 2**30:.2f}"  # noqa: E731
        print(f"{Path(model).name} on {r['device']}, {args.batch_size} pairs x {args.max_length} tokens, gradient "
              f"checkpointing {'on' if ckpt else 'off'}: measured {gib(r['growth'])} GiB over a baseline of "
              f"{gib(r['baseline'])} GiB (peak {gib(r['peak'])} GiB); estimate {gib(r['estimate'])} GiB (weights "
              f"{gib(t['weights'])}, LoRA+Adam {gib(t['lora_and_optimizer'])}, activations {gib(t['activations'])}, "
              f"log-prob head {gib(t['logprob_head'])}); measured/estimate {r['ratio']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
