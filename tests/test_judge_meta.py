"""judge.meta (Meta-Rewarding, Wu et al. 2024): the policy samples judgments of its candidates, judges
its own judgments in both orders, and the preferred/dispreferred judgments become judge pairs that
train with the actor pairs."""
import json

import polars as pl
import pytest

import rlaif.generate as generate
import rlaif.judge.stage as judge_stage
from conftest import ROOT
from rlaif.config import load_config
from rlaif.judge.pairs import meta as M


def _cfg(run_dir, model, *extra):
    return load_config(ROOT / "configs/quickstart.yaml",
                       [f"run_dir={run_dir}", f"model={model}", "generate.max_tokens=8", "generate.max_prompts=3",
                        "generate.n=2", "judge.model=policy", "judge.mode=score", "judge.checklist=[]",
                        "judge.meta=true", "judge.meta_judgments=3", "judge.meta_max_tokens=16",
                        "train.max_steps=1", "train.batch_size=2", *extra])


def test_meta_judge_pairs_formed_counted_and_trained(tmp_path, tiny_model, monkeypatch):
    cfg = _cfg(tmp_path, tiny_model)
    generate.run(cfg)
    judge_stage.run(cfg)
    rdir = tmp_path / "round-0"
    mj = pl.read_parquet(rdir / M.JUDGMENTS_FILE)
    judgments = mj.filter(pl.col("kind") == "critique")
    assert judgments.height == 3 * 2 * 3 and set(judgments["verdict"]) <= {"text", "cut_off"}
    # sampled, not greedy: one candidate's three judgments are not all the same text
    assert judgments.group_by("a_id").agg(pl.col("rationale").n_unique())["rationale"].max() >= 2
    meta = mj.filter(pl.col("kind") == "pairwise")
    assert meta.height == 3 * 3 * 2 and set(meta["order"]) == {"ab", "ba"}  # 3 prompts, 3 pairs, both orders
    assert meta["a_id"].str.contains("#j").all() and meta["p_a"].is_not_null().all()

    pairs = pl.read_parquet(rdir / "pairs.parquet")
    card = json.loads((rdir / "pairs.card.json").read_text())
    jp = pairs.filter(pl.col("kind") == "judge")
    assert card["kinds"] == {"actor": pairs.height - jp.height, "judge": jp.height} and jp.height >= 1
    report = json.loads((rdir / "judge-report.json").read_text())
    assert report["meta"]["judge_pairs"] == jp.height and report["meta"]["meta_calls"] == meta.height
    for r in jp.iter_rows(named=True):
        assert r["chosen_id"].split("#")[0] == r["rejected_id"].split("#")[0]  # two judgments of one response
        assert r["margin"] > 0 and r["chosen"] != r["rejected"]
        assert r["messages"][0]["role"] == "system" and "Score: N" in r["messages"][0]["content"]
        # the win share recomputed from this prompt's meta verdicts ranks chosen above rejected
        mine = meta.filter(pl.col("prompt_id") == r["prompt_id"])
        p = {}
        for x in mine.iter_rows(named=True):
            p.setdefault(x["a_id"], []).append(x["p_a"])
            p.setdefault(x["b_id"], []).append(1 - x["p_a"])
        assert sum(p[r["chosen_id"]]) / len(p[r["chosen_id"]]) > sum(p[r["rejected_id"]]) / len(p[r["rejected_id"]])

    import rlaif.judge.runner as runner

    monkeypatch.setattr(runner, "load_judge", lambda *a, **k: pytest.fail("rerun loaded the judge"))
    judge_stage.run(cfg)  # a rerun pays nothing and forms the same judge pairs
    assert pl.read_parquet(rdir / "pairs.parquet").equals(pairs)

    from rlaif.train import stage as train_stage

    train_stage.run(cfg)
    manifest = json.loads((rdir / "train" / "train.manifest.json").read_text())
    assert json.dumps(manifest).count('"judge_pairs_in": %d' % jp.height) == 1


def test_pick_applies_length_control_and_refuses_ties():
    texts = {"a": "x" * 90, "b": "x" * 10, "c": "x" * 50}
    assert M.pick({"a": 0.90, "b": 0.89, "c": 0.10}, texts) == ("b", "c")  # b is within the top tier and shorter
    assert M.pick({"a": 0.90, "b": 0.50, "c": 0.10}, texts) == ("a", "c")  # b is not in the tier
    assert M.pick({"a": 0.5, "b": 0.5}, texts) is None


def test_win_shares_average_both_orders():
    rows = [{"a_id": "x", "b_id": "y", "verdict": "a", "p_a": 0.8, "grade": None},
            {"a_id": "x", "b_id": "y", "verdict": "b", "p_a": 0.4, "grade": None},
            {"a_id": "x", "b_id": "z", "verdict": "invalid", "p_a": None, "grade": None}]
    s = M.win_shares(pl.DataFrame(rows))
    assert s == pytest.approx({"x": 0.6, "y": 0.4})


def test_meta_needs_the_policy_scoring():
    with pytest.raises(Exception, match="meta: true needs model: policy and mode: score"):
        load_config(ROOT / "configs/quickstart.yaml", ["judge.meta=true"])
