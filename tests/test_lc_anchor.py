"""LC with the judge's length slope taken from same-model comparisons (issue 18, item 9).

A simulated judge that does prefer length: P(a wins) = sigmoid(q_a - q_b + GAMMA * tanh((len_a -
len_b) / JUDGE_SCALE)), its scale unknown to the estimator. Quality and length move together across
prompts, as in real outcomes (what made the outcomes-only fit run away): a prompt that asks for
more makes SFT write more, the policy follows only part of the way, and the policy is worse there.
Same-model pairs (two SFT samples of one prompt) are judged by the same judge; their quality gap is
zero by construction. The truth, computed from the simulation's latent values, is the win rate
the judge would give on these prompts at equal length: mean sigmoid(quality gap).

    python tests/test_lc_anchor.py   # the before/after table of the closing note
"""
from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import polars as pl
import pytest

from judges import listiness, listy, write_candidates
from rlaif.config import load_config
from rlaif.evaluate.lc_anchor import (MIN_IN_SUPPORT, Anchor, anchor_matchups, anchored_bootstrap, anchored_fit,
                                      lc_anchored)
from rlaif.evaluate.metrics import length_hacking, lc_summary, summarize_outcomes
from rlaif.evaluate.report import write_report
from rlaif.judge.session import same_text
from rlaif.stats import LENGTH_L2

GAMMA, JUDGE_SCALE = 2.0, 150.0
GAPS, RATIOS = (-1.0, 0.0, 1.0), (0.5, 1.0, 1.8)  # worse / equal / better; much shorter / equal / much longer


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _both_orders(p, rng):
    """y from two judge calls (both orders), each won by a with probability p: 1, 0, or 0.5 (split)."""
    a, b = rng.random(p.size) < p, rng.random(p.size) < p
    return np.where(a & b, 1.0, np.where(~a & ~b, 0.0, 0.5))


def _judge_p(gap, len_a, len_b):
    return _sigmoid(gap + GAMMA * np.tanh((len_a - len_b) / JUDGE_SCALE))


