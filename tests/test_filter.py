"""The filter: judgments -> comparisons -> pairs, each removal named and counted (hand-built frames)."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from rlaif.config import FilterConfig, RunConfig
from rlaif.errors import UserError
from rlaif.io import write_json, CANDIDATES_SCHEMA, JUDGMENTS_SCHEMA, PAIRS_SCHEMA, write_parquet
from rlaif.judge.pairs import compare as cmp
from rlaif.judge.pairs import filter as flt

NO_LIMITS = FilterConfig(drop_length_truncated=False, max_length_ratio=None)


# ---------------------------------------------------------------- builders

def jrow(pid, a, b, order, verdict, p_a=None, kind="pairwise", score=None) -> dict:
    return {"key": f"{pid}|{a}|{b}|{order}|{kind}", "prompt_id": pid, "kind": kind, "a_id": a, "b_id": b,
            "order": order, "verdict": verdict, "score_a": score, "p_a": p_a}


def both(pid, a, b, v_ab, v_ba, p_ab=None, p_ba=None) -> list[dict]:
    """One compared pair, judged in both orders; verdicts are in candidate terms (a = a_id won)."""
    return [jrow(pid, a, b, "ab", v_ab, p_ab), jrow(pid, a, b, "ba", v_ba, p_ba)]


def score(pid, cid, s, verdict="score") -> dict:
    return jrow(pid, cid, None, None, verdict, kind="score", score=s)


def judgments(rows: list[dict]) -> pl.DataFrame:
    cols = {k: [r.get(k) for r in rows] for k in JUDGMENTS_SCHEMA}
    return pl.DataFrame(cols, schema=JUDGMENTS_SCHEMA)


def candidates(specs: list[tuple]) -> pl.DataFrame:
    """specs: (candidate_id, response, num_tokens, finish_reason); prompt_id is the id's prefix."""
    rows = [{"prompt_id": cid.split("/")[0], "candidate_id": cid, "round": 0,
             "messages": [{"role": "user", "content": f"question {cid.split('/')[0]}"}], "response": resp,
             "num_tokens": tok, "finish_reason": fin, "model": "m", "adapter": None, "seed": 0}
            for cid, resp, tok, fin in specs]
    return pl.DataFrame(rows, schema=CANDIDATES_SCHEMA)


def cands_for(j: pl.DataFrame, tokens: int = 10) -> pl.DataFrame:
    ids = sorted(set(j["a_id"].drop_nulls()) | set(j["b_id"].drop_nulls()))
    return candidates([(cid, f"answer {cid}", tokens, "stop") for cid in ids])


def one(rows: list[dict]) -> dict:
    out = cmp.compare(judgments(rows))
    assert len(out) == 1, out
    return out.row(0, named=True)


# ---------------------------------------------------------------- compare: outcomes and margins

@pytest.mark.parametrize("v_ab, v_ba, outcome, chosen", [
    ("a", "a", "label", "p/x"), ("b", "b", "label", "p/y"), ("tie", "tie", "tie", None),
    ("a", "b", "inconsistent", None), ("b", "a", "inconsistent", None), ("a", "tie", "inconsistent", None),
    ("tie", "b", "inconsistent", None), ("a", "invalid", "invalid", None), ("invalid", "invalid", "invalid", None),
])
def test_pairwise_outcomes(v_ab, v_ba, outcome, chosen):
    r = one(both("p", "p/x", "p/y", v_ab, v_ba))
    assert r["outcome"] == outcome
    assert r["consistent"] is (outcome == "label")
    if chosen:
        assert (r["chosen_id"], r["rejected_id"]) == (chosen, "p/y" if chosen == "p/x" else "p/x")
        assert r["margin"] == 1.0  # no p_a, no scores
    else:
        assert r["margin"] is None


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_missing_order_is_invalid(order):
    r = one([jrow("p", "p/x", "p/y", order, "a")])
    assert (r["outcome"], r["consistent"]) == ("invalid", False)


def test_duplicate_rows_for_an_order_must_agree():
    rows = both("p", "p/x", "p/y", "a", "a") + [jrow("p", "p/x", "p/y", "ab", "b")]
    assert one(rows)["outcome"] == "inconsistent"


