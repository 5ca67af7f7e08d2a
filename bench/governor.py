"""The rate governor (judge.rpm / judge.tpm) against the project's fake OpenAI server, counted by
the server: every chat request's arrival time (and token estimate) comes from its /_stats.

    .venv/bin/python bench/governor.py [--period 10] [--latency 0.25] [--concurrency 64] [--out r.json]

The period is scaled (RLAIF_RATE_PERIOD_S, test-only) so a run covers several windows in seconds;
limits are per period. Runs, each through the real `rlaif judge` stage (all_pairs, N=4):
  1. unthrottled: what the client would send without limits;
  2. rpm limit; 3. tpm limit: the largest count (tokens) the server saw in any window of one period;
  4. the server enforcing a lower limit than configured (429 + Retry-After), with and without the
     governor: the effective rate the governor fell to, and the 429s each run drew.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
os.environ.setdefault("TQDM_DISABLE", "1")

from judge import judge_once, make_round  # noqa: E402
from servers import FakeJudgeServer, max_in_window  # noqa: E402


def one(srv, name: str, calls: int, period: float, *overrides: str, rate_limit: dict | None = None) -> dict:
    srv.control(faults=[], storm=None, rate_limit=rate_limit, reset=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_round(Path(tmp), prompts=-(-calls // 12), n=4)  # all_pairs at N=4: 12 calls a prompt
        t0 = time.monotonic()
        r = judge_once(srv, Path(tmp), "judge.strategy=all_pairs", *overrides)
        wall = time.monotonic() - t0
    st = srv.stats()
    times, toks = st["request_times"], st["request_tokens"]
    span = max(times) - min(times)
    gov = r.get("rate_governor") or {}
    return {"run": name, "calls": r["calls_made_this_run"], "pending": r["pending_calls"],
            "requests": st["requests"], "http_429": st["faults"].get("rate_limit", 0), "wall_s": round(wall, 1),
            "max_requests_per_window": max_in_window(times, period),
            "max_tokens_per_window": max_in_window(times, period, toks),
            "requests_per_window_achieved": round(len(times) / span * period, 1) if span else None,
            "tokens_per_call": round(sum(toks) / len(toks)), "governor": gov}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--period", type=float, default=10.0, help="seconds standing in for one minute")
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ["RLAIF_BENCH_KEY"] = "sk-bench"
    os.environ["RLAIF_RATE_PERIOD_S"] = str(args.period)
    p, c = args.period, f"judge.concurrency={args.concurrency}"
    rpm, server_rpm = 300, 150  # per period: 30 and 15 requests/s at period 10
    retry = ("judge.max_retries=100", "judge.max_backoff_s=1")
    with FakeJudgeServer(api_key="sk-bench", policy="hash", latency=args.latency) as srv:
        runs = [one(srv, "unthrottled", 600, p, c)]
        runs.append(one(srv, f"rpm={rpm}", 900, p, c, f"judge.rpm={rpm}"))
        tpm = 300 * runs[0]["tokens_per_call"]  # also ~300 calls a period
        runs.append(one(srv, f"tpm={tpm}", 900, p, c, f"judge.tpm={tpm}"))
        limit = {"requests": server_rpm, "window_s": p}
        runs.append(one(srv, f"server allows {server_rpm}, no governor", 450, p, c, *retry, rate_limit=limit))
        runs.append(one(srv, f"server allows {server_rpm}, rpm={rpm}", 450, p, c, f"judge.rpm={rpm}", *retry,
                        rate_limit=limit))
    print(f"period {p:g} s (stands for 60 s), latency {args.latency:g} s, concurrency {args.concurrency}\n")
    print("| run | calls | requests (429s) | max requests in any window | max tokens in any window "
          "| achieved requests/window | lowest effective limit | wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        g = r["governor"]
        low = g.get("rpm_effective_min") or g.get("tpm_effective_min")
        print(f"| {r['run']} | {r['calls']} | {r['requests']} ({r['http_429']}) | {r['max_requests_per_window']} "
              f"| {r['max_tokens_per_window']} | {r['requests_per_window_achieved']} | {low if g else '-'} "
              f"| {r['wall_s']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
