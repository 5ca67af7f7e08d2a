"""Evaluation math: policy-vs-SFT outcomes from both-order judgments, win rate with a bootstrap
interval, length-controlled win rate, judge health, reward accuracy, and the length-hacking stop rule.

`outcomes()` is also the schema of RUN_DIR/round-K/eval/outcomes.parquet (one row per compared
pair): prompt_id, policy_id, sft_id, policy_first, sft_first (the verdict, as "policy" | "sft" |
"tie", when the policy answer was shown first / second), y, len_policy, len_sft.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import polars as pl

from rlaif.evaluate.lc_anchor import lc_anchored
from rlaif.io import SINGLE_KINDS
from rlaif.stats import lc_bootstrap_ci, length_feature, length_fit_status, logistic_fit

C = pl.col


def _as_tokens(tokens: Mapping[str, int] | pl.DataFrame) -> pl.DataFrame:
    if isinstance(tokens, pl.DataFrame):
        return tokens.select(C("candidate_id").cast(pl.String), C("num_tokens").cast(pl.Int64))
    return pl.DataFrame({"candidate_id": list(tokens), "num_tokens": list(tokens.values())},
                        schema={"candidate_id": pl.String, "num_tokens": pl.Int64})


def _compared(judgments: pl.DataFrame, policy_ids: Iterable[str] | pl.Series) -> pl.DataFrame:
    """Every (prompt, policy answer, SFT answer) with its verdict per order, whatever their validity.

    Verdicts are restated from "a"/"b" (which name candidates, not slots) to "policy"/"sft", so the
    two orders of one pair compare directly. Calls that do not pit exactly one policy answer
    against one other answer (score calls, SFT vs SFT) are not comparisons here."""
    pol = [str(i) for i in policy_ids]
    pw = judgments.filter(C("kind") == "pairwise") if "kind" in judgments.columns else judgments
    a_pol, b_pol = C("a_id").is_in(pol), C("b_id").is_in(pol)
    v = C("verdict")
    a_side = pl.when((v == "a") == a_pol).then(pl.lit("policy")).otherwise(pl.lit("sft"))
    winner = (pl.when(v == "tie").then(pl.lit("tie")).when(v.is_in(["a", "b"])).then(a_side)
              .otherwise(pl.lit("invalid")))  # anything unparsed or unknown counts as invalid
    rows = pw.filter(a_pol ^ b_pol).with_columns(
        policy_id=pl.when(a_pol).then("a_id").otherwise("b_id"),
        sft_id=pl.when(a_pol).then("b_id").otherwise("a_id"),
        shown_first=(C("order") == "ab") == a_pol, winner=winner)
    return (rows.group_by("prompt_id", "policy_id", "sft_id", maintain_order=True)
            .agg(policy_first=C("winner").filter(C("shown_first")).first(),
                 sft_first=C("winner").filter(~C("shown_first")).first()))


def pair_counts(judgments: pl.DataFrame, policy_ids: Iterable[str] | pl.Series) -> dict:
    """How many pairs were judged in both orders, and how many of those an invalid verdict excluded."""
    d = _compared(judgments, policy_ids)
    both = d.filter(C("policy_first").is_not_null() & C("sft_first").is_not_null())
    invalid = both.filter((C("policy_first") == "invalid") | (C("sft_first") == "invalid")).height
    return {"pairs_both_orders": both.height, "invalid_excluded": invalid, "single_order": d.height - both.height}


def outcomes(judgments: pl.DataFrame, policy_ids: Iterable[str] | pl.Series,
             tokens: Mapping[str, int] | pl.DataFrame) -> pl.DataFrame:
    """One row per pair judged validly in both orders; y = 1 policy wins, 0 SFT wins, 0.5 otherwise.

    Ties count half; a pair whose two orders disagree is a tie too (the judge could not tell them
    apart beyond position), never half a label for either side. An invalid verdict in either order
    drops the pair (see pair_counts). `tokens` maps candidate_id -> num_tokens (dict or a frame
    with those columns); unknown ids get null lengths."""
    tok = _as_tokens(tokens)
    pf, sf = C("policy_first"), C("sft_first")
    y = (pl.when((pf == "policy") & (sf == "policy")).then(1.0)
         .when((pf == "sft") & (sf == "sft")).then(0.0).otherwise(0.5))
    return (_compared(judgments, policy_ids)
            .filter(pf.is_not_null() & sf.is_not_null() & (pf != "invalid") & (sf != "invalid"))
            .with_columns(y=y)
            .join(tok.rename({"candidate_id": "policy_id", "num_tokens": "len_policy"}), on="policy_id", how="left")
            .join(tok.rename({"candidate_id": "sft_id", "num_tokens": "len_sft"}), on="sft_id", how="left"))


def win_rate(y) -> float:
    y = np.asarray(y, dtype=float)
    return float(y.mean()) if y.size else float("nan")


def bootstrap_ci(y, n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups=None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of y. With `groups` (e.g. prompt ids) whole groups
    are resampled, since answers to one prompt are not independent; otherwise rows are."""
    y = np.asarray(y, dtype=float)
    if y.size == 0:
        return float("nan"), float("nan")
    _, g = np.unique(np.asarray(groups), return_inverse=True) if groups is not None else (None, np.arange(y.size))
    sums, counts = np.bincount(g, weights=y), np.bincount(g).astype(float)
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, 256):  # chunks bound memory at 256 x n_groups indices
        idx = rng.integers(0, sums.size, size=(min(256, n_boot - start), sums.size))
        stats.append(sums[idx].sum(1) / counts[idx].sum(1))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(np.concatenate(stats), [alpha, 1 - alpha])
    return float(lo), float(hi)