def test_margin_from_p_a_both_ways_and_clipped():
    assert one(both("p", "p/x", "p/y", "a", "a", 0.9, 0.7))["margin"] == pytest.approx(0.6)  # p=0.8
    r = one(both("p", "p/x", "p/y", "b", "b", 0.1, 0.3))  # P(b wins) = 0.8
    assert (r["chosen_id"], r["margin"]) == ("p/y", pytest.approx(0.6))
    assert one(both("p", "p/x", "p/y", "a", "a", 0.4, 0.4))["margin"] == 0.0  # logprobs disagree: clipped


def test_margin_from_scores_when_p_a_missing_on_a_row():
    rows = both("p", "p/x", "p/y", "b", "b", 0.1, None) + [score("p", "p/x", 3.0), score("p", "p/y", 7.0)]
    r = one(rows)  # the prompt has pairwise rows, so the scores only give the margin
    assert (r["chosen_id"], r["margin"]) == ("p/y", pytest.approx(0.5))
    rows = both("p", "p/x", "p/y", "b", "b") + [score("p", "p/x", 7.0), score("p", "p/y", 3.0)]
    assert one(rows)["margin"] == 0.0  # score says the loser was better: clipped, not negative
    rows = both("p", "p/x", "p/y", "a", "a") + [score("p", "p/x", 8.0), score("p", "p/y", 2.0, "invalid")]
    assert one(rows)["margin"] == 1.0  # only one valid score: default


def test_score_only_prompts():
    out = cmp.compare(judgments([
        score("s", "s/a", 4.0), score("s", "s/b", 9.0), score("s", "s/c", 1.0), score("s", "s/d", 9.0),
        score("t", "t/a", 5.0), score("t", "t/b", 5.0),
        score("u", "u/a", 5.0), score("u", "u/b", None, "invalid"),
        score("v", "v/a", None, "invalid"),
        score("w", "w/a", 2.0), score("w", "w/c", 6.0), score("w", "w/b", 2.0),
    ])).sort("prompt_id")
    s, t, u, v, w = out.iter_rows(named=True)
    assert (w["chosen_id"], w["rejected_id"], w["margin"]) == ("w/c", "w/b", 0.5)  # worst tie: higher id loses
    assert (s["outcome"], s["chosen_id"], s["rejected_id"]) == ("label", "s/b", "s/c")  # 9 tie: lower id wins
    assert (s["consistent"], s["margin"]) == (True, 1.0)
    assert (t["outcome"], t["margin"]) == ("tie", None)
    assert u["outcome"] == v["outcome"] == "invalid"


def test_empty_judgments():
    out = cmp.compare(judgments([]))
    assert len(out) == 0
    assert {"prompt_id", "chosen_id", "rejected_id", "outcome", "consistent", "margin"} <= set(out.columns)


# ---------------------------------------------------------------- filter_pairs: each filter, counted