def simulate(gap: float, ratio: float, seed: int = 0, n: int = 400, n_anchor: int = 400):
    """(outcomes frame, anchor frame, truth). Prompt demand z moves SFT length (x exp(0.35 z)), the
    policy's length only 30% as much, and the policy's quality gap by -0.4 z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, n)
    len_sft = (200 * np.exp(0.35 * z + rng.normal(0, 0.35, n))).round().clip(3)
    len_pol = (ratio * 200 * np.exp(0.3 * 0.35 * z + rng.normal(0, 0.35, n))).round().clip(3)
    q = gap - 0.4 * z
    out = pl.DataFrame({"prompt_id": [f"h{i}" for i in range(n)], "y": _both_orders(_judge_p(q, len_pol, len_sft), rng),
                        "len_policy": len_pol.astype(int), "len_sft": len_sft.astype(int)})
    za = rng.normal(0, 1, n_anchor)  # training prompts: two SFT samples each, equal quality
    la, lb = ((200 * np.exp(0.35 * za + rng.normal(0, 0.35, n_anchor))).round().clip(3) for _ in range(2))
    anchor = pl.DataFrame({"prompt_id": [f"t{i}" for i in range(n_anchor)],
                           "y": _both_orders(_judge_p(0.0, la, lb), rng),
                           "len_policy": la.astype(int), "len_sft": lb.astype(int)})
    return out, anchor, float(_sigmoid(q).mean())


def _summaries(gap, ratio, seed=0, n_boot=1000):
    out, anchor, truth = simulate(gap, ratio, seed)
    after = summarize_outcomes(out, out["len_policy"], out["len_sft"], n_boot, seed, Anchor(anchor, "simulated"))
    before = summarize_outcomes(out, out["len_policy"], out["len_sft"], n_boot, seed)  # the outcomes-only fit
    return out, truth, before, after


REPS = 20  # seeded replications per case: a 95% interval misses now and then, so coverage is what is asserted


@functools.cache
def _replicated(gap, ratio) -> dict:
    """Per method: how many of REPS intervals hold the truth, and the mean error of the point."""
    res = {m: {"hits": 0, "err": []} for m in ("before", "after")}
    for seed in range(REPS):
        _, truth, before, after = _summaries(gap, ratio, seed, n_boot=200)
        for m, s in (("before", before), ("after", after)):
            if s["lc_win_rate"] is not None:
                res[m]["hits"] += s["lc_win_rate_ci"][0] <= truth <= s["lc_win_rate_ci"][1]
                res[m]["err"].append(s["lc_win_rate"] - truth)
    return {m: {"hits": r["hits"], "n": len(r["err"]), "bias": float(np.mean(r["err"]))} for m, r in res.items()}


@pytest.mark.parametrize("gap,ratio", list(itertools.product(GAPS, RATIOS)))
def test_lc_recovers_the_equal_length_win_rate(gap, ratio):
    _, truth, _, s = _summaries(gap, ratio)
    assert s["lc_status"] == "ok" and s["lc_method"] == "same-model anchor", s["lc_reason"]
    a = s["length_anchor"]
    assert a["source"] == "simulated" and a["n_comparisons"] == a["n_prompts"] == 400 and a["n_decisive"] > 100
    assert a["slope_ci"][0] < a["slope"] < a["slope_ci"][1] and a["slope"] == s["length_coef"]
    assert a["support"]["outcomes_inside"] >= MIN_IN_SUPPORT and a["scale_tokens"] > 0
    # Over seeded replications: the interval holds the truth near its 95% (at least 80% of those answered),
    # and the point is within 3 points of it on average. Measured with 30 seeds: 82-100% per case,
    # mean error -0.8 to +2.4 points (the shorter, worse policy is the hardest case).
    # A refusal (a resample whose lengths left the anchor's range: at most 1 of 20 here) is no miss.
    r = _replicated(gap, ratio)["after"]
    assert r["n"] >= REPS - 2 and r["hits"] >= 0.8 * r["n"] and abs(r["bias"]) < 0.03, r


@pytest.mark.parametrize("gap", GAPS)
def test_the_outcomes_only_fit_runs_away_on_the_same_outcomes(gap):
    """The fit this replaced, on the same simulated outcomes of a much shorter policy: its slope takes
    the prompts' quality for length, so LC lands well above the truth (the issue's direction) and its
    interval misses far more often than 5%; the anchored LC is much closer. Measured with 30 seeds:
    mean error +4.9 / +7.5 / +6.7 points before (interval held the truth 67% / 37% / 37%), +2.4 /
    +2.1 / +0.3 after. Figures of one seed: `python tests/test_lc_anchor.py`."""
    r = _replicated(gap, 0.5)
    assert r["before"]["bias"] > 0.04 and abs(r["after"]["bias"]) < r["before"]["bias"] / 2, r
    assert r["before"]["hits"] <= 0.75 * REPS < r["after"]["hits"], r


def test_one_line_policy_is_refused_not_corrected():
    """The issue's case: answers of one short line (~5% of SFT's length) win ~8%. The outcomes-only fit
    reported LC ~48%, its lopsided rule silent; the anchored LC refuses, since no same-model pair
    was ever that far apart, and says so."""
    out, anchor, truth = simulate(-1.0, 0.05, seed=7)
    before = lc_summary(out["y"], out["len_policy"], out["len_sft"], out["prompt_id"], n_boot=200)
    assert before["lc_status"] == "ok" and before["lc_win_rate"] > truth + 0.15 > out["y"].mean() + 0.15
    s = lc_anchored(out["y"], out["len_policy"], out["len_sft"], out["prompt_id"], Anchor(anchor, "sim"), 200)
    assert s["lc_win_rate"] is None and s["lc_win_rate_ci"] == [None, None] and s["lc_status"] == "lopsided_lengths"
    assert s["lc_reason"].startswith("lengths outside the same-model comparisons' range: 0% of outcomes within ±")
    assert s["length_anchor"]["slope"] is not None  # where the slope came from is still recorded
    # much longer (3x): refused as well, and the loop's length-hacking stop still fires on it
    long_out, _, _ = simulate(0.0, 3.0, seed=7)
    s = lc_anchored(long_out["y"], long_out["len_policy"], long_out["len_sft"], long_out["prompt_id"],
                    Anchor(anchor, "sim"), 200)
    assert s["lc_status"] == "lopsided_lengths", s
    cur = {**s, "policy_mean_tokens": float(long_out["len_policy"].mean()),
           "sft_mean_tokens": float(long_out["len_sft"].mean())}
    prev = {"policy_mean_tokens": 250.0, "lc_win_rate": 0.5, "lc_status": "ok"}
    assert "lengths outside the same-model comparisons' range" in length_hacking(prev, cur, 0.2)


def test_no_anchor_is_a_reason_not_a_number():
    out, anchor, _ = simulate(0.0, 1.0)
    args = (out["y"], out["len_policy"], out["len_sft"], out["prompt_id"])
    s = lc_anchored(*args, Anchor(None, "round 1 candidates", "round 1 has no finished candidates"))
    assert (s["lc_win_rate"], s["lc_status"]) == (None, "no_anchor")
    assert s["lc_reason"] == "round 1 has no finished candidates"
    few = anchor.with_columns(y=pl.lit(0.5)).with_columns(y=pl.when(pl.int_range(pl.len()) < 5).then(1.0)
                                                          .otherwise("y"))
    s = lc_anchored(*args, Anchor(few, "x"))
    assert s["lc_status"] == "no_anchor" and s["lc_reason"] == "5 decisive same-model comparisons of 400, need 10"
    assert s["length_anchor"]["n_comparisons"] == 400 and s["lc_win_rate"] is None


# ------------------------------------------------------------------ the fit against an independent one

def _newton_weighted(X, y, w, P, offset, iters=200):
    """Independent Newton (IRLS) for binary targets with case weights, penalty 1/2 b'Pb, and an offset."""
    b = np.zeros(X.shape[1])
    for _ in range(iters):
        p = _sigmoid(X @ b + offset)
        step = np.linalg.solve(X.T @ (X * (w * p * (1 - p))[:, None]) + P, X.T @ (w * (y - p)) - P @ b)
        b += step
        if np.abs(step).max() < 1e-13:
            break
    return b