def _lc_rows(y, len_policy, len_sft) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, lp, ls = (np.asarray(a, dtype=float) for a in (y, len_policy, len_sft))
    ok = np.isfinite(y) & np.isfinite(lp) & np.isfinite(ls)
    return y[ok], lp[ok] - ls[ok], ok


def lc_win_rate(y, len_policy, len_sft) -> tuple[float, float]:
    """(length-controlled win rate in [0, 1], length coefficient): the fit, whether or not it means
    anything (lc_summary decides that).

    The length term of AlpacaEval 2's GLM (Dubois et al. 2024, "Length-Controlled AlpacaEval: A
    Simple Way to Debias Automatic Evaluators"): logit P(policy wins) = b0 + b1 * tanh(diff / sd(diff)),
    and the win rate the judge would give at zero length difference, sigmoid(b0). The slope is
    L2-penalised (rlaif.stats.LENGTH_L2 says how strongly and why) in place of their cross-validated
    penalty and gamed-baseline regulariser; their instruction-difficulty term needs per-instruction
    data from many models and does not apply to one run. Half outcomes (ties) are fitted as
    fractional targets, as their fit_LogisticRegressionCV does (a row per label, weighted by the
    preference). Rows with a missing length are left out."""
    y, diff, _ = _lc_rows(y, len_policy, len_sft)
    if not y.size:
        raise ValueError("lc_win_rate: no outcome with both lengths known")
    b0, b1 = logistic_fit(length_feature(diff), y)
    return float(1 / (1 + np.exp(-b0))), b1


def lc_summary(y, len_policy, len_sft, groups, n_boot: int = 2000, seed: int = 0) -> dict:
    """LC with the slope fitted on the outcomes themselves (issue 18, item 9: on real length-biased
    judges this runs away, since quality and length move together there; the evaluate stage uses
    rlaif.evaluate.lc_anchor.lc_anchored). The eval.json LC fields: lc_win_rate and lc_win_rate_ci,
    or nulls when the figure would mean nothing, with lc_status ("ok", "no_lengths", "too_few_decisive", "lopsided_lengths") and
    lc_reason (None when ok); length_coef is the fitted slope whenever there is a fit."""
    y, diff, ok = _lc_rows(y, len_policy, len_sft)
    res = {"lc_win_rate": None, "lc_win_rate_ci": [None, None], "length_coef": None}
    if not y.size:
        return {**res, "lc_status": "no_lengths", "lc_reason": "no judged outcome with both lengths known"}
    b0, b1 = logistic_fit(length_feature(diff), y)
    res["length_coef"] = _num(b1)
    status, reason = length_fit_status(y, diff)
    if status == "ok":
        res["lc_win_rate"] = _num(1 / (1 + np.exp(-b0)))
        res["lc_win_rate_ci"] = list(lc_bootstrap_ci(y, diff, np.asarray(groups)[ok], n_boot, seed))
    return {**res, "lc_status": status, "lc_reason": reason}


