"""Time `filter_pairs` on 1,000,000 synthetic comparisons (2,000,000 pairwise judgment rows).

    .venv/bin/python bench/filter.py [--comparisons 1000000 --reps 3 --balance --out filter.json]

250,000 prompts x 4 candidates, 4 compared pairs per prompt, each judged in both orders. The
verdict mix exercises every branch: ~80% consistent labels, plus ties, position-flipped
(inconsistent) pairs and invalid replies; p_a on half the pairs; 5% truncated responses, a few
empty or identical ones; multi-paragraph responses (~190 bytes mean) of varied lengths, so
length_ratio bites. Data building is not timed: the figure is the median wall time of
filter_pairs over --reps runs (compare + join + filters + pairs). The 1-minute load average is
recorded with it, since other work on a shared machine moves the figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlaif.config import FilterConfig  # noqa: E402
from rlaif.io import CANDIDATES_SCHEMA, JUDGMENTS_SCHEMA  # noqa: E402
from rlaif.judge.pairs.filter import filter_pairs  # noqa: E402

PAIRS = [(0, 1), (2, 3), (0, 2), (1, 3)]  # 4 comparisons per prompt of 4 candidates
PID = pl.col("p").cast(pl.String).str.zfill(16)  # 16-character ids, like stable_id's


def build(n_comparisons: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    n_prompts = n_comparisons // len(PAIRS)
    cand = pl.DataFrame({"p": np.repeat(np.arange(n_prompts), 4), "j": np.tile(np.arange(4), n_prompts)})
    n_c = len(cand)
    paras = rng.integers(0, 12, n_c)  # 0..11 short paragraphs: real responses carry newlines too
    same = np.repeat(rng.random(n_prompts) < 0.01, 4) & (cand["j"].to_numpy() < 2)  # 1% of prompts: 0 == 1
    empty = (rng.random(n_c) < 0.01) & ~same
    body = pl.lit("Lorem ipsum dolor sit amet.\n\n").repeat_by(pl.Series(paras)).list.join("")
    cand = cand.with_columns(
        prompt_id=PID, candidate_id=pl.format("{}/r0/{}", PID, "j"),
        round=pl.lit(0, pl.Int32), num_tokens=pl.Series(paras * 7 + 6).cast(pl.Int32),
        response=pl.when(pl.Series(empty)).then(pl.lit("  "))
        .when(pl.Series(same)).then(pl.format("Same answer for {}.", "p"))
        .otherwise(pl.format("Answer {} to prompt {}:\n\n", "j", "p") + body),
        finish_reason=pl.when(pl.Series(rng.random(n_c) < 0.05)).then(pl.lit("length")).otherwise(pl.lit("stop")),
        model=pl.lit("bench"), adapter=pl.lit(None, pl.String), seed=pl.lit(0, pl.Int64))
    chat = pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.format("Question {}?", "p")))
    msgs = pl.DataFrame({"p": np.arange(n_prompts)}).select(prompt_id=PID, messages=chat)
    cand = cand.join(msgs, on="prompt_id", how="left")
    cand = cand.select([pl.col(k).cast(v) for k, v in CANDIDATES_SCHEMA.items()])
    return judgments(rng, n_prompts), cand


def judgments(rng, n_prompts: int) -> pl.DataFrame:
    n = n_prompts * len(PAIRS)
    p = np.repeat(np.arange(n_prompts), len(PAIRS))
    ia = np.tile([a for a, _ in PAIRS], n_prompts)
    ib = np.tile([b for _, b in PAIRS], n_prompts)
    truth = np.where(rng.random(n) < 0.5, "a", "b")
    r = rng.random(n)  # per comparison: 80% agree, 6% tie, 9% position-flipped, 5% one invalid reply
    v_ab = np.where(r < 0.80, truth, np.where(r < 0.86, "tie", np.where(r < 0.95, "a", truth)))
    v_ba = np.where(r < 0.80, truth, np.where(r < 0.86, "tie", np.where(r < 0.95, "b", "invalid")))
    p_true = np.clip(np.where(truth == "a", 0.75, 0.25) + rng.normal(0, 0.1, n), 0, 1)
    p_a = np.where(rng.random(n) < 0.5, p_true, np.nan)
    half = pl.DataFrame({"p": p, "ia": ia, "ib": ib, "p_a": p_a}).with_columns(
        prompt_id=PID, a_id=pl.format("{}/r0/{}", PID, "ia"), b_id=pl.format("{}/r0/{}", PID, "ib"),
        p_a=pl.col("p_a").fill_nan(None))
    rows = pl.concat([half.with_columns(order=pl.lit("ab"), verdict=pl.Series(v_ab)),
                      half.with_columns(order=pl.lit("ba"), verdict=pl.Series(v_ba))])
    rows = rows.with_columns(key=pl.format("{}|{}|{}", "a_id", "b_id", "order"), kind=pl.lit("pairwise"),
                             judge_model=pl.lit("bench-judge"), template_version=pl.lit("v1"))
    return rows.select([pl.col(k).cast(v) if k in rows.columns else pl.lit(None, v).alias(k)
                        for k, v in JUDGMENTS_SCHEMA.items()])


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comparisons", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--balance", action="store_true", help="also subsample for length balance")
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    j, c = build(args.comparisons)
    build_s = time.perf_counter() - t0
    cfg = FilterConfig(min_margin=0.1, balance_length=args.balance)
    times, load = [], os.getloadavg()[0]
    for _ in range(args.reps):
        t = time.perf_counter()
        pairs, card = filter_pairs(j, c, cfg, 0)
        times.append(time.perf_counter() - t)
    res = {"bench": "filter_pairs", "comparisons": card["comparisons_in"], "judgment_rows": len(j),
           "candidates": len(c), "kept": card["kept"], "removed": card["removed"], "balance_length": args.balance,
           "median_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times],
           "build_s": round(build_s, 1), "polars": pl.__version__, "python": platform.python_version(),
           "threads": pl.thread_pool_size(), "cpus": os.cpu_count(), "cpu": cpu_model(),
           "loadavg_1m_before": round(load, 2)}
    print("| bench | comparisons | judgment rows | kept | median s (of %d) | comparisons/s |" % args.reps)
    print("|---|---|---|---|---|---|")
    print(f"| filter_pairs{' +balance' if args.balance else ''} | {res['comparisons']:,} | {len(j):,} | "
          f"{card['kept']:,} | {res['median_s']} | {res['comparisons'] / res['median_s']:,.0f} |")
    print(f"removed: {card['removed']}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
