"""Judge calls/s: rlaif's vLLM judge (judge.backend=vllm) against the transformers local judge
(judge.backend=local) on the same calls, the shipped judge templates rendered over tests/assets
prompts, in one process of the vLLM venv (it has transformers too; no peft, so no adapter here).

    .venv-vllm/bin/python bench/judge_vllm.py --tiny --calls 64                   # CPU build, tiny random Llama
    .venv-vllm/bin/python bench/judge_vllm.py --calls 64 --modes pairwise score  # the demo model (SmolLM2-135M)
    python bench/judge_vllm.py --model /path/to/judge --calls 4096 --batch-size 32  # GPU

Per mode (pairwise A/B, graded pairwise, score 1-9, checklist Yes/No): seconds and calls/s of each
side's `run(calls, on_reply)`, model load not counted (the vLLM engine is built before its clock
starts, the first local batch is a warm-up outside it), and the largest |difference| of any label's
log-likelihood between the two sides, with how many verdicts agree.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from rlaif.config import JudgeConfig  # noqa: E402
from rlaif.judge.backends import Call  # noqa: E402
from rlaif.judge.templates import build_spec  # noqa: E402

MODES = {"pairwise": ("pairwise", "binary"), "graded": ("pairwise", "graded"), "score": ("score", "binary"),
         "checklist": ("checklist", "binary")}


def tiny_model(demo: Path, out: Path) -> Path:
    """tests/test_judge_vllm.py's tiny Llama: hidden 64, 2 heads of 32 (the CPU attention's smallest head size)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(demo)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def calls(mode: str, n: int) -> list[Call]:
    """n calls of one mode: the shipped template over the asset prompts and made-up answers of 20-80 words."""
    kind, verdicts = MODES[mode]
    items = ["Is the answer correct?"] if kind == "checklist" else []
    spec = build_spec(JudgeConfig(verdicts=verdicts, checklist=items))
    rows = [json.loads(line) for line in (ROOT / "tests/assets/prompts.jsonl").read_text().splitlines()]
    words = " ".join(r.get("prompt") or r["messages"][-1]["content"] for r in rows).split()
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        chat = r.get("messages") or [{"role": "user", "content": r["prompt"]}]
        a, b = (" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(20 + (i * 13 + j) % 60)) for j in (0, 31))
        extra = {"question": "Is the answer correct?"} if kind == "checklist" else {}
        msgs = spec.render(kind, chat, a, b if kind == "pairwise" else None, **extra)
        out.append(Call(key=f"{mode}{i}", prompt_id=r["prompt_id"], kind=kind, a_id="a", b_id="b", order="ab",
                        messages=tuple(msgs), labels=spec.labels(kind)))
    return out


def timed(judge, todo: list[Call]) -> tuple[float, dict]:
    got = {}
    t0 = time.perf_counter()
    judge.run(iter(todo), lambda c, r: got.__setitem__(c.key, r))
    return time.perf_counter() - t0, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="judge model folder (default: the demo model)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama built on the demo model's tokenizer")
    ap.add_argument("--calls", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="the local judge's judge.batch_size")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--no-local", action="store_true", help="time the vLLM judge only (no comparison)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    from vllm import LLM

    from rlaif.judge.backends.local import LocalJudge
    from rlaif.judge.backends.vllm_judge import VLLMJudge, engine_args
    from rlaif.models import demo_model_path

    model = args.model or str(demo_model_path())
    if args.tiny:
        model = str(tiny_model(Path(model), Path(tempfile.mkdtemp(prefix="judge-vllm-bench-"))))
    cfg = JudgeConfig(backend="vllm", batch_size=args.batch_size)
    vj = VLLMJudge(cfg, model, llm=LLM(**engine_args(model, cfg)))
    lj = None if args.no_local else LocalJudge(cfg, model)
    results = []
    for mode in args.modes:
        todo = calls(mode, args.calls)
        timed(vj, todo[:4])  # warm-up: the first forward pass pays one-off costs
        t_v, v = timed(vj, todo)
        row = {"mode": mode, "calls": len(todo), "vllm_s": round(t_v, 2),
               "vllm_calls_per_s": round(len(todo) / t_v, 2),
               "mean_input_tokens": round(sum(r.input_tokens for r in v.values()) / len(v))}
        if lj is not None:
            timed(lj, todo[:args.batch_size])
            t_l, lo = timed(lj, todo)
            diff = max(abs(v[k].top[0][1][lab] - lo[k].top[0][1][lab]) for k in v for lab in v[k].top[0][1])
            row.update(local_s=round(t_l, 2), local_calls_per_s=round(len(todo) / t_l, 2),
                       max_abs_logp_diff=float(f"{diff:.2e}"), verdicts_agree=sum(v[k].text == lo[k].text for k in v))
        results.append(row)
        print(json.dumps(row), flush=True)
    summary = {"model": "tiny" if args.tiny else model, "batch_size": args.batch_size, "results": results,
               "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count()}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":  # vLLM spawns worker processes
    main()