def position_consistency(judgments: pl.DataFrame) -> float | None:
    """Share of pairs judged validly in both orders whose two verdicts agree (tie/tie agrees).

    A local copy of rlaif.judge.trust.audit.position_stats's definition, so evaluation does not lean on
    another stage's report module; the two must stay the same definition."""
    pw = judgments.filter(C("kind") == "pairwise") if "kind" in judgments.columns else judgments
    both = (pw.filter(C("verdict").is_in(["a", "b", "tie"]))
            .group_by("prompt_id", "a_id", "b_id")
            .agg(distinct=C("verdict").n_unique(), orders=C("order").n_unique()).filter(C("orders") == 2))
    return float((both["distinct"] == 1).mean()) if both.height else None


def invalid_rate(judgments: pl.DataFrame, single: bool = False) -> float | None:
    """Share of pairwise calls whose verdict could not be read; with `single`, of the calls that
    judge one answer alone (SINGLE_KINDS: score, checklist, reward, verify)."""
    if single:
        one = judgments.filter(C("kind").is_in(SINGLE_KINDS))
        return float((one["verdict"] == "invalid").mean()) if one.height else None
    pw = judgments.filter(C("kind") == "pairwise") if "kind" in judgments.columns else judgments
    return float((~pw["verdict"].is_in(["a", "b", "tie"])).mean()) if pw.height else None


def implicit_reward_accuracy(chosen_logratio, rejected_logratio, beta: float) -> float:
    """Share of held-out pairs where DPO's implicit reward beta * (log pi - log ref) ranks chosen
    strictly above rejected: strict, as TRL's rewards/accuracies, so the numbers compare."""
    c, r = np.asarray(chosen_logratio, dtype=float), np.asarray(rejected_logratio, dtype=float)
    return float(((beta * c) > (beta * r)).mean()) if c.size else float("nan")


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


OUTCOME_SCHEMA = {"prompt_id": pl.String, "policy_id": pl.String, "sft_id": pl.String, "policy_first": pl.String,
                  "sft_first": pl.String, "y": pl.Float64, "len_policy": pl.Int64, "len_sft": pl.Int64}


def tie_outcomes(matchups: pl.DataFrame, tokens: Mapping[str, int] | pl.DataFrame,
                 label: str = "identical") -> pl.DataFrame:
    """Outcome rows (y = 0.5) for matchups never sent to the judge, e.g. identical answers: a
    greedy policy that has not moved says exactly what SFT says, and that is a tie, not a gap."""
    tok = _as_tokens(tokens)
    return (matchups.select("prompt_id", "policy_id", "sft_id")
            .with_columns(policy_first=pl.lit(label), sft_first=pl.lit(label), y=pl.lit(0.5))
            .join(tok.rename({"candidate_id": "policy_id", "num_tokens": "len_policy"}), on="policy_id", how="left")
            .join(tok.rename({"candidate_id": "sft_id", "num_tokens": "len_sft"}), on="sft_id", how="left")
            .select([C(k).cast(v) for k, v in OUTCOME_SCHEMA.items()]))


