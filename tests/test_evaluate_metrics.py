"""Evaluation math and report: synthetic judges with known truth, no models (fast, seeded)."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from rlaif.evaluate.metrics import (bootstrap_ci, implicit_reward_accuracy, invalid_rate, lc_summary, lc_win_rate,
                                    length_hacking, outcomes, pair_counts, position_consistency, summarize, win_rate)
from rlaif.evaluate.report import write_report
from rlaif.stats import LENGTH_L2, length_feature, logistic_fit


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _judge(p_policy: np.ndarray, rng) -> pl.DataFrame:
    """Both-order pairwise judgments where the policy answer wins each call with probability p.
    Which answer is a_id is random per pair, so the a/b -> policy/SFT mapping is exercised."""
    rows = []
    for i, p in enumerate(p_policy):
        pol, sft = f"P{i}", f"S{i}"
        a, b = (pol, sft) if rng.random() < 0.5 else (sft, pol)
        for order in ("ab", "ba"):
            policy_won = rng.random() < p
            rows.append({"prompt_id": f"q{i}", "kind": "pairwise", "a_id": a, "b_id": b, "order": order,
                         "verdict": "a" if policy_won == (a == pol) else "b"})
    return pl.DataFrame(rows)


def _synthetic(n, b0, b1, policy_shift, seed=0):
    rng = np.random.default_rng(seed)
    len_sft = rng.normal(200, 40, n).clip(5).round()
    len_pol = (len_sft + rng.normal(policy_shift, 100, n)).clip(5).round()
    diff = len_pol - len_sft
    p = _sigmoid(b0 + b1 * np.tanh(diff / diff.std()))
    tokens = {**{f"P{i}": int(v) for i, v in enumerate(len_pol)}, **{f"S{i}": int(v) for i, v in enumerate(len_sft)}}
    return outcomes(_judge(p, rng), {f"P{i}" for i in range(n)}, tokens)


def test_length_biased_judge_equal_quality_lc_near_half():
    out = _synthetic(3000, b0=0.0, b1=3.0, policy_shift=150)  # policy only longer, judge loves length
    raw = win_rate(out["y"])
    lc, coef = lc_win_rate(out["y"], out["len_policy"], out["len_sft"])
    assert raw > 0.7, raw
    assert abs(lc - 0.5) < 0.08, (raw, lc)
    assert coef > 1.5


def test_truly_better_policy_both_high():
    out = _synthetic(3000, b0=1.5, b1=1.5, policy_shift=0)  # same length distribution, better answers
    lc, _ = lc_win_rate(out["y"], out["len_policy"], out["len_sft"])
    assert win_rate(out["y"]) > 0.7 and lc > 0.7, (win_rate(out["y"]), lc)


def _irls_weighted(x, y, w, l2=0.0, iters=100):
    """Independent IRLS: binary targets with case weights (the textbook form of fractional targets),
    the slope penalised by l2 / 2 * b1^2 (penalised normal equations (X'WX + P) b = X'Wz)."""
    X = np.column_stack([np.ones_like(x), x])
    P = np.diag([0.0, l2])
    b = np.zeros(2)
    for _ in range(iters):
        p = _sigmoid(X @ b)
        W = w * p * (1 - p)
        z = X @ b + (y - p) / np.maximum(p * (1 - p), 1e-12)
        b_new = np.linalg.solve(X.T @ (X * W[:, None]) + P, X.T @ (W * z))
        if np.abs(b_new - b).max() < 1e-12:
            return b_new
        b = b_new
    return b


def _alpaca_feature(d):
    """AlpacaEval 2's length feature written out: tanh(diff / sample sd) (pandas .std(), ddof=1)."""
    return np.tanh(d / np.sqrt(np.sum((d - d.mean()) ** 2) / (d.size - 1)))


@pytest.mark.parametrize("l2", [0.0, LENGTH_L2, 5.0])
def test_lc_matches_independent_irls(l2):
    out = _synthetic(1500, b0=0.4, b1=1.0, policy_shift=60, seed=3)
    y = out["y"].to_numpy()
    assert (y == 0.5).any()  # the split-orders case is exercised
    d = (out["len_policy"] - out["len_sft"]).to_numpy().astype(float)
    x = _alpaca_feature(d)
    # A half outcome is one win and one loss at weight 1/2 each: the duplication AlpacaEval 2's
    # fit_LogisticRegressionCV does for probabilistic preferences (tatsu-lab/alpaca_eval glm_winrate.py).
    xx, yy, ww = np.concatenate([x, x]), np.concatenate([np.ones_like(y), np.zeros_like(y)]), np.concatenate([y, 1 - y])
    b0, b1 = _irls_weighted(xx, yy, ww, l2)
    b0_, b1_ = logistic_fit(length_feature(d), y, l2=l2)
    assert abs(b0_ - b0) < 1e-6 and abs(b1_ - b1) < 1e-6
    if l2 == LENGTH_L2:  # the default that LC uses
        lc, coef = lc_win_rate(y, out["len_policy"], out["len_sft"])
        assert abs(lc - _sigmoid(b0)) < 1e-6 and abs(coef - b1) < 1e-6


def _split_orders(p, rng):
    """y from two judge calls (both orders) that the policy wins with probability p each."""
    a, b = rng.random(p.size) < p, rng.random(p.size) < p
    return np.where(a & b, 1.0, np.where(~a & ~b, 0.0, 0.5))


def _degenerate_short(seed=6, n=400):
    """A policy answering every prompt in one short line (6-14 tokens vs SFT's ~200): wins ~3%."""
    rng = np.random.default_rng(seed)
    ls = rng.normal(200, 40, n).clip(20).round()
    return _split_orders(np.full(n, 0.04), rng), rng.integers(6, 15, n).astype(float), ls


def _very_long(seed=6, n=400):
    """A policy answering 3-5 times longer than SFT, which the judge prefers 92% of the time."""
    rng = np.random.default_rng(seed)
    ls = rng.normal(200, 40, n).clip(20).round()
    return _split_orders(np.full(n, 0.92), rng), (ls * rng.uniform(3, 5, n)).round(), ls


def _two_informative():
    """The quickstart's shape: 16 prompts, 14 identical answers (ties at zero difference), and two
    decided: the longer policy answer lost, the shorter one won."""
    ls, lp, y = np.full(16, 98.0), np.full(16, 98.0), np.full(16, 0.5)
    lp[14], lp[15], y[14], y[15] = 118.0, 90.0, 0.0, 1.0
    return y, lp, ls


# LC of these cases with the unpenalised fit this replaced: degenerate short 1.000 (raw 0.030,
# slope 56.7), very long 0.000 (raw 0.924, slope 14.1), two informative 0.500 (slope -12.7).
def test_lc_degenerate_short_policy_stays_near_raw_and_is_refused():
    y, lp, ls = _degenerate_short()
    lc, coef = lc_win_rate(y, lp, ls)
    assert y.mean() < 0.05 and abs(lc - y.mean()) < 0.02 and abs(coef) < 1, (y.mean(), lc, coef)
    s = lc_summary(y, lp, ls, np.arange(y.size), n_boot=200)
    assert s["lc_win_rate"] is None and s["lc_win_rate_ci"] == [None, None]
    assert s["lc_status"] == "lopsided_lengths" and "0% of outcomes near equal length" in s["lc_reason"], s


def test_lc_very_long_policy_stays_near_raw_and_is_refused():
    y, lp, ls = _very_long()
    lc, coef = lc_win_rate(y, lp, ls)
    assert y.mean() > 0.9 and abs(lc - y.mean()) < 0.05 and abs(coef) < 1, (y.mean(), lc, coef)
    s = lc_summary(y, lp, ls, np.arange(y.size), n_boot=200)
    assert s["lc_win_rate"] is None and s["lc_status"] == "lopsided_lengths" and "+" in s["lc_reason"], s


def test_lc_two_informative_outcomes_is_null_with_reason():
    y, lp, ls = _two_informative()
    lc, coef = lc_win_rate(y, lp, ls)
    assert abs(coef) < 3 and abs(lc - 0.5) < 0.02, (lc, coef)  # was -12.7: a runaway slope
    s = lc_summary(y, lp, ls, np.arange(16))
    assert s == {"lc_win_rate": None, "lc_win_rate_ci": [None, None], "length_coef": pytest.approx(coef),
                 "lc_status": "too_few_decisive", "lc_reason": "2 decisive outcomes of 16, need 10"}
    none = lc_summary(y, np.full(16, np.nan), ls, np.arange(16))
    assert none["lc_status"] == "no_lengths" and none["length_coef"] is None


def test_bootstrap_ci_coverage():
    rng = np.random.default_rng(1)
    true = 0.6  # P(1)=0.5, P(0.5)=0.2, P(0)=0.3
    hits = 0
    for rep in range(200):
        y = rng.choice([1.0, 0.5, 0.0], size=150, p=[0.5, 0.2, 0.3])
        lo, hi = bootstrap_ci(y, n_boot=1000, seed=rep)
        hits += lo <= true <= hi
    assert 0.90 <= hits / 200 <= 0.99, hits


def test_bootstrap_groups_and_empty():
    y = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    lo, hi = bootstrap_ci(y, n_boot=500, groups=["a", "a", "b", "b", "c", "c"])
    assert 0 <= lo <= hi <= 1
    assert all(np.isnan(bootstrap_ci([])))


def _hand_judgments():
    # q1 policy wins twice; q2 split (inconsistent); q3 tie + invalid; q4 tie/tie; q5 one order only;
    # q6 SFT twice (policy is b_id there); q7 SFT vs SFT, not a policy comparison.
    r = [("q1", "P1", "S1", "ab", "a"), ("q1", "P1", "S1", "ba", "a"),
         ("q2", "S2", "P2", "ab", "a"), ("q2", "S2", "P2", "ba", "b"),
         ("q3", "P3", "S3", "ab", "tie"), ("q3", "P3", "S3", "ba", "invalid"),
         ("q4", "P4", "S4", "ab", "tie"), ("q4", "P4", "S4", "ba", "tie"),
         ("q5", "P5", "S5", "ab", "a"),
         ("q6", "S6", "P6", "ab", "a"), ("q6", "S6", "P6", "ba", "a"),
         ("q7", "S7", "T7", "ab", "a"), ("q7", "S7", "T7", "ba", "a")]
    return pl.DataFrame(r, schema=["prompt_id", "a_id", "b_id", "order", "verdict"], orient="row").with_columns(
        kind=pl.lit("pairwise"))


def test_outcomes_ties_inconsistent_invalid():
    j = _hand_judgments()
    pol = {f"P{i}" for i in range(1, 8)}
    tokens = {**{f"P{i}": 10 * i for i in range(1, 8)}, **{f"S{i}": i for i in range(1, 8)}}
    out = outcomes(j, pol, tokens).sort("prompt_id")
    assert dict(zip(out["prompt_id"], out["y"])) == {"q1": 1.0, "q2": 0.5, "q4": 0.5, "q6": 0.0}
    q6 = out.filter(pl.col("prompt_id") == "q6").row(0, named=True)
    assert (q6["policy_id"], q6["sft_id"], q6["policy_first"], q6["sft_first"]) == ("P6", "S6", "sft", "sft")
    assert out["len_policy"].to_list() == [10, 20, 40, 60] and out["len_sft"].to_list() == [1, 2, 4, 6]
    assert pair_counts(j, pol) == {"pairs_both_orders": 5, "invalid_excluded": 1, "single_order": 1}
    # Pairs valid in both orders: q1 agree, q2 disagree, q4 agree, q6 agree, q7 agree -> 4/5.
    assert position_consistency(j) == pytest.approx(0.8)
    assert invalid_rate(j) == pytest.approx(1 / 13)


def test_summarize_contract():
    j = _hand_judgments()
    pol = [f"P{i}" for i in range(1, 8)]
    tokens = {**{f"P{i}": 10 * i for i in range(1, 8)}, **{f"S{i}": i for i in range(1, 8)}}
    s = summarize(j, pol, tokens, reward_accuracy=0.75, n_boot=200)
    for k in ("win_rate", "win_rate_ci", "lc_win_rate", "length_coef", "policy_mean_tokens", "sft_mean_tokens",
              "policy_median_tokens", "sft_median_tokens", "position_consistency", "invalid_rate", "n_comparisons",
              "reward_accuracy"):
        assert k in s, k
    assert s["win_rate"] == pytest.approx(0.5) and s["n_comparisons"] == 4 and s["n_invalid_excluded"] == 1
    assert s["lc_win_rate"] is None and s["lc_win_rate_ci"] == [None, None]  # q1 and q6 decided, q2 and q4 tied
    assert s["lc_status"] == "too_few_decisive" and s["lc_reason"] == "2 decisive outcomes of 4, need 10"
    assert s["policy_mean_tokens"] == pytest.approx(np.mean([10, 20, 30, 40, 50, 60]))  # invalid q3 still counts
    json.dumps(s)  # eval.json-ready: plain floats, no NaN objects
    empty = summarize(j.head(0), pol, tokens)
    assert empty["win_rate"] is None and empty["n_comparisons"] == 0


def test_implicit_reward_accuracy():
    assert implicit_reward_accuracy([1.0, 0.2, -0.5, 0.3], [0.5, 0.4, -1.0, 0.3], beta=0.1) == pytest.approx(0.5)


def test_length_hacking_both_ways():
    prev = {"policy_mean_tokens": 200.0, "lc_win_rate": 0.55}
    assert "length hacking" in length_hacking(prev, {"policy_mean_tokens": 260.0, "lc_win_rate": 0.54}, 0.2)
    assert length_hacking(prev, {"policy_mean_tokens": 260.0, "lc_win_rate": 0.60}, 0.2) is None  # quality rose too
    assert length_hacking(prev, {"policy_mean_tokens": 230.0, "lc_win_rate": 0.50}, 0.2) is None  # grew 15% only
    assert length_hacking(prev, {"policy_mean_tokens": None, "lc_win_rate": 0.5}, 0.2) is None


def test_length_hacking_with_a_null_lc():
    prev = {"policy_mean_tokens": 200.0, "lc_win_rate": 0.55, "lc_status": "ok"}
    lopsided = {"lc_win_rate": None, "lc_status": "lopsided_lengths", "sft_mean_tokens": 200.0,
                "lc_reason": "lengths lopsided: 2% of outcomes near equal length, need 10%; difference +640 ± 90 tokens"}
    # Grown past the limit and so much longer than SFT that LC cannot be computed: the stop fires.
    msg = length_hacking(prev, {**lopsided, "policy_mean_tokens": 840.0}, 0.2)
    assert msg.startswith("length hacking: policy answers grew 320%") and "cannot show quality rose" in msg
    assert "+640 ± 90 tokens" in msg
    assert length_hacking(prev, {**lopsided, "policy_mean_tokens": 230.0}, 0.2) is None  # grew 15% only
    short = {**lopsided, "sft_mean_tokens": 900.0, "policy_mean_tokens": 260.0}  # lopsidedly shorter, growing
    assert length_hacking(prev, short, 0.2) is None
    few = {"policy_mean_tokens": 400.0, "lc_win_rate": None, "lc_status": "too_few_decisive", "lc_reason": "3 ..."}
    assert length_hacking(prev, few, 0.2) is None  # no evidence either way: cannot tell
    assert length_hacking({**prev, "lc_win_rate": None, "lc_status": "lopsided_lengths"},
                          {"policy_mean_tokens": 400.0, "lc_win_rate": 0.5, "lc_status": "ok"}, 0.2) is None
    assert length_hacking(prev, {"policy_mean_tokens": 400.0, "lc_win_rate": None}, 0.2) is None  # older eval.json


def _fake_round(rdir, k, win, lc, pol_len, seed):
    (rdir / "train").mkdir(parents=True)
    (rdir / "eval").mkdir()
    (rdir / "candidates.manifest.json").write_text(json.dumps({"timing": {"wall_s": 12.5 + k}}))
    (rdir / "train" / "train.manifest.json").write_text(json.dumps({"timing": {"wall_s": 340.0}}))
    removed = {"invalid": 2, "tie": 7, "inconsistent": 11, "truncated": 0}
    (rdir / "pairs.card.json").write_text(json.dumps({"kept": 90 - k, "removed": removed}))
    judge = {"position_consistency": 0.81, "longer_wins_rate": 0.64, "cost_usd": 0.0123}
    (rdir / "judge-report.json").write_text(json.dumps(judge))
    (rdir / "eval" / "eval.json").write_text(json.dumps({
        "win_rate": win, "win_rate_ci": [win - 0.08, win + 0.08], "lc_win_rate": lc, "length_coef": 1.1,
        "policy_mean_tokens": pol_len, "sft_mean_tokens": 200.0, "n_comparisons": 100}))
    out = _synthetic(200, b0=0.2, b1=2.0, policy_shift=pol_len - 200, seed=seed)
    out.write_parquet(rdir / "eval" / "outcomes.parquet")


def test_write_report_fake_run(tmp_path):
    import matplotlib.image as mpimg

    run = tmp_path / "demo-run"
    _fake_round(run / "round-0", 0, 0.55, 0.52, 210.0, seed=0)
    _fake_round(run / "round-1", 1, 0.66, 0.51, 290.0, seed=1)
    (run / "round-2" / "eval").mkdir(parents=True)  # started, nothing finished
    (run / "round-2" / "pairs.card.json").write_text("{not json")  # a torn file must not crash the report
    path = write_report(run)
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("Round 1 policy beats SFT") and "LC 51%" in first, first
    assert "45% longer" in first and "most of the lead is length" in first, first
    assert "| round | pairs kept |" in text and "| 2 | - |" in text
    assert "inconsistent 11, tie 7" in text and "66% (58–74)" in text and "length hacking" in text
    for name in ("winrate.png", "length.png", "judge_length.png"):
        png = run / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert mpimg.imread(png).std() > 0, name
        assert f"]({name})" in text


def test_write_report_lc_interval_and_null_lc(tmp_path):
    e = {"win_rate": 0.6, "win_rate_ci": [0.52, 0.68], "lc_win_rate": 0.55, "lc_win_rate_ci": [0.47, 0.63],
         "lc_status": "ok", "lc_reason": None, "policy_mean_tokens": 100.0, "sft_mean_tokens": 98.0}
    null = {**e, "win_rate": 0.5, "win_rate_ci": [0.41, 0.59], "lc_win_rate": None, "lc_win_rate_ci": [None, None],
            "lc_status": "too_few_decisive", "lc_reason": "2 decisive outcomes of 16, need 10"}
    for k, ev in ((0, e), (1, null)):
        (tmp_path / f"round-{k}" / "eval").mkdir(parents=True)
        (tmp_path / f"round-{k}" / "eval" / "eval.json").write_text(json.dumps(ev))
    text = write_report(tmp_path).read_text()
    first = text.splitlines()[0]
    assert "(95% CI 41–59%; LC n/a: 2 decisive outcomes of 16, need 10)" in first, first
    assert "| 55% (47–63) |" in text and "| n/a: 2 decisive outcomes of 16, need 10 |" in text


def test_write_report_no_eval(tmp_path):
    (tmp_path / "round-0").mkdir()
    text = write_report(tmp_path).read_text()
    assert text.startswith("No round evaluated yet") and not list(tmp_path.glob("*.png"))
