"""The bias audit: how far the judge's verdicts can be trusted, written to judge-report.json."""
from __future__ import annotations

import polars as pl

from rlaif.io import SINGLE_KINDS, stable_id
from rlaif.judge.pairs.compare import checklist_weights, compare
from rlaif.judge.templates import TEXT_KINDS
from rlaif.stats import length_feature, length_fit_status, logistic_fit


def _rate(mask: pl.Series) -> float | None:
    return float(mask.mean()) if len(mask) else None


def _streamed(lf: pl.LazyFrame) -> pl.DataFrame:
    return lf.collect(engine="streaming")


def position_stats(pw: pl.DataFrame | pl.LazyFrame) -> dict:
    """Both orders of a comparison agree; the first slot's share of decisive verdicts (a frame or a
    lazy scan of pairwise judgments: the aggregates are counts, so any summation order gives them)."""
    pw = pw.lazy()
    both = (pw.filter(pl.col("verdict") != "invalid").group_by("prompt_id", "a_id", "b_id")
            .agg(pl.col("verdict").n_unique().alias("distinct"), pl.len().alias("n")).filter(pl.col("n") == 2))
    first_won = ((pl.col("order") == "ab") & (pl.col("verdict") == "a")) | ((pl.col("order") == "ba") & (pl.col("verdict") == "b"))
    agree, n = _streamed(both.select((pl.col("distinct") == 1).mean(), pl.len())).row(0)
    first = _streamed(pw.filter(pl.col("verdict").is_in(["a", "b"])).select(first_won.mean())).item()
    return {"position_consistency": agree, "comparisons_both_orders_valid": n,
            "first_slot_win_rate": None if first is None else float(first)}


def length_stats(pw: pl.DataFrame | pl.LazyFrame, cands: pl.DataFrame | pl.LazyFrame) -> dict:
    # The decisive calls' ids only, in file order (the fit below sums in row order), and the token
    # counts only when there is one: a score-only round reads no candidates here.
    dec = _streamed(pw.lazy().filter(pl.col("verdict").is_in(["a", "b"])).select("a_id", "b_id", "verdict"))
    tokens = cands.lazy().select("candidate_id", "num_tokens")
    tokens = (tokens if dec.height else tokens.head(0)).collect()
    d = (dec.join(tokens.rename({"candidate_id": "a_id", "num_tokens": "len_a"}), on="a_id")
         .join(tokens.rename({"candidate_id": "b_id", "num_tokens": "len_b"}), on="b_id"))
    unequal = d.filter(pl.col("len_a") != pl.col("len_b"))
    longer_won = (pl.col("len_a") > pl.col("len_b")) == (pl.col("verdict") == "a")
    # The same penalised fit and the same refusals as evaluation's LC (rlaif.stats): slot a's win on
    # tanh(standardised len_a - len_b); None, with the reason, on too few calls or lopsided lengths.
    diff, won = (d["len_a"] - d["len_b"]).to_numpy().astype(float), (d["verdict"] == "a").to_numpy().astype(float)
    status, reason = length_fit_status(won, diff)
    coef = logistic_fit(length_feature(diff), won)[1] if status == "ok" else None
    return {"longer_wins_rate": _rate(unequal.select(longer_won).to_series()), "length_coef": coef,
            "length_coef_reason": reason, "decisive_calls": d.height}


def totals(judgments: pl.LazyFrame) -> dict:
    """The report's counts over all judgments in one streaming pass (issue 22, item 5); the cost is
    summed over the collected column, as an eager frame sums it (a streamed float sum adds in
    another order and can differ in the last bit)."""
    verdict, C = pl.col("verdict"), pl.col
    t = _streamed(judgments.select(
        rows=pl.len(), prompts=C("prompt_id").n_unique(), calls=C("key").n_unique(),
        input_tokens=C("input_tokens").sum(), output_tokens=C("output_tokens").sum(),
        invalid_calls=(verdict == "invalid").sum(), invalid_rate=(verdict == "invalid").mean(),
        kinds=C("kind").unique().implode(), versions=C("template_version").drop_nulls().unique().implode())).row(0, named=True)
    t["cost_usd"] = float(_streamed(judgments.select("cost_usd"))["cost_usd"].sum())
    return t