def single_scores(judgments: pl.DataFrame, weights: Mapping[str, float] | None = None) -> pl.DataFrame:
    """(a_id, score_a): each answer's score when judged alone. A rubric score, a reward or the
    verifier's share of checks passed is its valid verdict's value; a checklist's is the weighted
    mean of P(yes) over its items (weights by item id, default 1), and none if any item's answer is
    invalid: an answer is never ranked on part of its checklist. The same rule the judge stage ranks
    candidates by (rlaif/judge/pairs/filter.py)."""
    plain_kinds = [k for k in SINGLE_KINDS if k != "checklist"]
    plain = (judgments.filter(C("kind").is_in(plain_kinds) & (C("verdict") == "score")
                              & C("score_a").is_not_null())
             .group_by("a_id").agg(C("score_a").first()))
    w = C("item").replace_strict(dict(weights or {}), default=1.0, return_dtype=pl.Float64)
    checklist = (judgments.filter(C("kind") == "checklist").with_columns(w=w)
                 .group_by("a_id")
                 .agg(ok=((C("verdict") != "invalid") & C("score_a").is_not_null()).all(),
                      score_a=(C("score_a") * C("w")).sum() / C("w").sum())
                 .filter("ok").select("a_id", "score_a"))
    return pl.concat([plain, checklist])


def score_outcomes(judgments: pl.DataFrame, matchups: pl.DataFrame,
                   tokens: Mapping[str, int] | pl.DataFrame,
                   weights: Mapping[str, float] | None = None) -> pl.DataFrame:
    """Outcomes from answers judged alone (a rubric score, a checklist's weighted P(yes) or a
    reward: single_scores): the higher-scored answer wins, equal scores tie; a matchup where
    either answer has no valid score is left out (as an invalid verdict is)."""
    sc = single_scores(judgments, weights)
    m = (matchups.select("prompt_id", "policy_id", "sft_id")
         .join(sc.rename({"a_id": "policy_id", "score_a": "score_policy"}), on="policy_id")
         .join(sc.rename({"a_id": "sft_id", "score_a": "score_sft"}), on="sft_id"))
    sp, ss = C("score_policy"), C("score_sft")
    win = pl.when(sp > ss).then(pl.lit("policy")).when(sp < ss).then(pl.lit("sft")).otherwise(pl.lit("tie"))
    y = pl.when(sp > ss).then(1.0).when(sp < ss).then(0.0).otherwise(0.5)
    out = m.with_columns(policy_first=win, sft_first=win, y=y)
    return tie_outcomes(out, tokens).drop("policy_first", "sft_first", "y").join(
        out.select("policy_id", "sft_id", "policy_first", "sft_first", "y", "score_policy", "score_sft"),
        on=["policy_id", "sft_id"]).select(*OUTCOME_SCHEMA, "score_policy", "score_sft")


def summarize_outcomes(out: pl.DataFrame, policy_tokens, sft_tokens, n_boot: int = 2000, seed: int = 0,
                       anchor=None) -> dict:
    """Win rate, its prompt-clustered bootstrap interval, LC win rate and the length figures.
    Lengths are over every policy / SFT answer given (not only the validly judged ones), so
    excluding invalid verdicts cannot hide length drift. With `anchor` (an lc_anchor.Anchor, what
    the evaluate stage passes) LC takes the judge's length slope from same-model comparisons;
    without it, from these outcomes alone (lc_summary), where quality and length are confounded."""
    y = out["y"].to_numpy() if out.height else np.array([])
    lo, hi = bootstrap_ci(y, n_boot, seed, groups=out["prompt_id"].to_numpy()) if out.height else (None, None)
    lc = lc_anchored if anchor is not None else lc_summary
    res = {"win_rate": _num(win_rate(y)) if out.height else None, "win_rate_ci": [_num(lo), _num(hi)],
           **lc(y, out["len_policy"].to_numpy(), out["len_sft"].to_numpy(), out["prompt_id"].to_numpy(),
                *([anchor] if anchor is not None else []), n_boot, seed), "n_comparisons": out.height}
    for side, s in (("policy", policy_tokens), ("sft", sft_tokens)):
        s = pl.Series(s, dtype=pl.Float64).drop_nulls()
        res[f"{side}_mean_tokens"] = _num(s.mean()) if s.len() else None
        res[f"{side}_median_tokens"] = _num(s.median()) if s.len() else None
    return res


