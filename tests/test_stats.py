"""rlaif.stats: the penalised length fit against brute force, its refusal rules, its bootstrap interval, and the judge audit's use of it."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rlaif.evaluate.metrics import lc_summary, lc_win_rate
from rlaif.judge.trust.audit import length_stats
from rlaif.stats import (LENGTH_L2, MIN_DECISIVE, length_feature, length_fit_status, logistic_fit,
                         logistic_fit_batch)


def _penalised_loss(b0, b1, x, y, l2):
    """The objective written out independently: summed log-loss plus l2 / 2 * b1^2, on a grid."""
    z = b0[..., None] + b1[..., None] * x
    p = 1 / (1 + np.exp(-z))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1) + 0.5 * l2 * b1 ** 2


def _grid_best(g0, g1, x, y, l2):
    B0, B1 = np.meshgrid(g0, g1, indexing="ij")
    loss = np.stack([_penalised_loss(B0[i], B1[i], x, y, l2) for i in range(len(g0))])
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    return B0[i, j], B1[i, j], loss[i, j]


def _grid_min(x, y, l2):
    """Brute force: a 0.05 grid over b0 in [-6, 6], b1 in [-8, 8], then a 0.001 grid around its best point."""
    c0, c1, _ = _grid_best(np.arange(-6, 6.001, 0.05), np.arange(-8, 8.001, 0.05), x, y, l2)
    return _grid_best(np.arange(c0 - 0.1, c0 + 0.1, 0.001), np.arange(c1 - 0.1, c1 + 0.1, 0.001), x, y, l2)


@pytest.mark.parametrize("case", ["mixed", "lopsided", "separable"])
def test_fit_matches_brute_force_grid(case):
    rng = np.random.default_rng(11)
    n = 60
    if case == "mixed":  # wins, losses and ties over a spread of length differences
        d = rng.normal(20, 80, n)
        y = np.where(rng.random(n) < 0.2, 0.5, (rng.random(n) < 1 / (1 + np.exp(-np.tanh(d / 80)))).astype(float))
    elif case == "lopsided":  # every difference far to one side: the slope is barely identified
        d = rng.normal(-190, 40, n)
        y = (rng.random(n) < 0.1).astype(float)
    else:  # the longer answer always wins: unpenalised, the slope would run to infinity
        d = rng.normal(0, 60, n)
        y = (d > 0).astype(float)
    x = length_feature(d)
    b0, b1 = logistic_fit(x, y)
    g0, g1, gloss = _grid_min(x, y, LENGTH_L2)
    assert abs(b0 - g0) < 2e-3 and abs(b1 - g1) < 2e-3, (b0, b1, g0, g1)
    assert _penalised_loss(np.array(b0), np.array(b1), x, y, LENGTH_L2) <= gloss + 1e-9


def test_feature_is_alpaca_evals_and_weights_are_repeats():
    d = np.array([-30.0, -5.0, 0.0, 12.0, 80.0])
    assert np.allclose(length_feature(d), np.tanh(d / np.std(d, ddof=1)))  # pandas' Series.std: ddof=1
    assert np.allclose(length_feature(np.zeros(5)), 0) and np.allclose(length_feature(np.full(4, 7.0)), 0)
    w = np.array([[1, 1, 1, 1, 1], [0, 2, 1, 0, 3], [5, 0, 0, 0, 0]], dtype=float)
    f = length_feature(d, w)
    expanded = np.repeat(d, w[1].astype(int))
    assert np.allclose(f[0], length_feature(d)) and np.allclose(f[2], 0)
    assert np.allclose(f[1][w[1] > 0], np.tanh(d[w[1] > 0] / expanded.std(ddof=1)))
    y = np.array([0.0, 1.0, 0.5, 1.0, 1.0])
    b0, b1 = logistic_fit_batch(f, y, w)
    x1 = length_feature(expanded)
    y1 = np.repeat(y, w[1].astype(int))
    assert (b0[1], b1[1]) == pytest.approx(logistic_fit(x1, y1), abs=1e-8)  # weights = repeated rows
    assert (b0[0], b1[0]) == pytest.approx(logistic_fit(f[0], y), abs=1e-8)


def test_all_wins_stays_finite():
    b0, b1 = logistic_fit(np.linspace(-1, 1, 30), np.ones(30))
    assert np.isfinite(b0) and b0 > 5 and abs(b1) < 5


def test_status_thresholds():
    d = np.linspace(-50, 50, 40)
    y = np.full(40, 0.5)
    y[: MIN_DECISIVE - 1] = 1.0
    assert length_fit_status(y, d)[0] == "too_few_decisive"
    y[MIN_DECISIVE - 1] = 0.0
    assert length_fit_status(y, d) == ("ok", None)
    # 91 answers ~1000 tokens shorter, 9 of equal length: 9% near equal length -> lopsided; 11 -> fine.
    for near, want in ((9, "lopsided_lengths"), (11, "ok")):
        d = np.concatenate([-1000 + np.arange(100 - near), np.zeros(near)])
        assert length_fit_status(np.tile([0.0, 1.0], 50), d)[0] == want, near
    status, reason = length_fit_status(np.tile([0.0, 1.0], 20), np.full(40, 25.0))  # all equally longer
    assert status == "lopsided_lengths" and "difference +25 ± 0 tokens" in reason


def _grouped(seed, n_prompts=120):
    """Two answers per prompt (groups), a judge with known quality 0.4 logits and length slope 1.5."""
    rng = np.random.default_rng(seed)
    ls = rng.normal(200, 60, 2 * n_prompts).clip(10).round()
    lp = (ls + rng.normal(40, 80, ls.size)).clip(5).round()
    d = lp - ls
    p = 1 / (1 + np.exp(-(0.4 + 1.5 * np.tanh(d / d.std(ddof=1)))))
    a, b = rng.random(p.size) < p, rng.random(p.size) < p  # both orders
    return np.where(a & b, 1.0, np.where(~a & ~b, 0.0, 0.5)), lp, ls, np.repeat(np.arange(n_prompts), 2)


def test_lc_bootstrap_matches_a_plain_resampling_loop():
    y, lp, ls, groups = _grouped(5)
    s = lc_summary(y, lp, ls, groups, n_boot=300, seed=7)
    assert s["lc_status"] == "ok" and s["lc_win_rate_ci"][0] < s["lc_win_rate"] < s["lc_win_rate_ci"][1]
    # Independently: the same prompt draws, each resample built row by row and refitted from scratch.
    rng, n_groups, lcs = np.random.default_rng(7), groups.max() + 1, []
    for start in range(0, 300, 256):
        for drawn in rng.integers(0, n_groups, size=(min(256, 300 - start), n_groups)):
            rows = np.concatenate([np.flatnonzero(groups == k) for k in drawn])
            lcs.append(lc_win_rate(y[rows], lp[rows], ls[rows])[0])
    assert s["lc_win_rate_ci"] == pytest.approx(list(np.quantile(lcs, [0.025, 0.975])), abs=1e-9)
    assert lc_summary(y, lp, ls, groups, n_boot=300, seed=7) == s
    assert lc_summary(y, lp, ls, groups, n_boot=300, seed=8)["lc_win_rate_ci"] != s["lc_win_rate_ci"]


def test_lc_bootstrap_coverage():
    true, hits = 1 / (1 + np.exp(-0.4)), 0  # the judge's win rate at zero length difference
    for rep in range(100):
        y, lp, ls, groups = _grouped(100 + rep, n_prompts=100)
        lo, hi = lc_summary(y, lp, ls, groups, n_boot=300, seed=rep)["lc_win_rate_ci"]
        hits += lo <= true <= hi
    assert 0.90 <= hits / 100 <= 0.99, hits


def _audit(diffs, longer_wins):
    """Pairwise judge calls on pairs whose length differences are `diffs`; the longer answer wins where longer_wins."""
    cands = pl.DataFrame({"candidate_id": [f"{s}{i}" for i in range(len(diffs)) for s in "ab"],
                          "num_tokens": [int(v) for d in diffs for v in (100 + d, 100)]})
    verdict = ["a" if (d > 0) == w else "b" for d, w in zip(diffs, longer_wins)]
    pw = pl.DataFrame({"prompt_id": [f"q{i}" for i in range(len(diffs))], "a_id": [f"a{i}" for i in range(len(diffs))],
                       "b_id": [f"b{i}" for i in range(len(diffs))], "order": "ab", "verdict": verdict})
    return length_stats(pw, cands)


def test_judge_audit_uses_the_penalised_fit():
    rng = np.random.default_rng(3)
    d = rng.normal(0, 60, 20).round()
    d[d == 0] = 1
    wins = np.ones(20, dtype=bool)
    wins[np.argmin(np.abs(d))] = False  # the longer answer wins 95% of calls; the exception is the closest pair
    r = _audit(d, wins)
    assert r["longer_wins_rate"] == pytest.approx(0.95) and r["length_coef_reason"] is None
    assert 1 < r["length_coef"] < 6, r  # unpenalised: 489.7 on these calls
    few = _audit(d[:5], wins[:5])
    assert few["length_coef"] is None and few["length_coef_reason"] == "5 decisive outcomes of 5, need 10"
