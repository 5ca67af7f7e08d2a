"""Judge throughput against the project's fake OpenAI server with a fixed reply latency.

    .venv/bin/python bench/judge.py [--latency 0.2] [--concurrency 1 8 32 128] [--out result.json]

Measures, in one run: (1) judged calls/s through the real `rlaif judge` stage (AsyncOpenAI,
tenacity, ledger, progress bar) at each concurrency, as a share of the bound concurrency/latency;
(2) ledger write cost per call; (3) calls per prompt of each ranking strategy at N = 4 and 8.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TQDM_DISABLE", "1")

import polars as pl  # noqa: E402

from rlaif.config import load_config  # noqa: E402
from rlaif.io import CANDIDATES_SCHEMA, write_json, write_parquet  # noqa: E402
from servers import FakeJudgeServer  # noqa: E402


def make_round(run_dir: Path, prompts: int, n: int) -> None:
    rows = [{"prompt_id": f"p{i}", "candidate_id": f"p{i}/{j}", "round": 0,
             "messages": [{"role": "user", "content": f"Question {i}?"}],
             "response": f"Answer {j} to question {i}. " * (j + 1), "num_tokens": 8 * (j + 1),
             "finish_reason": "stop", "model": "bench", "adapter": None, "seed": 0}
            for i in range(prompts) for j in range(n)]
    rdir = run_dir / "round-0"
    write_parquet(rdir / "candidates" / "part-00000.parquet", pl.DataFrame(rows, schema=CANDIDATES_SCHEMA))
    write_json(rdir / "candidates.manifest.json", {"stage": "generate"})


def judge_once(srv, run_dir: Path, *overrides: str) -> dict:
    from rlaif.judge import stage

    cfg = load_config(None, [f"run_dir={run_dir}", "prompts=unused.jsonl", "model=policy", "judge.backend=openai",
                             f"judge.base_url={srv.base_url}", "judge.model=fake-judge",
                             "judge.api_key_env=RLAIF_BENCH_KEY", "judge.min_consistency=0", *overrides])
    stage.run(cfg)
    return json.loads((run_dir / "round-0" / "judge-report.json").read_text())


def throughput(srv, latency: float, concurrencies: list[int]) -> list[dict]:
    srv.control(latency_s=latency)
    out = []
    for c in concurrencies:
        calls = max(48, 6 * c)  # enough waves that start-up and the last wave matter little
        with tempfile.TemporaryDirectory() as tmp:
            make_round(Path(tmp), prompts=calls // 12 + 1, n=4)  # all_pairs at N=4: 12 calls a prompt
            r = judge_once(srv, Path(tmp), "judge.strategy=all_pairs", f"judge.concurrency={c}")
        bound = c / latency
        out.append({"concurrency": c, "calls": r["calls_made_this_run"], "calls_per_s": r["calls_per_s"],
                    "bound_calls_per_s": bound, "ratio": r["calls_per_s"] / bound})
    srv.control(latency_s=0.0)
    return out


def ledger_cost(rows: int = 2000) -> float:
    from rlaif.judge.ledger import Ledger

    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(Path(tmp) / "l.sqlite")
        t0 = time.perf_counter()
        for i in range(rows):
            led.record({"key": f"k{i}", "status": "done", "prompt_id": "p", "kind": "pairwise", "a_id": "a",
                        "b_id": "b", "order": "ab", "verdict": "a", "raw": "A", "input_tokens": 300,
                        "output_tokens": 1, "cost_usd": 0.0, "attempts": 1, "request": {"kind": "pairwise"}})
        dt = time.perf_counter() - t0
        led.close()
    return dt / rows * 1e6


def calls_per_prompt(srv) -> list[dict]:
    out = []
    for n in (4, 8):
        for strategy in ("best_vs_worst", "all_pairs"):
            with tempfile.TemporaryDirectory() as tmp:
                make_round(Path(tmp), prompts=4, n=n)
                r = judge_once(srv, Path(tmp), f"judge.strategy={strategy}")
            out.append({"n": n, "strategy": strategy, "calls_per_prompt": r["calls_per_prompt"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ["RLAIF_BENCH_KEY"] = "sk-bench"
    with FakeJudgeServer(api_key="sk-bench", policy="hash") as srv:
        res = {"throughput": throughput(srv, args.latency, args.concurrency), "ledger_us_per_call": ledger_cost(),
               "calls_per_prompt": calls_per_prompt(srv)}
    print("| concurrency | calls | calls/s | bound (c/latency) | ratio |\n|---|---|---|---|---|")
    for t in res["throughput"]:
        print(f"| {t['concurrency']} | {t['calls']} | {t['calls_per_s']:.1f} | {t['bound_calls_per_s']:.1f} | {t['ratio']:.2f} |")
    print(f"\nledger: {res['ledger_us_per_call']:.0f} us per recorded call (one SQLite transaction, WAL)\n")
    print("| N | strategy | calls per prompt |\n|---|---|---|")
    for c in res["calls_per_prompt"]:
        print(f"| {c['n']} | {c['strategy']} | {c['calls_per_prompt']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
