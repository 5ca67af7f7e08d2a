"""Judge throughput against the project's fake OpenAI server with a fixed reply latency.

    .venv/bin/python bench/judge.py [--latency 0.2] [--concurrency 1 8 32 128] [--out result.json]

Measures, in one run: (1) judged calls/s through the real `rlaif judge` stage (AsyncOpenAI,
tenacity, ledger, progress bar) at each concurrency, as a share of the bound concurrency/latency;
(2) ledger write cost per call; (3) calls per prompt of each ranking strategy at N = 4 and 8.

    .venv/bin/python bench/judge.py --compare 4000 40000 [--processes 1 2] [--distilabel-python PY]
    .venv/bin/python bench/judge.py --scale 100000 [--response-chars 2000]   (prompts, N=4, judge.mode=score)

(issue 22, item 5) --compare: score calls at zero latency, 64 in flight, each client in its own
process: a bare AsyncOpenAI loop, `rlaif judge` (plan, ledger, report and filter included) at each
judge.processes, and distilabel's TextGeneration on OpenAILLM when --distilabel-python names a
python that has it (python3 -m venv /tmp/distil-venv && /tmp/distil-venv/bin/pip install
distilabel==1.5.3 requests: its OpenAI module imports requests without depending on it). Each: calls/s, client CPU ms per call (the client's processes, not the
server's), peak RSS. --scale: one `rlaif judge` of PROMPTS x 4 candidates (in 64-prompt shards, as
generate writes them), wall time, CPU per call, and wall time and peak RSS per step (read, judge =
plan + send + writing judgments.parquet, report, filter), RSS sampled every 20 ms: run it at two
scales to see what grows with the number of calls (BENCHMARKS.md, "Judge stage memory, streamed").
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


def make_round(run_dir: Path, prompts: int, n: int, shard: int = 64, chars: int = 0) -> None:
    """PROMPTS x n candidates in shards of `shard` prompts, as `rlaif generate` writes them
    (generate.shard_size); chars > 0: each response padded to about that many characters."""
    rdir = run_dir / "round-0"
    pad = lambda i, j: " ".join(f"w{(i * 31 + j * 7 + k) % 997}" for k in range(chars // 5))  # noqa: E731
    for k, lo in enumerate(range(0, prompts, shard)):
        rows = [{"prompt_id": f"p{i}", "candidate_id": f"p{i}/{j}", "round": 0,
                 "messages": [{"role": "user", "content": f"Question {i}?"}],
                 "response": f"Answer {j} to question {i}. " * (j + 1) + pad(i, j), "num_tokens": 8 * (j + 1),
                 "finish_reason": "stop", "model": "bench", "adapter": None, "seed": 0}
                for i in range(lo, min(lo + shard, prompts)) for j in range(n)]
        write_parquet(rdir / "candidates" / f"part-{k:05d}.parquet", pl.DataFrame(rows, schema=CANDIDATES_SCHEMA))
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


def child(kind: str, url: str, calls: int, run_dir: str, processes: int, conc: int) -> dict:
    """One measured client, run in its own process (python bench/judge.py --child ...)."""
    import resource
    import threading

    peaks, phase, starts = {}, ["read"], []  # starts: (the step that ended, when) as each next step begins

    def sample() -> None:  # peak RSS per step: VmRSS every 20 ms, charged to the step running
        while True:
            rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
            peaks[phase[0]] = max(peaks.get(phase[0], 0), rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    t0, r0 = time.perf_counter(), [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    rep = None
    if kind == "bare":
        bare_loop(url, calls, conc)
    elif kind == "rlaif":
        from rlaif.judge import stage
        from rlaif.judge.pairs import filter as pfilter
        from rlaif.judge.trust import audit

        def step(name, fn):
            def wrapped(*a, **k):
                now = time.perf_counter()
                starts.append((phase[0], now))
                phase[0] = name
                return fn(*a, **k)
            return wrapped
        stage.rank_round = step("judge", stage.rank_round)
        stage.build_report = step("report", stage.build_report)
        pfilter.run = step("filter", pfilter.run)
        rep = judge_once(argparse.Namespace(base_url=url), Path(run_dir), "judge.mode=score",
                         f"judge.concurrency={conc}", f"judge.processes={processes}")
    wall = time.perf_counter() - t0
    ends = starts + [(phase[0], t0 + wall)]
    seconds = {name: round(end - (ends[i - 1][1] if i else t0), 2) for i, (name, end) in enumerate(ends)}
    r1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(r0, r1))
    return {"client": kind if kind != "rlaif" else f"rlaif (processes={processes})", "calls": calls,
            "wall_s": round(wall, 2), "calls_per_s": round(calls / wall, 1), "cpu_ms_per_call": round(cpu / calls * 1e3, 3),
            "peak_rss_mb": round(max(r1[0].ru_maxrss, r1[1].ru_maxrss) / 1024, 1),
            "peak_rss_mb_by_step": {k: round(v, 1) for k, v in peaks.items()},
            "wall_s_by_step": seconds if kind == "rlaif" else None,
            "send_calls_per_s": rep["calls_per_s"] if kind == "rlaif" else None}


def score_prompt() -> list[dict]:
    """rlaif's score messages with QQQ (the question) and RRR (the response) to fill."""
    from rlaif.judge import templates as T

    spec = T.build_spec(load_config(None, ["prompts=x.jsonl", "model=p", "judge.mode=score"]).judge)
    return spec.render("score", [{"role": "user", "content": "QQQ"}], "RRR", None, None)


