"""Small statistics shared by the judge audit and evaluation (numpy only): the length term of
AlpacaEval 2's length-controlled GLM, its ridge-penalised logistic fit, and when that fit means nothing.

AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic
Evaluators", arXiv 2404.04475; code: tatsu-lab/alpaca_eval, src/alpaca_eval/metrics/glm_winrate.py)
fits logit P(model wins) on tanh(length difference / its sample standard deviation) plus an
instruction-difficulty term and a model term, penalised (their `fit_LogisticRegressionCV`:
scikit-learn liblinear with an L1 penalty and its strength picked by 5-fold cross-validation;
the paper describes it as L2), and additionally regularises the length slope towards the value
that explains verbose and concise prompted copies of the baseline (`regularize_to_baseline_lambda`
= 0.2). One run has neither their per-instruction difficulties nor gamed copies of its baseline,
so this fit keeps their feature and replaces both regularisers by one fixed L2 penalty on the
length slope only (never on the intercept, which is what LC reads).
"""
from __future__ import annotations

import numpy as np

# Strength of the L2 penalty on the length slope, in units of the summed log-likelihood: the
# penalty (LENGTH_L2 / 2) * b1^2 is a Gaussian prior b1 ~ N(0, 2^2). AlpacaEval 2 publishes the
# fitted slope of every leaderboard model (weights/weighted_alpaca_eval_gpt4_turbo/
# length_controlled_v1/baseline_gpt4_1106_preview.csv): |b1| from 0.25 to 2.98, most near 1.5, so
# a real judge's length preference lies well inside +-2 sd and is barely shrunk once there are a
# few dozen outcomes, while a runaway slope such as -11.5 costs 16.5 nats, more than any handful
# of outcomes can pay for. Shrinking the slope moves LC towards the raw win rate, never past it.
LENGTH_L2 = 0.25
# Fewer decisive (non-tied) outcomes than this and LC is not reported: the events-per-variable
# rule for logistic regression asks for at least 10 outcomes per fitted slope (Peduzzi et al.
# 1996, J Clin Epidemiol 49:1373); ties are fitted as half outcomes but say little about a slope.
MIN_DECISIVE = 10
# LC is the fit read at zero length difference; it is interpolation only when some outcomes lie
# near there. Lopsided: under this share of outcomes lie within one standard deviation of zero
# difference or on the minority side of it, i.e. over 90% differ in the same direction by more
# than the spread of the differences (tanh feature beyond +-0.76), and LC is an extrapolation.
MIN_NEAR_EQUAL = 0.10


def _sd(diff: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Sample standard deviation (ddof=1, as pandas' Series.std in AlpacaEval), per row of w when
    w holds frequency weights (bootstrap counts) of shape (B, n)."""
    if w is None:
        return np.asarray(diff.std(ddof=1) if diff.size > 1 else 0.0)
    n = w.sum(1)
    mean = w @ diff / n
    return np.sqrt((w * (diff - mean[:, None]) ** 2).sum(1) / np.maximum(n - 1, 1))


def length_feature(diff: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """tanh(diff / sd(diff)): the length term of AlpacaEval 2's GLM; zeros when all diffs are equal.
    With frequency weights w of shape (B, n), one standardisation per row: shape (B, n)."""
    diff = np.asarray(diff, dtype=float)
    sd = _sd(diff, w)
    if w is None:
        return np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)
    sd = sd[:, None]
    return np.tanh(np.divide(diff, sd, out=np.zeros(np.shape(w)), where=sd > 0))


def _objective(b0, b1, x, y, w, l2, ridge):
    z = b0[:, None] + b1[:, None] * x
    ll = -(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z))  # stable log-sigmoid
    return (w * ll).sum(1) - 0.5 * (l2 + ridge) * b1 ** 2 - 0.5 * ridge * b0 ** 2


def logistic_fit_batch(x, y, w, l2: float = LENGTH_L2, ridge: float = 1e-6, iters: int = 100):
    """Maximise sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)] - l2/2 b1^2, p = sigmoid(b0 + b1 x),
    for each row of x and w (shape (B, n); y shape (n,)) at once, by Newton's method with step
    halving. y may be fractional (ties = 0.5): the objective stays concave. The tiny ridge on
    both terms keeps the intercept finite when every outcome is a win (or a loss)."""
    x, w, y = np.atleast_2d(x).astype(float), np.atleast_2d(w).astype(float), np.asarray(y, dtype=float)
    b0, b1 = np.zeros(len(w)), np.zeros(len(w))
    obj = _objective(b0, b1, x, y, w, l2, ridge)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(b0[:, None] + b1[:, None] * x)))
        r, h = w * (y - p), w * p * (1 - p)
        g0, g1 = r.sum(1) - ridge * b0, (r * x).sum(1) - (l2 + ridge) * b1
        h00, h01, h11 = h.sum(1) + ridge, (h * x).sum(1), (h * x * x).sum(1) + l2 + ridge
        det = h00 * h11 - h01 ** 2
        s0, s1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        t = np.ones(len(w))
        for _ in range(30):  # halve the step where it would lower the objective
            new = _objective(b0 + t * s0, b1 + t * s1, x, y, w, l2, ridge)
            bad = new < obj - 1e-12 * np.abs(obj)
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        b0, b1, obj = b0 + t * s0, b1 + t * s1, np.maximum(new, obj)
        if max(np.abs(t * s0).max(), np.abs(t * s1).max()) < 1e-10:
            break
    return b0, b1


def logistic_fit(x, y, l2: float = LENGTH_L2, ridge: float = 1e-6) -> tuple[float, float]:
    """(intercept, coefficient) of P(y=1) = sigmoid(b0 + b1 x), the coefficient L2-penalised by l2."""
    x = np.asarray(x, dtype=float)
    b0, b1 = logistic_fit_batch(x, y, np.ones_like(x), l2, ridge)
    return float(b0[0]), float(b1[0])


def lc_bootstrap_ci(y, diff, groups, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of LC, sigmoid(b0): whole prompts (`groups`) resampled, the
    feature restandardised and the penalised fit redone on each resample; the draws are those of
    rlaif.evaluate.metrics.bootstrap_ci with the same seed and groups, so both intervals see the
    same resampled prompts."""
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups, rng, stats = g.max() + 1, np.random.default_rng(seed), []
    for start in range(0, n_boot, 256):  # chunks of 256 resamples bound memory at 256 x n rows
        idx = rng.integers(0, n_groups, size=(min(256, n_boot - start), n_groups))
        offsets = (idx + n_groups * np.arange(len(idx))[:, None]).ravel()
        counts = np.bincount(offsets, minlength=idx.size).reshape(idx.shape)
        w = counts[:, g].astype(float)  # every answer to a drawn prompt, as often as it was drawn
        b0, _ = logistic_fit_batch(length_feature(diff, w), y, w)
        stats.append(1 / (1 + np.exp(-b0)))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(np.concatenate(stats), [alpha, 1 - alpha])
    return float(lo), float(hi)


