"""Length-controlled win rate with the judge's length slope measured where quality cannot differ.

AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval", arXiv 2404.04475; code:
tatsu-lab/alpaca_eval src/alpaca_eval/metrics/glm_winrate.py) reads LC off a logistic GLM of the
verdicts with the length term set to zero: logit P(model wins) = b0 + b1 * tanh(length difference /
sd). Fitted on one model-vs-baseline set of outcomes, b1 is not identified: a better answer is
often a longer one, so quality and length move together and a free (or merely penalised) slope
takes quality for length, in either direction. AlpacaEval 2 identifies the slope elsewhere: it
adds verbose- and concise-prompted copies of the *baseline* judged against the baseline, rows
whose quality gap is zero by construction and whose only model term is fixed at zero, sharing
one length slope with the model's rows (`regularize_to_baseline_lambda` = 0.2; those rows count
0.1 each, so the model's own confounded rows still pull the slope).

Here the slope comes from the anchor alone, then is held fixed: two samples of one model for one
prompt (the round's candidates), judged the way evaluation judges (pairwise in both orders, or each
scored alone), with no intercept (which sample is "a" is arbitrary, and both orders cancel
position). Then LC = sigmoid(b0), b0 fitted on the policy-vs-SFT outcomes with the length term
an offset. The assumption that makes it work, and that the report states: within one model's
samples for a prompt, length carries no quality. A truncated sample breaks it (it is worse for
another reason), so anchors use complete answers only.

Two departures from AlpacaEval, both because a slope is carried from one set of pairs to another:
- one scale for both, the anchor's RMS length difference (sign-free: which sample is "a" is
  arbitrary), where AlpacaEval standardises each set by its own sd; otherwise the judge's pull for
  +100 tokens would depend on how spread the other model's lengths are;
- LC is refused ("lopsided_lengths") unless most outcomes lie inside the anchor's range of
  length differences *and* length ratios: outside it the fixed curve is extrapolated, which is
  how a one-line policy against a verbose baseline got LC ~40% from a raw 4% (issue 18, item 9).

The interval resamples prompts of both sets (the anchor's and the held-out ones) and refits both
steps, so the slope's uncertainty reaches LC.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from rlaif.io import stable_id
from rlaif.stats import LENGTH_L2, MIN_DECISIVE, fit_one_batch

# The anchor's range: the 99th percentile of its absolute length differences and of its absolute
# log length ratios (a stray pair or two does not stretch it). A policy whose answers are 5% of SFT's
# length lies outside any same-model range seen in a realistic run, and is refused.
SUPPORT_QUANTILE = 0.99
# LC is interpolation when at least this share of the outcomes lies inside the anchor's range on
# both measures (the counterpart of stats.MIN_NEAR_EQUAL for the fixed-slope fit).
MIN_IN_SUPPORT = 0.8


@dataclass
class Anchor:
    """Same-model comparisons in the outcomes schema (policy_id/len_policy = sample a, sft_id/len_sft =
    sample b, y = 1 when a won), where they came from, or why there are none."""
    outcomes: pl.DataFrame | None
    source: str
    reason: str | None = None


def _logratio(a, b):
    return np.log((np.asarray(a, dtype=float) + 1) / (np.asarray(b, dtype=float) + 1))


def anchor_scale(d, w=None):
    """RMS of the anchor's length differences (per row of frequency weights w, shape (B, n))."""
    d = np.asarray(d, dtype=float)
    if w is None:
        return float(np.sqrt(np.mean(d ** 2))) if d.size else 0.0
    return np.sqrt((w * d ** 2).sum(1) / np.maximum(w.sum(1), 1))


def _feature(d, scale):
    scale = np.asarray(scale, dtype=float)[..., None] if np.ndim(scale) else np.asarray(scale, dtype=float)
    return np.tanh(np.divide(d, scale, out=np.zeros(np.broadcast_shapes(np.shape(d), np.shape(scale))),
                             where=scale > 0))


