"""judge.model=policy (Self-Rewarding, Yuan et al. 2024): round k's candidates are judged by round k's
sampling policy, the SFT model plus round k-1's adapter, keyed by the adapter's content."""
import json
import shutil

import polars as pl
import pytest

import rlaif.generate as generate
import rlaif.judge.stage as judge_stage
from conftest import ROOT, finished_adapter, make_adapter
from rlaif import fingerprint as FP
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.evaluate import report as R
from rlaif.evaluate import stage as E
from rlaif.models import folder_id


def _cfg(run_dir, model, k, *extra):
    return load_config(ROOT / "configs/quickstart.yaml",
                       [f"run_dir={run_dir}", f"model={model}", f"round={k}", "generate.max_tokens=8",
                        "generate.max_prompts=3", "generate.n=2", "judge.model=policy", *extra])


def _report(run_dir, k) -> dict:
    return json.loads((run_dir / f"round-{k}" / "judge-report.json").read_text())


def test_round_k_is_judged_by_its_sampling_policy(tmp_path, tiny_model, monkeypatch):
    cfg0 = _cfg(tmp_path, tiny_model, 0)
    generate.run(cfg0)
    judge_stage.run(cfg0)
    r0 = _report(tmp_path, 0)
    assert r0["judged_by"] == "round 0's sampling policy: the SFT model" and r0["self_judging"]
    assert "adapter" not in r0["identity"] and r0["judge_adapter"] is None

    cfg1 = _cfg(tmp_path, tiny_model, 1)
    generate.run(cfg1)
    with pytest.raises(UserError, match="round 0's adapter .* is not trained yet"):
        judge_stage.run(cfg1)
    adapter = finished_adapter(tmp_path, 0, tiny_model, seed=1)
    judge_stage.run(cfg1)
    r1 = _report(tmp_path, 1)
    assert r1["identity"]["adapter"] == folder_id(adapter) and r1["judge_id"] != r0["judge_id"]
    assert r1["judged_by"] == "round 1's sampling policy: the SFT model + round 0's adapter"
    assert r1["self_judging"] and r1["judge_adapter"] == str(adapter)
    j1 = pl.read_parquet(tmp_path / "round-1" / "judgments.parquet")
    assert j1["judge_model"].n_unique() == 1

    # The adapter is really loaded: the SFT model judging the same candidates gives other P(Yes).
    sft_dir = tmp_path / "sft-judged"
    (sft_dir / "round-1").mkdir(parents=True)
    shutil.copytree(tmp_path / "round-1" / "candidates", sft_dir / "round-1" / "candidates")
    shutil.copy(tmp_path / "round-1" / "candidates.manifest.json", sft_dir / "round-1")
    judge_stage.run(load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={sft_dir}", f"model={tiny_model}",
                                                                  "round=1", "generate.max_tokens=8"]))
    js = pl.read_parquet(sft_dir / "round-1" / "judgments.parquet")
    both = j1.select("a_id", "item", pol="score_a").join(js.select("a_id", "item", sft="score_a"), on=["a_id", "item"])
    assert both.height == j1.height and (both["pol"] - both["sft"]).abs().max() > 1e-4
    assert "frozen" in _report(sft_dir, 1)["judged_by"] and not _report(sft_dir, 1)["self_judging"]

    # A rerun pays nothing: the judge is not even loaded.
    import rlaif.judge.runner as runner

    real = runner.load_judge
    monkeypatch.setattr(runner, "load_judge", lambda *a, **k: pytest.fail("rerun loaded the judge"))
    judge_stage.run(cfg1)
    assert pl.read_parquet(tmp_path / "round-1" / "judgments.parquet").equals(j1)

    # Round 0's adapter retrained in place: round 1's judgments are stale and none is reused.
    before = FP.made_from(cfg1, 1, "judge")
    shutil.rmtree(adapter)
    make_adapter(tiny_model, adapter, seed=2)
    after = FP.made_from(cfg1, 1, "judge")
    assert after["id"] != before["id"] and after["parts"]["judge.adapter"] != before["parts"]["judge.adapter"]
    assert "judge.adapter" not in FP.made_from(cfg0, 0, "judge")["parts"]  # round 0: the SFT model judges
    monkeypatch.setattr(runner, "load_judge", real)
    judge_stage.run(cfg1)
    r1b = _report(tmp_path, 1)
    assert r1b["judge_id"] != r1["judge_id"] and r1b["calls_made_this_run"] == r1b["calls"]


def test_evaluate_judge_defaults_to_sft_and_says_when_the_policy_judged_itself(tmp_path):
    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={tmp_path}", "round=2", "judge.model=policy"])
    assert E.judge_after(cfg) == -1  # the SFT model judges the evaluation unless asked
    asked = load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={tmp_path}", "round=2", "judge.model=policy",
                                                           "evaluate.judge_policy=true"])
    assert E.judge_after(asked) == 2
    assert E.judge_after(load_config(ROOT / "configs/quickstart.yaml", ["round=2", "evaluate.judge_policy=true"])) == -1
    e = {"round": 2, "win_rate": 0.7, "win_rate_ci": [0.6, 0.8], "lc_win_rate": 0.65, "n_prompts": 10,
         "policy_mean_tokens": 20, "sft_mean_tokens": 22, "n_identical": 0, "judged_by_policy": True}
    assert E.headline(e).splitlines()[0].startswith("evaluate: BIASED: round 2's policy judged its own answers")
    line = R.headline([{"round": 2, "eval": e}])
    assert line.startswith("Judged by the policy itself (biased toward it): round 2 policy beats SFT")
    assert not R.headline([{"round": 2, "eval": {**e, "judged_by_policy": False}}]).startswith("Judged")


def test_policy_judge_needs_a_local_backend():
    with pytest.raises(Exception, match="judge.backend local or vllm"):
        load_config(ROOT / "configs/quickstart.yaml", ["judge.model=policy", "judge.backend=reward_model"])