def length_fit_status(y, diff) -> tuple[str, str | None]:
    """("ok", None), or (status, short reason) when a length-controlled figure would mean nothing:
    "too_few_decisive" (fewer than MIN_DECISIVE outcomes that are not ties) or "lopsided_lengths"
    (see MIN_NEAR_EQUAL)."""
    y, diff = np.asarray(y, dtype=float), np.asarray(diff, dtype=float)
    decisive = int(np.isin(y, (0.0, 1.0)).sum())
    if decisive < MIN_DECISIVE:
        return "too_few_decisive", f"{decisive} decisive outcomes of {y.size}, need {MIN_DECISIVE}"
    sd, major = float(_sd(diff)), np.sign(np.sign(diff).sum())
    near = float(((np.abs(diff) <= sd) | (np.sign(diff) != major)).mean())
    if near < MIN_NEAR_EQUAL:
        return "lopsided_lengths", (f"lengths lopsided: {near:.0%} of outcomes near equal length, need "
                                    f"{MIN_NEAR_EQUAL:.0%}; difference {diff.mean():+.0f} ± {sd:.0f} tokens")
    return "ok", None


def _objective1(t, x, y, w, off, l2):
    z = t[:, None] * x + off
    ll = -(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z))
    return (w * ll).sum(1) - 0.5 * l2 * t ** 2


def fit_one_batch(x, y, w, offset=0.0, l2: float = 1e-6, iters: int = 100) -> np.ndarray:
    """One coefficient per row: maximise sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)] - l2/2 t^2,
    p = sigmoid(t x_i + offset_i), for rows of x, w and offset (shape (B, n); y shape (n,)), by
    Newton's method with step halving (the objective is concave; y may be fractional). Two uses in
    the anchored LC (rlaif/evaluate/lc_anchor.py): the judge's length slope with no intercept
    (x = the length feature, offset 0), and the intercept under a fixed length term (x = 1,
    offset = slope * feature). The default l2 only keeps t finite when every outcome is a win."""
    w = np.atleast_2d(w).astype(float)
    x, off = np.broadcast_to(x, w.shape).astype(float), np.broadcast_to(offset, w.shape).astype(float)
    y, t = np.asarray(y, dtype=float), np.zeros(len(w))
    obj = _objective1(t, x, y, w, off, l2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(t[:, None] * x + off)))
        g = (w * (y - p) * x).sum(1) - l2 * t
        h = (w * p * (1 - p) * x * x).sum(1) + l2
        s, a = g / h, np.ones(len(w))
        for _ in range(30):  # halve the step where it would lower the objective
            new = _objective1(t + a * s, x, y, w, off, l2)
            bad = new < obj - 1e-12 * np.abs(obj)
            if not bad.any():
                break
            a = np.where(bad, a / 2, a)
        t, obj = t + a * s, np.maximum(new, obj)
        if np.abs(a * s).max() < 1e-10:
            break
    return t