def build_report(cfg, judgments: pl.DataFrame | pl.LazyFrame, cands: pl.DataFrame | pl.LazyFrame, rejected: dict,
                 js, identical_skipped: int, pending: int, texts: pl.LazyFrame | None = None) -> dict:
    """judge-report.json. judgments and cands: frames, or lazy scans of the round's files (the
    stage's way: nothing here then holds a whole table, issue 22, item 5). judgments may lack the
    text columns; texts (a lazy scan of the full judgments) then gives the rationale samples."""
    j, runner, model = cfg.judge, js.runner, js.model
    judgments, cands = judgments.lazy(), cands.lazy()
    t = totals(judgments)
    pw = judgments.filter(pl.col("kind") == "pairwise")
    n_cands = _streamed(cands.select(pl.len())).item()
    stats = runner.stats
    backend = runner.backend
    gov = getattr(backend, "governor", None)  # openai backend with judge.rpm/tpm set
    extra = {"rate_governor": gov.stats()} if gov is not None and getattr(gov, "active", False) else {}
    return {
        "judge_model": model, "judge_adapter": js.adapter, "judged_by": judged_by(cfg, js),
        "backend": j.backend, "mode": js.score_kind if js.score_kind != "score" else j.mode,
        "strategy": j.strategy if js.score_kind == "score" else "best_vs_worst",
        "judge_id": js.judge_id, "identity": js.identity,
        "rubric": rubric_of(js),
        "explain": j.explain, "verdicts": j.verdicts,
        "template_versions": sorted(set(t["versions"])),
        # the judge's weights are this round's sampling policy's: round 0's is the SFT model, round
        # k's the SFT model plus round k-1's adapter (judge.model=policy); a frozen SFT judge of round
        # k >= 1 is not self-judging
        "self_judging": j.model == "policy" or (cfg.round == 0 and model in (cfg.model, _resolved(cfg.model))),
        "inputs": {"candidates_in": n_cands, "accepted": n_cands - sum(rejected.values()),
                   "rejected": rejected},
        "calls": t["calls"], "calls_per_prompt": t["rows"] / t["prompts"] if t["prompts"] else None,
        "calls_made_this_run": stats["calls_made"], "retries_this_run": stats["retries"],
        "errors_this_run": stats["errors"], "pending_calls": pending,
        "identical_pairs_skipped": identical_skipped,
        "input_tokens": int(t["input_tokens"]), "output_tokens": int(t["output_tokens"]),
        "cost_usd": t["cost_usd"], "ledger_cost_usd": runner.cost,
        "calls_per_s": stats["calls_made"] / stats["seconds"] if stats["seconds"] else None,
        "seconds_this_run": round(stats["seconds"], 3),
        "batch": getattr(backend, "stats", None) if getattr(runner, "batch", False) else None,
        "backend_stats": backend.stats() if callable(getattr(backend, "stats", None)) else None,
        "invalid_rate": None if t["invalid_rate"] is None else float(t["invalid_rate"]),
        "invalid_calls": int(t["invalid_calls"]),
        "rationales": rationale_samples(judgments if texts is None else texts),
        "checklist_items": checklist_stats(judgments, checklist_weights(js.j)) if "checklist" in t["kinds"] else None,
        **position_stats(pw), **length_stats(pw, cands), **extra,
        "single_length": single_length_stats(judgments, cands, checklist_weights(js.j), t["kinds"]),
    }


def rubric_of(js) -> dict:
    """What "better" meant to this judge: the rubric it was shown, or what stood in for one (a reward
    model's learned reward; the verifier's checks, which no rubric reaches)."""
    j = js.j
    if j.backend == "reward_model":
        return {"source": "reward model", "sha256": "-", "first_line": "its own learned reward"}
    if j.backend == "verifier":
        checks = {name: c.model_dump(exclude_defaults=True) for name, c in j.checks.items()}
        return {"source": "judge.checks", "sha256": stable_id(checks, n=12),
                "first_line": "checks run on each candidate: " + ", ".join(sorted(checks))}
    return js.spec.rubric_id


def single_length_stats(judgments: pl.DataFrame | pl.LazyFrame, cands: pl.DataFrame | pl.LazyFrame,
                        weights: dict[str, float], kinds: list[str] | None = None) -> dict | None:
    """The length audit of judges that score candidates alone (rubric scores, checklists, reward
    models): over each prompt's best- vs worst-scored candidate of unequal length, how often the
    longer one was scored higher. 0.5 is length-blind; near 1 the scorer rewards length.
    kinds: the judgments' kinds, when known (else looked up)."""
    single = judgments.lazy().filter(pl.col("kind").is_in(SINGLE_KINDS))
    if kinds is None:
        kinds = _streamed(judgments.lazy().select(pl.col("kind").unique()))["kind"].to_list()
    if not set(kinds) & set(SINGLE_KINDS):
        return None
    comp = compare(single, weights).filter(pl.col("outcome") == "label").lazy()
    tokens = cands.lazy().select("candidate_id", "num_tokens")
    d = (comp.join(tokens.rename({"candidate_id": "chosen_id", "num_tokens": "lc"}), on="chosen_id")
         .join(tokens.rename({"candidate_id": "rejected_id", "num_tokens": "lr"}), on="rejected_id")
         .filter(pl.col("lc") != pl.col("lr")))
    rate, n = _streamed(d.select((pl.col("lc") > pl.col("lr")).mean(), pl.len())).row(0)
    return {"longer_scored_higher_rate": rate, "comparisons": n}


