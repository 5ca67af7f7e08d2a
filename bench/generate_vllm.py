"""GPU mode of bench/generate.py: rlaif's vllm backend vs a bare `vllm.LLM.generate` vs rlaif's
transformers backend, on the same prompts and sampling settings.

    .venv/bin/python bench/generate.py --backend vllm --model /path/to/model --n 8 --max-tokens 256 --out gpu.json

Every side x repetition runs in its own child process: two vLLM engines in one process fight over
GPU memory, and a dropped `LLM` does not reliably hand its memory back. Each child loads its model
(untimed) and reports tokens and seconds of generation only, counted as in bench/generate.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import generate as bench  # sibling file: shared args, rlaif runner, interleaving and table

SIDES = ["bare LLM.generate", "rlaif generate (vllm)", "rlaif generate (transformers)"]


def bare_vllm(args, rep: int) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(args.model)
    prompts = [{"prompt_token_ids": tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                            return_dict=True)["input_ids"]}
               for c in bench.load_chats(args)]
    # rlaif's own engine settings (dtype auto, prefix caching, 0.85 of memory); one SamplingParams for
    # all prompts, the plain way: rlaif's per-request seeds are part of what is measured
    llm = LLM(model=args.model, seed=rep, dtype="auto", enable_prefix_caching=True, gpu_memory_utilization=0.85)
    params = SamplingParams(n=args.n, temperature=bench.TEMPERATURE, top_p=bench.TOP_P,
                            top_k=bench.TOP_K or -1, max_tokens=args.max_tokens)  # -1: off, as rlaif maps 0
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    # token_ids holds the stop token when a sample ends on EOS: the same count as rlaif's num_tokens
    return {"tokens": sum(len(o.token_ids) for out in outs for o in out.outputs), "seconds": round(seconds, 3)}


def worker(args) -> None:
    """Child: one side, one repetition; the result is the last stdout line."""
    if args.worker == SIDES[0]:
        r = bare_vllm(args, args.rep)
    else:
        r = bench.rlaif_run(args, args.rep, "vllm" if "vllm" in args.worker else "transformers")
    print("RESULT " + json.dumps(r), flush=True)


def child(args, side: str, rep: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).with_name("generate.py")), "--backend", "vllm", "--worker", side,
           "--rep", str(rep), "--model", args.model, "--prompts", args.prompts, "--n", str(args.n),
           "--max-tokens", str(args.max_tokens), "--batch-size", str(args.batch_size)]
    if args.shard_size:
        cmd += ["--shard-size", str(args.shard_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{side} rep {rep} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(args) -> int:
    if args.worker:
        worker(args)
        return 0
    sides = {s: (lambda rep, s=s: child(args, s, rep)) for s in SIDES}
    out = bench.report(args, bench.interleave(sides, args.reps, cpu=False), SIDES[0])
    print(f"\nrlaif (vllm) / bare = {out['ratio_vs_baseline'][SIDES[1]]:.3f} (target >= 0.9)")
    return 0