def anchored_fit(y, d, ya, da, w=None, wa=None):
    """(LC, slope, scale): the slope and scale from the anchor (ya, da), then the intercept of the
    outcomes (y, d) under the fixed length term. With weights w (B, n) and wa (B, na): arrays of B."""
    y, d, ya, da = (np.asarray(v, dtype=float) for v in (y, d, ya, da))
    w = np.ones((1, y.size)) if w is None else w
    wa = np.ones((1, ya.size)) if wa is None else wa
    scale = anchor_scale(da, wa)
    # the same N(0, 2^2) prior on the slope as stats.LENGTH_L2: it only matters for a tiny or separable anchor
    slope = fit_one_batch(_feature(da, scale), ya, wa, 0.0, LENGTH_L2)
    b0 = fit_one_batch(np.ones_like(y), y, w, slope[:, None] * _feature(d, scale))
    return 1 / (1 + np.exp(-b0)), slope, scale


def support(len_pol, len_sft, len_a, len_b) -> tuple[float, float, float]:
    """(share of outcomes inside the anchor's range, its |difference| edge in tokens, its ratio edge)."""
    da, ra = np.abs(np.asarray(len_a, float) - len_b), np.abs(_logratio(len_a, len_b))
    edge_d, edge_r = float(np.quantile(da, SUPPORT_QUANTILE)), float(np.quantile(ra, SUPPORT_QUANTILE))
    inside = (np.abs(np.asarray(len_pol, float) - len_sft) <= edge_d) & (np.abs(_logratio(len_pol, len_sft)) <= edge_r)
    return float(inside.mean()), edge_d, float(np.exp(edge_r))


def _group_weights(groups, n_boot, rng):
    """Chunks of prompt-resampling frequency weights, (<=256, n) each, as metrics.bootstrap_ci draws them."""
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = g.max() + 1
    for start in range(0, n_boot, 256):
        idx = rng.integers(0, n_groups, size=(min(256, n_boot - start), n_groups))
        offsets = (idx + n_groups * np.arange(len(idx))[:, None]).ravel()
        yield np.bincount(offsets, minlength=idx.size).reshape(idx.shape)[:, g].astype(float)


def anchored_bootstrap(y, d, groups, ya, da, groups_a, n_boot=2000, seed=0, level=0.95):
    """Percentile intervals of (LC, slope): the held-out prompts and the anchor's prompts resampled
    independently, both fits redone on every resample."""
    lcs, slopes = [], []
    rng_a = np.random.default_rng([seed, 1])
    for w in _group_weights(groups, n_boot, np.random.default_rng(seed)):
        wa = next(_group_weights(groups_a, len(w), rng_a))
        lc, slope, _ = anchored_fit(y, d, ya, da, w, wa)
        lcs.append(lc)
        slopes.append(slope)
    q = [(1 - level) / 2, (1 + level) / 2]
    return ([float(v) for v in np.quantile(np.concatenate(lcs), q)],
            [float(v) for v in np.quantile(np.concatenate(slopes), q)])


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _decisive(y) -> int:
    return int(np.isin(y, (0.0, 1.0)).sum())