def rationale_samples(judgments: pl.DataFrame | pl.LazyFrame, n: int = 3) -> list[dict]:
    """A few explained verdicts, for the report: what the judge said before its final line.
    judgments: a frame with the rationale column, or a lazy scan of judgments.parquet."""
    # critiques and revisions (pairs.source revise) keep their text in rationale too: not verdicts
    r = judgments.filter(pl.col("rationale").is_not_null() & (pl.col("verdict") != "invalid")
                         & ~pl.col("kind").is_in(TEXT_KINDS)).head(n).lazy().collect()
    return [{"prompt_id": x["prompt_id"], "kind": x["kind"], "order": x["order"], "verdict": x["verdict"],
             "rationale": x["rationale"][:600]} for x in r.iter_rows(named=True)]


def checklist_stats(judgments: pl.DataFrame | pl.LazyFrame, weights: dict[str, float]) -> list[dict]:
    """Per checklist item: mean P(yes) over all candidates, and over each prompt's best and worst
    candidate by the weighted score the filter ranks by: which items separate chosen from rejected."""
    # collected, then grouped in memory: a streamed float mean adds in another order (the last bit moves)
    ck = _streamed(judgments.lazy().filter((pl.col("kind") == "checklist") & (pl.col("verdict") != "invalid"))
                   .select("prompt_id", "a_id", "item", "score_a"))
    w = pl.col("item").replace_strict(weights, default=1.0, return_dtype=pl.Float64)
    per = ck.group_by("prompt_id", "a_id").agg(total=(pl.col("score_a") * w).sum() / w.sum())
    ranked = per.sort(["total", "a_id"], descending=[True, False]).group_by("prompt_id", maintain_order=True).agg(
        best=pl.col("a_id").first(), worst=pl.col("a_id").last(), n=pl.len()).filter(pl.col("n") >= 2)
    best = ck.join(ranked.select("prompt_id", a_id="best"), on=["prompt_id", "a_id"])
    worst = ck.join(ranked.select("prompt_id", a_id="worst"), on=["prompt_id", "a_id"])
    out = ck.group_by("item").agg(p_yes=pl.col("score_a").mean(), n=pl.len()).sort("item")
    for name, frame in (("p_yes_best", best), ("p_yes_worst", worst)):
        out = out.join(frame.group_by("item").agg(pl.col("score_a").mean().alias(name)), on="item", how="left")
    return out.to_dicts()


def _resolved(name: str) -> str | None:
    if name == "demo":
        from rlaif.models import demo_dir

        return str(demo_dir())
    return name


def judged_by(cfg, js) -> str:
    """Which weights judged this round, in words (judge-report.json, report.md, the pairs card)."""
    if cfg.judge.model == "policy":
        return (f"round {cfg.round}'s sampling policy: the SFT model + round {cfg.round - 1}'s adapter" if js.adapter
                else "round 0's sampling policy: the SFT model")
    if cfg.judge.backend != "openai" and js.model in (cfg.model, _resolved(cfg.model)):
        return "the SFT model" + (" (frozen: not the policy that sampled this round)" if cfg.round else "")
    return js.model


def print_report(r: dict) -> None:
    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [("judge", f"{r['judge_model']} ({r['backend']}, {r['mode']}/{r['strategy']}, id {r['judge_id']})"),
            ("judged by", r["judged_by"]),
            ("rubric", f"{r['rubric']['source']} {r['rubric']['sha256']}: {r['rubric']['first_line'][:60]}"),
            ("calls (this run)", f"{r['calls']} ({r['calls_made_this_run']}, {r['retries_this_run']} retries)"),
            ("calls per prompt", fmt(r["calls_per_prompt"])), ("cost USD", f"{r['cost_usd']:.4f}"),
            ("position consistency", fmt(r["position_consistency"])), ("first-slot win rate", fmt(r["first_slot_win_rate"])),
            ("invalid rate", fmt(r["invalid_rate"])), ("longer-wins rate", fmt(r["longer_wins_rate"])),
            ("length coefficient", fmt(r["length_coef"]) if r["length_coef"] is not None
             else f"- ({r.get('length_coef_reason') or 'not fitted'})"), ("self-judging", str(r["self_judging"])),
            ("inputs rejected", str(r["inputs"]["rejected"] or 0))]
    width = max(len(k) for k, _ in rows)
    print("judge audit:")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