def test_anchored_fit_matches_an_independent_two_step_newton():
    out, anchor, _ = simulate(0.5, 1.4, seed=3)
    y, d = out["y"].to_numpy(), (out["len_policy"] - out["len_sft"]).to_numpy().astype(float)
    ya, da = anchor["y"].to_numpy(), (anchor["len_policy"] - anchor["len_sft"]).to_numpy().astype(float)
    # A half outcome is a win and a loss at weight 1/2 (AlpacaEval 2's fit_LogisticRegressionCV duplication).
    dup = lambda x, t: (np.concatenate([x, x]), np.concatenate([np.ones_like(t), np.zeros_like(t)]),  # noqa: E731
                        np.concatenate([t, 1 - t]))
    scale = np.sqrt(np.mean(da ** 2))  # the anchor's RMS difference: which sample is "a" is arbitrary
    xa, ta, wa = dup(np.tanh(da / scale), ya)
    slope = _newton_weighted(xa[:, None], ta, wa, np.array([[LENGTH_L2]]), 0.0)[0]  # no intercept
    x, t, w = dup(np.tanh(d / scale), y)
    b0 = _newton_weighted(np.ones((x.size, 1)), t, w, np.array([[1e-6]]), slope * x)[0]
    lc, got_slope, got_scale = anchored_fit(y, d, ya, da)
    assert got_scale[0] == pytest.approx(scale, rel=1e-12)
    assert got_slope[0] == pytest.approx(slope, abs=1e-8) and lc[0] == pytest.approx(_sigmoid(b0), abs=1e-9)


def test_bootstrap_matches_a_plain_resampling_loop():
    out, anchor, _ = simulate(0.0, 1.2, seed=5, n=60, n_anchor=50)
    y, d = out["y"].to_numpy(), (out["len_policy"] - out["len_sft"]).to_numpy().astype(float)
    ya, da = anchor["y"].to_numpy(), (anchor["len_policy"] - anchor["len_sft"]).to_numpy().astype(float)
    g, ga = np.repeat(np.arange(30), 2), np.repeat(np.arange(25), 2)  # two rows per prompt in both sets
    lc_ci, slope_ci = anchored_bootstrap(y, d, g, ya, da, ga, n_boot=300, seed=4)
    # Independently: the same draws, each resample's rows listed out and fitted unweighted.
    rng, rng_a, lcs, slopes = np.random.default_rng(4), np.random.default_rng([4, 1]), [], []
    for start in range(0, 300, 256):
        drawn = rng.integers(0, 30, size=(min(256, 300 - start), 30))
        drawn_a = rng_a.integers(0, 25, size=(len(drawn), 25))
        for p, pa in zip(drawn, drawn_a):
            rows, rows_a = (np.concatenate([np.flatnonzero(gr == k) for k in ks]) for gr, ks in ((g, p), (ga, pa)))
            lc, slope, _ = anchored_fit(y[rows], d[rows], ya[rows_a], da[rows_a])
            lcs.append(lc[0])
            slopes.append(slope[0])
    assert lc_ci == pytest.approx(list(np.quantile(lcs, [0.025, 0.975])), abs=1e-9)
    assert slope_ci == pytest.approx(list(np.quantile(slopes, [0.025, 0.975])), abs=1e-9)


