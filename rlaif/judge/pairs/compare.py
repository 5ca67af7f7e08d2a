"""Judgments -> comparisons: what the judge's verdicts say about each judged pair.

`compare` turns judge calls into one row per comparison (both orders must agree, or there is no
label), with the margin the filter, the review page, calibration and the audit all read; `scores`
gives each candidate's score when judged alone (rubric, reward model, weighted checklist), and
`checklist_weights` is the one checklist weight map every reader passes. Polars expressions only.
"""
from __future__ import annotations

import polars as pl

from rlaif.io import SINGLE_KINDS

VERDICTS = ("a", "b", "tie")
SCALE = 8.0  # rubric scores run 1..9, so the widest gap is 8
C = pl.col


def _scores(judgments: pl.LazyFrame, weights: dict[str, float] | None = None) -> pl.LazyFrame:
    """(prompt_id, cid, score, scale): each candidate's score when judged alone.

    score: the mean of its valid 1-9 rubric scores (scale 8, the widest gap); reward: its reward
    (scale None: margins go through a sigmoid); checklist: the weighted mean of P(yes) over its
    items (scale 1), and no score at all if any item's answer was invalid — a candidate is never
    ranked on part of its checklist."""
    rubric = (judgments.filter((C("kind") == "score") & (C("verdict") == "score") & C("score_a").is_not_null())
              .group_by("prompt_id", C("a_id").alias("cid")).agg(score=C("score_a").mean())
              .with_columns(scale=pl.lit(SCALE)))
    reward = (judgments.filter((C("kind") == "reward") & (C("verdict") == "score") & C("score_a").is_not_null())
              .group_by("prompt_id", C("a_id").alias("cid")).agg(score=C("score_a").mean())
              .with_columns(scale=pl.lit(None, pl.Float64)))
    w = C("item").replace_strict(weights or {}, default=1.0, return_dtype=pl.Float64)
    checklist = (judgments.filter(C("kind") == "checklist").with_columns(w=w)
                 .group_by("prompt_id", C("a_id").alias("cid"))
                 .agg(ok=(C("verdict") != "invalid").all(), score=(C("score_a") * C("w")).sum() / C("w").sum())
                 .filter("ok").drop("ok").with_columns(scale=pl.lit(1.0)))
    # verify: the verifier's share of checks passed (rlaif/judge/backends/verifier.py), 0..1 like a checklist's
    verify = (judgments.filter((C("kind") == "verify") & (C("verdict") == "score") & C("score_a").is_not_null())
              .group_by("prompt_id", C("a_id").alias("cid")).agg(score=C("score_a").mean())
              .with_columns(scale=pl.lit(1.0)))
    return pl.concat([rubric, reward, checklist, verify])


def checklist_items(judge) -> dict[str, dict]:
    """judge.checklist as item id -> {item, weight}: the ids the judge stage writes in judgments' `item`
    column (rlaif/judge/session.py). The filter records it in pairs.card.json, so every reader of a
    round (the review page, the human-agreement figures) ranks with the weights the filter used."""
    return {str(i): {"item": it.item, "weight": it.weight} for i, it in enumerate(judge.items())}


def checklist_weights(judge) -> dict[str, float]:
    """Checklist item id -> weight, the one map `compare` is given everywhere; generated items
    (judge.checklist_from_prompt, ids p0, p1, ...) are absent and weigh 1."""
    return {i: c["weight"] for i, c in checklist_items(judge).items()}


def scores(judgments: pl.DataFrame, weights: dict[str, float] | None = None) -> pl.DataFrame:
    """(prompt_id, cid, score, scale): each candidate's score when judged alone, as `compare` ranks them."""
    return _scores(judgments.lazy(), weights).collect()


def _score_margin(hi: pl.Expr, lo: pl.Expr) -> pl.Expr:
    """0..1, as pairwise margins (2p - 1): the score gap over its scale, or for rewards the
    Bradley-Terry probability that the higher-reward response is better, sigmoid(r_hi - r_lo)
    (Ouyang et al. 2022, eq. 1), mapped the same way: 2 sigmoid(d) - 1 = tanh(d / 2)."""
    return (pl.when(C("scale").is_null()).then(((hi - lo) / 2).tanh()).otherwise((hi - lo) / C("scale"))
            .clip(0.0, 1.0))