def test_each_filter_removes_exactly_its_rows():
    j = judgments(
        both("inv", "inv/a", "inv/b", "a", "invalid") + both("tie", "tie/a", "tie/b", "tie", "tie")
        + both("inc", "inc/a", "inc/b", "a", "b")
        + both("tr", "tr/a", "tr/b", "a", "a") + both("em", "em/a", "em/b", "a", "a")
        + both("id", "id/a", "id/b", "b", "b") + both("lm", "lm/a", "lm/b", "a", "a", 0.55, 0.55)
        + both("lr", "lr/a", "lr/b", "a", "a") + both("ok", "ok/a", "ok/b", "b", "b", 0.2, 0.2))
    c = candidates([
        ("inv/a", "x", 5, "stop"), ("inv/b", "y", 5, "stop"), ("tie/a", "x", 5, "stop"), ("tie/b", "y", 5, "stop"),
        ("inc/a", "x", 5, "stop"), ("inc/b", "y", 5, "stop"),
        ("tr/a", "cut off mid", 50, "length"), ("tr/b", "", 0, "stop"),  # truncated wins over empty: order
        ("em/a", " \n\t ", 3, "stop"), ("em/b", "fine", 5, "stop"),
        ("id/a", "Same  answer\n", 6, "stop"), ("id/b", " Same answer", 5, "stop"),
        ("lm/a", "one", 5, "stop"), ("lm/b", "two", 5, "stop"),
        ("lr/a", "long " * 40, 40, "stop"), ("lr/b", "short", 10, "stop"),
        ("ok/a", "worse", 5, "stop"), ("ok/b", "better", 7, "stop"),
    ])
    cfg = FilterConfig(min_margin=0.2, max_length_ratio=3.0)
    pairs, card = flt.filter_pairs(j, c, cfg, 2)
    assert card["removed"] == {"invalid": 1, "tie": 1, "inconsistent": 1, "truncated": 1, "empty": 1,
                               "identical": 1, "low_margin": 1, "length_ratio": 1, "length_balance": 0}
    assert list(card["removed"]) == list(flt.FILTERS)
    assert (card["comparisons_in"], card["kept"]) == (9, 1)
    p = pairs.row(0, named=True)
    assert (p["chosen_id"], p["rejected_id"], p["chosen"], p["rejected"]) == ("ok/b", "ok/a", "better", "worse")
    assert (p["chosen_tokens"], p["rejected_tokens"], p["round"], p["consistent"]) == (7, 5, 2, True)
    assert p["margin"] == pytest.approx(0.6)
    assert p["messages"] == [{"role": "user", "content": "question ok"}]
    assert card["mean_margin"] == pytest.approx(0.6) and card["chosen_longer_share"] == 1.0
    assert card["config"] == cfg.model_dump()
    # Switched off, truncated and length_ratio keep their rows; low_margin at 0 keeps its one too.
    _, card = flt.filter_pairs(j, c, NO_LIMITS, 0)
    assert (card["removed"]["truncated"], card["removed"]["length_ratio"], card["removed"]["low_margin"]) == (0, 0, 0)
    assert card["removed"]["empty"] == 2 and card["kept"] == 3  # tr now falls to empty (tr/b is "")


def test_length_ratio_counts_a_zero_token_side_as_one():
    j = judgments(both("p", "p/a", "p/b", "a", "a") + both("q", "q/a", "q/b", "a", "a"))
    c = candidates([("p/a", "x", 3, "stop"), ("p/b", "y", 0, "stop"), ("q/a", "x", 4, "stop"), ("q/b", "y", 0, "stop")])
    pairs, card = flt.filter_pairs(j, c, FilterConfig(max_length_ratio=3.0), 0)
    assert card["removed"]["length_ratio"] == 1 and pairs["prompt_id"].to_list() == ["p"]


@pytest.mark.parametrize("x, y, identical", [
    ("Same  answer\n", " Same answer", True), ("a\tb\n\nc", "a b c", True), ("a\u00a0 b", "a b", True),
    ("ab", "a b", False), ("Same answer", "same answer", False), ("a b.", "a b", False),
])
def test_identical_means_equal_up_to_whitespace(x, y, identical):
    j = judgments(both("p", "p/a", "p/b", "a", "a"))
    _, card = flt.filter_pairs(j, candidates([("p/a", x, 3, "stop"), ("p/b", y, 3, "stop")]), NO_LIMITS, 0)
    assert (card["removed"]["identical"], card["kept"]) == ((1, 0) if identical else (0, 1))


def test_duplicated_candidate_id_is_a_user_error():
    j = judgments(both("p", "p/a", "p/b", "a", "a"))
    c = candidates([("p/a", "x", 3, "stop"), ("p/b", "y", 3, "stop"), ("p/b", "z", 3, "stop")])
    with pytest.raises(UserError, match="candidate_id 'p/b' appears more than once"):
        flt.filter_pairs(j, c, NO_LIMITS, 0)


def test_missing_candidate_is_a_user_error():
    j = judgments(both("p", "p/a", "p/b", "a", "a"))
    with pytest.raises(UserError, match="judgments reference candidate 'p/b' missing from candidates"):
        flt.filter_pairs(j, candidates([("p/a", "x", 3, "stop")]), NO_LIMITS, 0)