# ------------------------------------------------------------------ which same-model pairs

def test_anchor_pairs_are_unselected_complete_and_capped(tmp_path):
    texts = {f"p{i}": [f"answer {i} one", f"answer {i} two", f"answer {i} three"] for i in range(8)}
    texts["p0"] = ["same", "same", "different"]  # identical first two: the next different one
    texts["p1"] = ["only one"]  # no pair
    cands = write_candidates(tmp_path, texts)
    cands = cands.with_columns(finish_reason=pl.when(pl.col("candidate_id") == "p2-c0").then(pl.lit("length"))
                               .otherwise("finish_reason"))  # truncated: worse for another reason than length
    m = anchor_matchups(cands, 100, same_text)
    pairs = dict(zip(m["prompt_id"], zip(m["policy_id"], m["sft_id"])))
    assert pairs["p0"] == ("p0-c0", "p0-c2") and pairs["p2"] == ("p2-c1", "p2-c2") and "p1" not in pairs
    assert pairs["p3"] == ("p3-c0", "p3-c1") and m.height == 7 and not m["identical"].any()
    assert m["policy_tokens"].to_list() == [len(t) // 4 + 1 for t in m["policy_text"]]
    capped = anchor_matchups(cands, 3, same_text)
    assert capped.height == 3 and capped.equals(anchor_matchups(cands.reverse(), 3, same_text))  # fixed order
    assert anchor_matchups(cands, 0, same_text).is_empty()


# ------------------------------------------------------------------ through the stages' files and ledger

def _stage_cfg(run_dir, judge_model, *extra):
    return load_config(None, [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                              "judge.backend=local", f"judge.model={judge_model}", "judge.min_consistency=0",
                              "filter.max_length_ratio=null", "evaluate.prompts=tests/assets/heldout.jsonl", *extra])


def _round_candidates(run_dir):
    """12 prompts, 3 answers each of 1-6 list lines: the scripted judge prefers more lines, then length."""
    texts = {f"p{i:02d}": [listy(1 + (i + j) % 6, words=2 + (i * j) % 5) for j in range(3)] for i in range(12)}
    return write_candidates(run_dir, texts)


@pytest.mark.parametrize("mode", ["pairwise", "score"])
def test_the_anchor_reuses_the_judge_stages_calls(tmp_path, scripted, mode):
    """all_pairs (pairwise) and score mode have already judged every anchor pair: evaluate pays nothing
    for its slope, and reads the same verdicts back through the round's ledger."""
    from judges import ScriptedJudge

    from rlaif.evaluate import stage as ES
    from rlaif.judge import stage as JS

    cands = _round_candidates(tmp_path)
    judge_mode = ["judge.strategy=all_pairs"] if mode == "pairwise" else ["judge.mode=score"]
    cfg = _stage_cfg(tmp_path, scripted, *judge_mode, f"evaluate.mode={mode}", "evaluate.length_anchor_prompts=10")
    JS.run(cfg)
    paid = len(ScriptedJudge.calls)
    m, source, why = ES.length_anchor(cfg)
    assert why is None and m.height == 10 and "round 0 candidates (policy)" in source and mode in source
    got = ES.judge(cfg, {"anchor": m})["anchor"]
    assert len(ScriptedJudge.calls) == paid  # every anchor call was in the ledger already
    tokens = dict(zip(cands["candidate_id"], cands["num_tokens"]))
    out = ES.judged(cfg, m, got, tokens)
    assert out.height == 10
    text = dict(zip(cands["candidate_id"], cands["response"]))
    for r in out.iter_rows(named=True):  # the scripted rule, read back as same-model outcomes
        a, b = listiness(text[r["policy_id"]]), listiness(text[r["sft_id"]])
        if mode == "pairwise":
            assert r["y"] == (1.0 if a > b else 0.0), r
        else:
            sa, sb = min(9, 1 + 2 * a[0]), min(9, 1 + 2 * b[0])  # the scripted rubric score
            assert r["y"] == (1.0 if sa > sb else 0.0 if sa < sb else 0.5), r


def test_the_anchor_is_judged_when_the_judge_stage_did_not_pair_them(tmp_path, scripted):
    """best_vs_worst compares pairs chosen by score, not usable as an anchor: evaluate sends its own
    two calls per anchor prompt (both orders), once; the rerun is free."""
    from judges import ScriptedJudge

    from rlaif.evaluate import stage as ES

    _round_candidates(tmp_path)
    cfg = _stage_cfg(tmp_path, scripted, "evaluate.length_anchor_prompts=5")
    m, _, _ = ES.length_anchor(cfg)
    first = ES.judge(cfg, {"anchor": m})["anchor"]
    assert len(ScriptedJudge.calls) == 10 and first.height == 10 and set(first["order"]) == {"ab", "ba"}
    ES.judge(cfg, {"anchor": m})
    assert len(ScriptedJudge.calls) == 10
    none = ES.length_anchor(_stage_cfg(tmp_path, scripted, "evaluate.length_anchor_prompts=0"))
    assert none[0] is None and none[2] == "evaluate.length_anchor_prompts=0"
    missing = ES.length_anchor(_stage_cfg(tmp_path / "elsewhere", scripted, "round=1"))
    assert missing[0] is None and missing[2] == "round 1 has no finished candidates to compare with each other"
    write_candidates(tmp_path / "cut", {"p1": ["a b c", "d e f"], "p2": ["g h", "i j"]}, finish="length")
    cut = ES.length_anchor(_stage_cfg(tmp_path / "cut", scripted))
    assert cut[0] is None
    assert cut[2] == "round 0 has no prompt with two different complete candidates (4 of 4 hit max_tokens)"


def _answers(ids, lists, words, tag):
    from rlaif.io import CANDIDATES_SCHEMA

    texts = [listy(n, words=w) for n, w in zip(lists, words)]
    return pl.DataFrame([{"prompt_id": pid, "candidate_id": f"{pid}/{tag}", "round": 0,
                          "messages": [{"role": "user", "content": f"held-out {pid}"}], "response": t,
                          "num_tokens": len(t) // 4 + 1, "finish_reason": "stop", "model": tag, "adapter": None,
                          "seed": 0} for pid, t in zip(ids, texts)], schema=CANDIDATES_SCHEMA)


def test_evaluate_run_writes_the_anchored_lc(tmp_path, scripted, monkeypatch):
    """`rlaif evaluate`'s run() with the round's candidates as the anchor: eval.json says where the
    slope came from, eval/anchor-outcomes.parquet holds those comparisons, and LC is the anchored
    fit of eval/outcomes.parquet. Only the answers are given (no model generates here)."""
    from rlaif.evaluate import stage as ES

    rng = np.random.default_rng(0)
    ids = [f"h{i:02d}" for i in range(40)]
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"prompt_id": i, "prompt": f"held-out {i}"}) + "\n"
                                                    for i in ids))
    texts = {f"p{i:02d}": [listy(int(n), words=int(w)) for n, w in zip(rng.integers(1, 7, 3), rng.integers(2, 7, 3))]
             for i in range(30)}
    write_candidates(tmp_path, texts)
    pol = _answers(ids, rng.integers(1, 7, 40), rng.integers(2, 7, 40), "policy")
    sft = _answers(ids, rng.integers(1, 7, 40), rng.integers(2, 7, 40), "sft")
    monkeypatch.setattr(ES, "answers", lambda cfg, prompts, k: sft if k is None else pol)
    (tmp_path / "model").mkdir()
    cfg = _stage_cfg(tmp_path, scripted, f"model={tmp_path / 'model'}",
                     f"evaluate.prompts={tmp_path / 'heldout.jsonl'}", "evaluate.n_boot=200")
    e = json.loads(ES.run(cfg).read_text())
    a = e["length_anchor"]
    assert e["lc_status"] == "ok" and e["lc_method"] == "same-model anchor", e["lc_reason"]
    assert a["n_comparisons"] == a["n_prompts"] == 30 and a["source"].startswith("round 0 candidates (policy)")
    assert e["length_coef"] == a["slope"] and e["lc_win_rate_ci"][0] <= e["lc_win_rate"] <= e["lc_win_rate_ci"][1]
    edir = tmp_path / "round-0" / "eval"
    anchor, out = pl.read_parquet(edir / "anchor-outcomes.parquet"), pl.read_parquet(edir / "outcomes.parquet")
    assert anchor.height == 30 and out.height == 40
    again = lc_anchored(out["y"], out["len_policy"], out["len_sft"], out["prompt_id"], Anchor(anchor, a["source"]),
                        200, cfg.seed)
    assert again["lc_win_rate"] == e["lc_win_rate"] and again["length_anchor"] == a