def _pairwise(pw: pl.LazyFrame, scores: pl.LazyFrame) -> pl.LazyFrame:
    v = C("verdict")
    # Counts rather than a pivot on order: duplicate rows for one order must then agree too.
    g = pw.group_by("prompt_id", "a_id", "b_id").agg(
        bad=(~v.is_in(VERDICTS)).fill_null(True).any(),  # invalid, null or unknown verdict
        has_ab=(C("order") == "ab").any(), has_ba=(C("order") == "ba").any(),
        n_a=(v == "a").sum(), n_b=(v == "b").sum(), n_tie=(v == "tie").sum(), n=pl.len(),
        p_ok=C("p_a").is_not_null().all(), p_a=C("p_a").mean(),
        g_ok=C("grade").is_not_null().all(), grade=C("grade").mean())
    outcome = (pl.when(C("bad") | ~C("has_ab") | ~C("has_ba")).then(pl.lit("invalid"))
               .when((C("n_a") == C("n")) | (C("n_b") == C("n"))).then(pl.lit("label"))
               .when(C("n_tie") == C("n")).then(pl.lit("tie"))
               .otherwise(pl.lit("inconsistent")))  # a vs b, a vs tie, b vs tie: never a label
    g = g.with_columns(outcome=outcome).with_columns(b_won=(C("outcome") == "label") & (C("n_b") == C("n")))
    g = g.with_columns(chosen_id=pl.when("b_won").then("b_id").otherwise("a_id"),
                       rejected_id=pl.when("b_won").then("a_id").otherwise("b_id"),
                       p_chosen=pl.when("b_won").then(1 - C("p_a")).otherwise("p_a"),
                       g_chosen=pl.when("b_won").then(-C("grade")).otherwise("grade"))
    sc = scores.select("prompt_id", "cid", "score")
    g = (g.join(sc.rename({"cid": "chosen_id", "score": "s_c"}), on=["prompt_id", "chosen_id"], how="left")
         .join(sc.rename({"cid": "rejected_id", "score": "s_r"}), on=["prompt_id", "rejected_id"], how="left"))
    # graded verdicts: the mean grade over both orders from chosen's side, over its maximum (2)
    margin = (pl.when("p_ok").then(2 * C("p_chosen") - 1)
              .when("g_ok").then(C("g_chosen") / 2)
              .when(C("s_c").is_not_null() & C("s_r").is_not_null()).then((C("s_c") - C("s_r")) / SCALE)
              .otherwise(1.0).clip(0.0, 1.0))
    return g.with_columns(margin=margin, source=pl.lit("pairwise"))


def _score_only(scores: pl.LazyFrame, prompts: pl.LazyFrame) -> pl.LazyFrame:
    """Best vs worst by score for prompts judged by score alone; ties in order broken by id."""
    by = dict(by=["score", "cid"], descending=[True, False])
    g = prompts.join(scores, on="prompt_id", how="left").group_by("prompt_id").agg(
        chosen_id=C("cid").sort_by(**by).first(), rejected_id=C("cid").sort_by(**by).last(),
        hi=C("score").max(), lo=C("score").min(), n=C("score").count(), scale=C("scale").first())
    outcome = (pl.when(C("n") < 2).then(pl.lit("invalid"))
               .when(C("hi") == C("lo")).then(pl.lit("tie")).otherwise(pl.lit("label")))
    return g.with_columns(outcome=outcome, margin=_score_margin(C("hi"), C("lo")), source=pl.lit("score"))


def compare(judgments: pl.DataFrame, weights: dict[str, float] | None = None) -> pl.DataFrame:
    """One row per comparison: prompt_id, chosen_id, rejected_id, outcome, consistent, margin, source.

    outcome is label|invalid|tie|inconsistent; chosen/rejected are meaningful for labels only
    (otherwise a_id/b_id, or best/worst by score), and margin is null for non-labels.
    """
    j = judgments.lazy()
    scores = _scores(j, weights)
    pw = j.filter(C("kind") == "pairwise")
    score_prompts = (j.filter(C("kind").is_in(SINGLE_KINDS)).select("prompt_id").unique()
                     .join(pw.select("prompt_id").unique(), on="prompt_id", how="anti"))
    cols = ["prompt_id", "chosen_id", "rejected_id", "outcome", "margin", "source"]
    out = pl.concat([_pairwise(pw, scores).select(cols), _score_only(scores, score_prompts).select(cols)])
    label = C("outcome") == "label"
    out = out.select(*cols[:4], consistent=label, margin=pl.when(label).then("margin"), source="source")
    return out.collect(engine="streaming")  # the streaming engine runs the 3-key group_by ~2x faster