def bare_loop(url: str, calls: int, conc: int) -> None:
    """The floor: AsyncOpenAI with `conc` workers sending the same score requests rlaif sends."""
    import asyncio

    from openai import AsyncOpenAI

    SCORE = score_prompt()

    async def go() -> None:
        client = AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0)
        it = iter(range(calls))

        async def worker() -> None:
            for i in it:  # the prompt rlaif's score template renders for make_round's candidates
                text = f"Answer {i % 4} to question {i // 4}. " * (i % 4 + 1)
                msgs = [SCORE[0], {"role": "user", "content": SCORE[1]["content"].replace("QQQ", f"Question {i // 4}?")
                                   .replace("RRR", text)}]
                r = await client.chat.completions.create(model="fake-judge", messages=msgs, max_tokens=8, temperature=0,
                                                         logprobs=True, top_logprobs=10)
                r.choices[0].message.content  # read as a client would
        await asyncio.gather(*[worker() for _ in range(conc)])
        await client.close()
    asyncio.run(go())


DISTILABEL = """
import sys, time
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration
url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
user = sys.argv[4]  # rlaif's rendered score prompt, QQQ and RRR to fill (the fake server reads its fences)
data = [{"instruction": user.replace("QQQ", f"Question {i // 4}?").replace("RRR", f"Answer {i % 4} to question {i // 4}. "
         * (i % 4 + 1))} for i in range(n)]
with Pipeline(name="bench-judge") as p:
    load = LoadDataFromDicts(data=data, batch_size=conc)
    gen = TextGeneration(llm=OpenAILLM(model="fake-judge", base_url=url, api_key="sk-bench", max_retries=0,
                         generation_kwargs={"max_new_tokens": 8, "temperature": 0.0}), input_batch_size=conc)
    load >> gen
if __name__ == "__main__":
    ds = p.run(use_cache=False)
    print("rows", len(ds["default"]["train"]))
"""


def distilabel_run(py: str, url: str, calls: int, conc: int) -> dict:
    """distilabel in its own venv: wall and CPU of its whole process tree (it starts several)."""
    import resource
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "d.py"
        script.write_text(DISTILABEL)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([py, str(script), url, str(calls), str(conc), score_prompt()[1]["content"]],
                             capture_output=True, text=True, cwd=tmp, env={**os.environ, "HOME": tmp})
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode or f"rows {calls}" not in out.stdout:
        raise SystemExit(f"distilabel run failed:\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"client": "distilabel 1.5.3", "calls": calls, "wall_s": round(wall, 2), "calls_per_s": round(calls / wall, 1),
            "cpu_ms_per_call": round(cpu / calls * 1e3, 3), "peak_rss_mb": round(after.ru_maxrss / 1024, 1)}


def measure(srv, kind: str, calls: int, processes: int = 1, conc: int = 64, chars: int = 0) -> dict:
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        if kind == "rlaif":
            make_round(Path(tmp), prompts=calls // 4, n=4, chars=chars)  # written here: the child's memory is the judge's
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--url", srv.base_url, "--calls", str(calls),
                              "--run-dir", tmp, "--processes", str(processes), "--concurrency", str(conc)],
                             capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode:
        raise SystemExit(f"bench child {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(srv, sizes: list[int], processes: list[int], distil: str | None) -> list[dict]:
    rows = []
    for n in sizes:
        rows.append(measure(srv, "bare", n))
        rows += [measure(srv, "rlaif", n, p) for p in processes]
        if distil:
            rows.append(distilabel_run(distil, srv.base_url, n, 64))
        print(json.dumps(rows[-1 - len(processes) - bool(distil):]), file=sys.stderr, flush=True)
    print("| client | calls | calls/s | client CPU ms/call | peak RSS MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['client']} | {r['calls']} | {r['calls_per_s']} | {r['cpu_ms_per_call']} | {r['peak_rss_mb']} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--out")
    ap.add_argument("--compare", type=int, nargs="+", metavar="CALLS", help="the three-way comparison at these sizes")
    ap.add_argument("--processes", type=int, nargs="+", default=[1], help="--compare: judge.processes to run")
    ap.add_argument("--distilabel-python", help="--compare: a python with distilabel==1.5.3 (see above)")
    ap.add_argument("--scale", type=int, metavar="PROMPTS", help="one rlaif judge of PROMPTS x 4 score calls")
    ap.add_argument("--response-chars", type=int, default=0, help="--scale: responses of about this many characters")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["RLAIF_BENCH_KEY"] = "sk-bench"
    if args.child:
        print(json.dumps(child(args.child, args.url, args.calls, args.run_dir, args.processes[0], args.concurrency[0])))
        return
    if args.compare or args.scale:
        with FakeJudgeServer(api_key="sk-bench", policy="hash") as srv:
            res = compare(srv, args.compare, args.processes, args.distilabel_python) if args.compare else \
                [measure(srv, "rlaif", 4 * args.scale, p, chars=args.response_chars) for p in args.processes]
        print(json.dumps(res, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        return
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