def test_report_shows_where_the_slope_came_from(tmp_path):
    out, anchor, _ = simulate(0.0, 1.0)
    e = {"round": 0, "policy_mean_tokens": 210.0, "sft_mean_tokens": 200.0, "n_prompts": 400, "n_identical": 0,
         **summarize_outcomes(out, out["len_policy"], out["len_sft"], 300, 0, Anchor(anchor, "round 0 candidates"))}
    (tmp_path / "round-0" / "eval").mkdir(parents=True)
    (tmp_path / "round-0" / "eval" / "eval.json").write_text(json.dumps(e))
    out.write_parquet(tmp_path / "round-0" / "eval" / "outcomes.parquet")
    text = write_report(tmp_path).read_text()
    a = e["length_anchor"]
    line = next(ln for ln in text.splitlines() if ln.startswith("- round 0: round 0 candidates: 400 comparisons"))
    assert f"slope {a['slope']:.2f} (95% CI {a['slope_ci'][0]:.2f}–{a['slope_ci'][1]:.2f})" in line, line
    assert f"on tanh(difference / {a['scale_tokens']:.0f} tokens)" in line and "of outcomes inside its range" in line
    assert "## Length control" in text and (tmp_path / "judge_length.png").stat().st_size > 5000
    refused = {**e, "lc_win_rate": None, "lc_status": "no_anchor", "lc_reason": "evaluate.length_anchor_prompts=0",
               "length_anchor": {**a, "slope": None, "n_comparisons": 0, "support": None}}
    (tmp_path / "round-0" / "eval" / "eval.json").write_text(json.dumps(refused))
    text = write_report(tmp_path).read_text()
    assert "no slope; LC n/a: evaluate.length_anchor_prompts=0" in text
    assert "; LC n/a: evaluate.length_anchor_prompts=0" in text.splitlines()[0]


