"""The bias audit: how far the judge's verdicts can be trusted, written to judge-report.json."""
from __future__ import annotations

import numpy as np
import polars as pl

from rlaif.stats import length_feature, logistic_fit


def _rate(mask: pl.Series) -> float | None:
    return float(mask.mean()) if len(mask) else None


def position_stats(pw: pl.DataFrame) -> dict:
    both = (pw.filter(pl.col("verdict") != "invalid").group_by("prompt_id", "a_id", "b_id")
            .agg(pl.col("verdict").n_unique().alias("distinct"), pl.len().alias("n")).filter(pl.col("n") == 2))
    decisive = pw.filter(pl.col("verdict").is_in(["a", "b"]))
    first_won = ((pl.col("order") == "ab") & (pl.col("verdict") == "a")) | ((pl.col("order") == "ba") & (pl.col("verdict") == "b"))
    return {"position_consistency": _rate(both["distinct"] == 1), "comparisons_both_orders_valid": both.height,
            "first_slot_win_rate": _rate(decisive.select(first_won).to_series())}


def length_stats(pw: pl.DataFrame, cands: pl.DataFrame) -> dict:
    tokens = cands.select("candidate_id", "num_tokens")
    d = (pw.filter(pl.col("verdict").is_in(["a", "b"]))
         .join(tokens.rename({"candidate_id": "a_id", "num_tokens": "len_a"}), on="a_id")
         .join(tokens.rename({"candidate_id": "b_id", "num_tokens": "len_b"}), on="b_id"))
    unequal = d.filter(pl.col("len_a") != pl.col("len_b"))
    longer_won = (pl.col("len_a") > pl.col("len_b")) == (pl.col("verdict") == "a")
    coef = None
    if d.height >= 4 and d["verdict"].n_unique() == 2:
        x = length_feature((d["len_a"] - d["len_b"]).to_numpy().astype(float))
        coef = logistic_fit(x, (d["verdict"] == "a").to_numpy())[1]
    return {"longer_wins_rate": _rate(unequal.select(longer_won).to_series()), "length_coef": coef,
            "decisive_calls": d.height}


def build_report(cfg, judgments: pl.DataFrame, cands: pl.DataFrame, rejected: dict, runner, model: str,
                 identical_skipped: int, pending: int) -> dict:
    j = cfg.judge
    pw = judgments.filter(pl.col("kind") == "pairwise")
    prompts = judgments["prompt_id"].n_unique()
    stats = runner.stats
    gov = getattr(runner.backend, "governor", None)  # openai backend with judge.rpm/tpm set
    extra = {"rate_governor": gov.stats()} if gov is not None and gov.active else {}
    return {
        "judge_model": model, "backend": j.backend, "mode": j.mode, "strategy": j.strategy,
        "template_versions": sorted(set(judgments["template_version"].drop_nulls())),
        "self_judging": model in (cfg.model, _resolved(cfg.model)),
        "inputs": {"candidates_in": cands.height, "accepted": cands.height - sum(rejected.values()),
                   "rejected": rejected},
        "calls": judgments["key"].n_unique(), "calls_per_prompt": judgments.height / prompts if prompts else None,
        "calls_made_this_run": stats["calls_made"], "retries_this_run": stats["retries"],
        "errors_this_run": stats["errors"], "pending_calls": pending,
        "identical_pairs_skipped": identical_skipped,
        "input_tokens": int(judgments["input_tokens"].sum()), "output_tokens": int(judgments["output_tokens"].sum()),
        "cost_usd": float(judgments["cost_usd"].sum()), "ledger_cost_usd": runner.cost,
        "calls_per_s": stats["calls_made"] / stats["seconds"] if stats["seconds"] else None,
        "seconds_this_run": round(stats["seconds"], 3),
        "batch": getattr(runner.backend, "stats", None) if getattr(runner, "batch", False) else None,
        "invalid_rate": _rate(judgments["verdict"] == "invalid"),
        "invalid_calls": int((judgments["verdict"] == "invalid").sum()),
        **position_stats(pw), **length_stats(pw, cands), **extra,
    }


def _resolved(name: str) -> str | None:
    if name == "demo":
        from rlaif.models import demo_dir

        return str(demo_dir())
    return name


def print_report(r: dict) -> None:
    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [("judge", f"{r['judge_model']} ({r['backend']}, {r['mode']}/{r['strategy']})"),
            ("calls (this run)", f"{r['calls']} ({r['calls_made_this_run']}, {r['retries_this_run']} retries)"),
            ("calls per prompt", fmt(r["calls_per_prompt"])), ("cost USD", f"{r['cost_usd']:.4f}"),
            ("position consistency", fmt(r["position_consistency"])), ("first-slot win rate", fmt(r["first_slot_win_rate"])),
            ("invalid rate", fmt(r["invalid_rate"])), ("longer-wins rate", fmt(r["longer_wins_rate"])),
            ("length coefficient", fmt(r["length_coef"])), ("self-judging", str(r["self_judging"])),
            ("inputs rejected", str(r["inputs"]["rejected"] or 0))]
    width = max(len(k) for k, _ in rows)
    print("judge audit:")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