def lc_anchored(y, len_pol, len_sft, groups, anchor: Anchor, n_boot: int = 2000, seed: int = 0) -> dict:
    """The eval.json LC fields with the slope from `anchor`: lc_win_rate, lc_win_rate_ci, length_coef
    (the slope used), lc_status ("ok", "no_lengths", "no_anchor", "too_few_decisive",
    "lopsided_lengths"), lc_reason, lc_method, and length_anchor (where the slope came from)."""
    y, lp, ls = (np.asarray(v, dtype=float) for v in (y, len_pol, len_sft))
    ok = np.isfinite(y) & np.isfinite(lp) & np.isfinite(ls)
    y, lp, ls, groups = y[ok], lp[ok], ls[ok], np.asarray(groups)[ok]
    rec = {"source": anchor.source, "n_prompts": 0, "n_comparisons": 0, "n_decisive": 0, "slope": None,
           "slope_ci": [None, None], "scale_tokens": None, "support": None}
    res = {"lc_win_rate": None, "lc_win_rate_ci": [None, None], "length_coef": None,
           "lc_method": "same-model anchor", "length_anchor": rec}

    def refuse(status, reason):
        return {**res, "lc_status": status, "lc_reason": reason}

    if not y.size:
        return refuse("no_lengths", "no judged outcome with both lengths known")
    a = anchor.outcomes.drop_nulls(["y", "len_policy", "len_sft"]) if anchor.outcomes is not None else None
    if a is None or not a.height:
        return refuse("no_anchor", anchor.reason or "no same-model comparison with both lengths known")
    ya, la, lb = (a[c].to_numpy().astype(float) for c in ("y", "len_policy", "len_sft"))
    rec.update(n_prompts=a["prompt_id"].n_unique(), n_comparisons=a.height, n_decisive=_decisive(ya))
    if rec["n_decisive"] < MIN_DECISIVE:
        return refuse("no_anchor", f"{rec['n_decisive']} decisive same-model comparisons of {a.height}, "
                                   f"need {MIN_DECISIVE}")
    lc, slope, scale = anchored_fit(y, lp - ls, ya, la - lb)
    share, edge_d, edge_ratio = support(lp, ls, la, lb)
    rec.update(slope=_num(slope[0]), scale_tokens=_num(scale[0]),
               support={"abs_diff_tokens": edge_d, "length_ratio": edge_ratio, "outcomes_inside": share})
    res["length_coef"] = rec["slope"]
    if _decisive(y) < MIN_DECISIVE:
        return refuse("too_few_decisive", f"{_decisive(y)} decisive outcomes of {y.size}, need {MIN_DECISIVE}")
    if share < MIN_IN_SUPPORT:
        d = lp - ls
        return refuse("lopsided_lengths", (
            f"lengths outside the same-model comparisons' range: {share:.0%} of outcomes within ±{edge_d:.0f} "
            f"tokens and a length ratio within {edge_ratio:.2f}x, need {MIN_IN_SUPPORT:.0%}; "
            f"difference {d.mean():+.0f} ± {d.std():.0f} tokens"))
    lc_ci, slope_ci = anchored_bootstrap(y, lp - ls, groups, ya, la - lb, a["prompt_id"].to_numpy(), n_boot, seed)
    res.update(lc_win_rate=_num(lc[0]), lc_win_rate_ci=lc_ci)
    rec["slope_ci"] = slope_ci
    return {**res, "lc_status": "ok", "lc_reason": None}


def anchor_matchups(cands: pl.DataFrame, max_prompts: int, same_text) -> pl.DataFrame:
    """One pair of one model's complete answers per prompt, for up to max_prompts prompts, in
    evaluate's matchup shape (policy_* = sample a, sft_* = sample b). The pair is the first two
    candidates by id whose texts differ: never chosen by a judge's score, which would select on
    quality (best_vs_worst's confirmations are such pairs, so they are not used). Prompts are taken
    in a fixed hash order, so a capped anchor spreads over the prompt file."""
    if cands.is_empty() or max_prompts <= 0:
        return pl.DataFrame()
    done = cands.filter(pl.col("finish_reason") == "stop").sort("candidate_id")
    rows = []
    for (pid, *_), grp in done.group_by("prompt_id", "model", "adapter", maintain_order=True):
        ids, texts, n = grp["candidate_id"].to_list(), grp["response"].to_list(), grp["num_tokens"].to_list()
        j = next((j for j in range(1, len(ids)) if not same_text(texts[0], texts[j])), None)
        if j is not None:
            rows.append({"prompt_id": pid, "messages": grp["messages"].to_list()[0], "policy_id": ids[0],
                         "sft_id": ids[j], "policy_text": texts[0], "sft_text": texts[j], "identical": False,
                         "policy_tokens": n[0], "sft_tokens": n[j], "_h": stable_id(pid)})
    if not rows:
        return pl.DataFrame()
    m = pl.DataFrame(rows).unique("prompt_id", keep="first", maintain_order=True)
    return m.sort("_h").head(max_prompts).drop("_h").sort("prompt_id")