def synthetic(n: int, longer_share: float, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """n labelled comparisons (a_id always wins); chosen is longer in about longer_share of them."""
    rng = np.random.default_rng(seed)
    rows, specs = [], []
    for i in range(n):
        a, b = f"p{i:04d}/a", f"p{i:04d}/b"
        rows += both(f"p{i:04d}", a, b, "a", "a")
        la = int(rng.random() < longer_share)
        specs += [(a, f"resp a {i}", 10 + 5 * la, "stop"), (b, f"resp b {i}", 15 - 5 * la, "stop")]
    return judgments(rows), candidates(specs)


@pytest.mark.parametrize("target", [0.5, 0.3, 0.9])
def test_length_balance_hits_the_share_and_is_deterministic(target):
    j, c = synthetic(200, 0.75)
    cfg = NO_LIMITS.model_copy(update={"balance_length": True, "chosen_longer_share": target})
    pairs, card = flt.filter_pairs(j, c, cfg, 0)
    longer = (pairs["chosen_tokens"] > pairs["rejected_tokens"]).sum()
    assert abs(card["chosen_longer_share"] - target) < 0.02
    assert card["chosen_longer_share"] == pytest.approx(longer / len(pairs))
    assert card["kept"] + card["removed"]["length_balance"] == 200 and card["removed"]["length_balance"] > 0
    again, card2 = flt.filter_pairs(j.sample(fraction=1.0, shuffle=True, seed=3), c, cfg, 0)
    assert again.equals(pairs) and card2 == card  # same rows whatever the input order


def test_length_balance_off_keeps_the_skew():
    j, c = synthetic(200, 0.75)
    _, card = flt.filter_pairs(j, c, NO_LIMITS, 0)
    assert card["kept"] == 200 and card["chosen_longer_share"] > 0.65


# ---------------------------------------------------------------- judge behaviours end to end

def test_a_judge_that_always_answers_the_first_slot_produces_zero_pairs():
    rows = []
    for i in range(50):  # first slot is a_id in order ab, b_id in order ba
        rows += both(f"p{i}", f"p{i}/x", f"p{i}/y", "a", "b")
    j = judgments(rows)
    pairs, card = flt.filter_pairs(j, cands_for(j), FilterConfig(), 0)
    assert len(pairs) == 0 and card["removed"]["inconsistent"] == 50 and card["kept"] == 0
    assert card["mean_margin"] is None and card["chosen_longer_share"] is None
    assert pairs.schema == PAIRS_SCHEMA


def test_a_judge_that_flips_30_percent_of_verdicts_at_random():
    rng = np.random.default_rng(7)
    n, flip = 2000, 0.3
    truth = rng.choice(["a", "b"], n)
    other = {"a": "b", "b": "a"}
    rows = []
    for i, t in enumerate(truth):
        v1, v2 = (other[t] if rng.random() < flip else t for _ in range(2))
        rows += both(f"p{i}", f"p{i}/x", f"p{i}/y", v1, v2)
    j = judgments(rows)
    pairs, card = flt.filter_pairs(j, cands_for(j), FilterConfig(), 0)
    expected = (1 - flip) ** 2 + flip ** 2  # both right or both wrong: 0.58
    assert abs(card["kept"] / n - expected) < 0.04
    assert card["removed"]["inconsistent"] == n - card["kept"]
    right = pairs.with_columns(truth=pl.Series(truth).gather(pairs["prompt_id"].str.slice(1).cast(pl.Int64)))
    right = (right["chosen_id"].str.ends_with("/x") == (right["truth"] == "a")).mean()
    assert right > 0.78  # (0.49 / 0.58 = 0.845): agreement filters out most flipped labels


def test_output_schema_and_order():
    j, c = synthetic(30, 0.5)
    pairs, card = flt.filter_pairs(j.reverse(), c, NO_LIMITS, 1)
    assert pairs.schema == PAIRS_SCHEMA
    assert pairs["prompt_id"].to_list() == sorted(pairs["prompt_id"].to_list())
    assert card["comparisons_in"] == card["kept"] + sum(card["removed"].values())


# ---------------------------------------------------------------- the stage

def test_run_end_to_end(tmp_path, capsys):
    cfg = RunConfig(run_dir=str(tmp_path / "run"), round=1, prompts="unused.jsonl")
    rdir = cfg.round_dir()
    with pytest.raises(UserError, match=r"judgments.parquet: not found; run `rlaif judge` first"):
        flt.run(cfg)
    j = judgments(both("p", "p/a", "p/b", "b", "b") + both("q", "q/a", "q/b", "a", "b"))
    write_parquet(rdir / "judgments.parquet", j, JUDGMENTS_SCHEMA)
    # judgments of an unfinished judge (a budget stop, a failed audit) are refused: no judge manifest
    write_json(rdir / "judge-report.json", {"pending_calls": 3})
    with pytest.raises(UserError, match=r"the judge has not finished \(3 calls pending\)"):
        flt.run(cfg)
    write_json(rdir / "judge-report.json", {"pending_calls": 0, "invalid_rate": 0.9})
    with pytest.raises(UserError, match=r"the judge has not finished \(its audit failed"):
        flt.run(cfg)
    write_json(rdir / "judge.manifest.json", {"stage": "judge"})
    with pytest.raises(UserError, match="run `rlaif generate` first"):
        flt.run(cfg)
    write_parquet(rdir / "candidates" / "part-00000.parquet", cands_for(j), CANDIDATES_SCHEMA)
    path = flt.run(cfg)
    assert path == rdir / "pairs.parquet"
    pairs = pl.read_parquet(path)
    assert pairs.schema == PAIRS_SCHEMA and pairs["chosen_id"].to_list() == ["p/b"] and pairs["round"][0] == 1
    card = json.loads((rdir / "pairs.card.json").read_text())
    assert card["kept"] == 1 and card["removed"]["inconsistent"] == 1 and card["comparisons_in"] == 2
    out = capsys.readouterr().out
    assert "inconsistent" in out and "50.0%" in out
    write_parquet(rdir / "judgments.parquet", judgments(both("p", "p/a", "p/zzz", "a", "a")), JUDGMENTS_SCHEMA)
    with pytest.raises(UserError, match="'p/zzz' missing from candidates"):
        flt.run(cfg)
    assert pl.read_parquet(path).equals(pairs)  # a failed rerun leaves the old pairs whole


def test_run_records_the_checklist_it_ranked_with_and_readers_use_it(tmp_path):
    """Issue 18: the review page and the human-agreement figures ranked checklist candidates without
    the weights the filter used. With items weighed 3:1, k1/c0 wins; unweighted, k1/c1 would."""
    from review_run import CHECKLIST, CHECKLIST_ROUND, single_frames
    from rlaif.config import dump_config
    from rlaif.review import data as review_data
    from rlaif.review import labels

    items = [{"item": c["item"], "weight": c["weight"]} for c in CHECKLIST.values()]
    cfg = RunConfig(run_dir=str(tmp_path / "run"), round=0, prompts="unused.jsonl",
                    judge={"mode": "checklist", "checklist": items})
    rdir = cfg.round_dir()
    cands, j = single_frames(0, CHECKLIST_ROUND, "checklist")
    write_parquet(rdir / "judgments.parquet", j, JUDGMENTS_SCHEMA)
    write_parquet(rdir / "candidates" / "part-00000.parquet", cands, CANDIDATES_SCHEMA)
    write_json(rdir / "judge.manifest.json", {"stage": "judge"})
    pairs = pl.read_parquet(flt.run(cfg))
    assert dict(zip(pairs["prompt_id"], pairs["chosen_id"])) == {"k1": "k1/c0", "k2": "k2/c0"}
    card = json.loads((rdir / "pairs.card.json").read_text())
    assert card["checklist"] == CHECKLIST
    assert cmp.checklist_weights(cfg.judge) == {"0": 3.0, "1": 1.0}
    # the readers: from the card, and from the run's config when a card predates the record
    (tmp_path / "run" / "config.yaml").write_text(dump_config(cfg))
    for drop in (False, True):
        if drop:
            write_json(rdir / "pairs.card.json", {k: v for k, v in card.items() if k != "checklist"})
        df, meta = review_data.load_round(tmp_path / "run", 0)
        k1 = df.filter(pl.col("prompt_id") == "k1").row(0, named=True)
        assert (k1["left_id"], k1["status"], meta["weights"]) == ("k1/c0", "kept", {"0": 3.0, "1": 1.0})
        assert meta["weights_from"].endswith("config.yaml" if drop else "pairs.card.json")
        assert labels.judge_lookup(tmp_path / "run", 0)[("k1", "k1/c0", "k1/c1")] == "a"