def before_after_table(seed: int = 0) -> str:
    """The closing note's figures: every case over the REPS seeds the tests use (mean error of LC
    against the truth, and how many 95% intervals held it), then seed `seed`'s figures in full."""
    lines = ["| quality gap | policy/SFT length | LC before: mean error, CI held truth "
             "| LC after: mean error, CI held truth |", "|---|---|---|---|"]
    for gap, ratio in itertools.product(GAPS, RATIOS):
        r = _replicated(gap, ratio)
        cell = lambda m: f"{100 * r[m]['bias']:+.1f} pts, {r[m]['hits']}/{r[m]['n']}"  # noqa: E731
        lines.append(f"| {gap:+.0f} | {ratio}x | {cell('before')} | {cell('after')} |")
    lines += ["", f"seed {seed}:", "",
              "| quality gap | policy/SFT length | truth | raw win | LC before (95% CI) | LC after (95% CI) | slope |",
              "|---|---|---|---|---|---|---|"]
    fmt = lambda s: ("-" if s["lc_win_rate"] is None else  # noqa: E731
                     f"{100 * s['lc_win_rate']:.1f} ({100 * s['lc_win_rate_ci'][0]:.1f}–"
                     f"{100 * s['lc_win_rate_ci'][1]:.1f})")
    for gap, ratio in itertools.product(GAPS, RATIOS):
        out, truth, before, after = _summaries(gap, ratio, seed, n_boot=2000)
        lines.append(f"| {gap:+.0f} | {ratio}x | {100 * truth:.1f} | {100 * after['win_rate']:.1f} | {fmt(before)} | "
                     f"{fmt(after)} | {after['length_coef']:.2f} |")
    out, anchor, truth = simulate(-1.0, 0.05, seed=7)
    before = lc_summary(out["y"], out["len_policy"], out["len_sft"], out["prompt_id"])
    after = lc_anchored(out["y"], out["len_policy"], out["len_sft"], out["prompt_id"], Anchor(anchor, "sim"))
    lines.append(f"| -1 | 0.05x (seed 7) | {100 * truth:.1f} | {100 * out['y'].mean():.1f} | {fmt(before)} | "
                 f"refused: {after['lc_reason']} | {after['length_coef']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(before_after_table())