def per_turn(out: pl.DataFrame, matchups: pl.DataFrame, tokens: Mapping[str, int] | pl.DataFrame,
             n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """eval.json's `per_turn` for played conversations: at each user turn, the win rate of the outcomes
    there (`out` with a turn column: judged and identical ones) and its prompt-clustered interval, as
    summarize_outcomes computes them, so the last turn of a set whose conversations share a length gives the
    headline's numbers; n outcomes of n_prompts matchups (an invalid verdict drops one), and the mean answer
    lengths at that turn."""
    tok = _as_tokens(tokens)
    rows = []
    for t in sorted(matchups["turn"].unique().to_list()):
        o, m = out.filter(C("turn") == t).sort("prompt_id"), matchups.filter(C("turn") == t)
        y = o["y"].to_numpy()
        lo, hi = bootstrap_ci(y, n_boot, seed, groups=o["prompt_id"].to_numpy()) if o.height else (None, None)
        lens = {side: tok.join(m.select(C(f"{side}_id").alias("candidate_id")), on="candidate_id")["num_tokens"]
                for side in ("policy", "sft")}
        rows.append({"turn": int(t), "n": o.height, "n_prompts": m.height, "n_identical": int(m["identical"].sum()),
                     "win_rate": _num(win_rate(y)) if o.height else None, "win_rate_ci": [_num(lo), _num(hi)],
                     **{f"{side}_mean_tokens": _num(v.mean()) if v.len() else None for side, v in lens.items()}})
    return rows


def summarize(judgments: pl.DataFrame, policy_ids: Iterable[str] | pl.Series, tokens: Mapping[str, int] | pl.DataFrame,
              reward_accuracy: float | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """The eval.json contract from pairwise judgments alone. Lengths are over every policy / SFT
    answer that entered a comparison, invalid ones included."""
    ids = list(policy_ids)
    out = outcomes(judgments, ids, tokens)
    comp, tok = _compared(judgments, ids), _as_tokens(tokens)
    lens = {side: tok.join(comp.select(C(f"{side}_id").unique().alias("candidate_id")), on="candidate_id")["num_tokens"]
            for side in ("policy", "sft")}
    res = summarize_outcomes(out, lens["policy"], lens["sft"], n_boot, seed)
    res.update(position_consistency=position_consistency(judgments), invalid_rate=invalid_rate(judgments),
               **{f"n_{k}": v for k, v in pair_counts(judgments, ids).items()})
    if reward_accuracy is not None:
        res["reward_accuracy"] = float(reward_accuracy)
    return res


def length_hacking(prev: dict, cur: dict, max_growth: float) -> str | None:
    """The early-stop rule: policy answers grew by more than `max_growth` (a share: 0.2 = 20%)
    since the previous evaluation while the length-controlled win rate did not rise, i.e. the judge
    is being paid in length rather than quality. None when the rule does not fire or cannot tell.

    A null LC (eval.json lc_status): when this round's answers grew past the limit and are so much
    longer than SFT's that LC cannot be computed ("lopsided_lengths"), the rule fires: nothing
    shows that quality rose, and a policy that runs away in length is what the stop is for. Any
    other null LC (too few decisive outcomes in either round, a lopsided previous round, or
    lopsidedly shorter answers) cannot tell, and the rule does not fire."""
    m0, m1 = prev.get("policy_mean_tokens"), cur.get("policy_mean_tokens")
    l0, l1 = prev.get("lc_win_rate"), cur.get("lc_win_rate")
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (m0, m1)) or m0 <= 0:
        return None  # a round without a (readable) evaluation cannot trigger a stop
    growth = m1 / m0 - 1
    if growth <= max_growth:
        return None
    sft = cur.get("sft_mean_tokens")
    longer = not (isinstance(sft, (int, float)) and np.isfinite(sft)) or m1 > sft
    if l1 is None and cur.get("lc_status") == "lopsided_lengths" and longer:
        return (f"length hacking: policy answers grew {growth:.0%} ({m0:.0f} -> {m1:.0f} tokens, limit "
                f"{max_growth:.0%}) and the length-controlled win rate cannot show quality rose "
                f"({cur.get('lc_reason')})")
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (l0, l1)):
        return None
    if l1 <= l0:
        return (f"length hacking: policy answers grew {growth:.0%} ({m0:.0f} -> {m1:.0f} tokens, limit "
                f"{max_growth:.0%}) while the length-controlled win rate did not rise ({l0:.1%} -> {l1:.1%})")
    return None
