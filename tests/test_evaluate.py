"""The evaluate stage on the tiny model against a real (fake) OpenAI-compatible server process:
answers from SFT and from two rounds' adapters, both-order verdicts through the ledger, eval.json,
a rerun that pays nothing, implicit-reward accuracy; and `rlaif run`'s length-hacking stop."""
from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import finished_adapter, make_adapter, rlaif_cli, tokenizer_only
from rlaif.config import load_config
from rlaif.evaluate.stage import reward_accuracy
from rlaif.io import PAIRS_SCHEMA, write_json, write_parquet
from rlaif.judge.templates import fence
from servers import FakeJudgeServer

KEY = "sk-rlaif-eval-test-93b1d0c7e4a2"
ENV = "RLAIF_EVAL_TEST_KEY"
CONTRACT = ("win_rate", "win_rate_ci", "lc_win_rate", "length_coef", "policy_mean_tokens", "sft_mean_tokens",
            "position_consistency")


def heldout_pairs(path, n: int = 5) -> None:
    rows = [{"prompt_id": f"q{i}", "messages": [{"role": "user", "content": f"Say something about topic {i}."}],
             "chosen": f"Topic {i} is interesting because of reason {i}.", "rejected": "No." * (i + 1),
             "chosen_id": f"q{i}/c", "rejected_id": f"q{i}/r", "margin": 1.0, "consistent": True,
             "chosen_tokens": 10, "rejected_tokens": 2 * (i + 1), "round": 0} for i in range(n)]
    write_parquet(path, pl.DataFrame(rows, schema=PAIRS_SCHEMA), PAIRS_SCHEMA)


def overrides(run_dir, srv, tiny_model, *extra):
    return [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", f"model={tiny_model}",
            "evaluate.prompts=tests/assets/heldout.jsonl", "generate.max_tokens=12", "generate.backend=transformers",
            "judge.backend=openai", f"judge.base_url={srv.base_url}", "judge.model=fake-judge",
            f"judge.api_key_env={ENV}", "judge.max_backoff_s=0.2", "judge.timeout_s=5", *extra]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("eval-run")
    for k in (0, 1):  # random adapters make the policy answer differently from SFT
        finished_adapter(run_dir, k, tiny_model, seed=k)
    heldout_pairs(run_dir / "heldout-pairs.parquet")
    with FakeJudgeServer(api_key=KEY, policy="longer") as srv:
        args = overrides(run_dir, srv, tiny_model, "round=1", f"evaluate.pairs={run_dir / 'heldout-pairs.parquet'}")
        first = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", *args, "evaluate.mode=pairwise",
                          env={ENV: KEY})
        calls_first = srv.stats()["ok"]
        again = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", *args, "evaluate.mode=pairwise",
                          env={ENV: KEY})
        calls_again = srv.stats()["ok"]
    return run_dir, first, again, calls_first, calls_again


def test_eval_json_contract_and_verdicts(evaluated):
    run_dir, first, _, calls, _ = evaluated
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    e = json.loads((run_dir / "round-1" / "eval" / "eval.json").read_text())
    assert all(k in e for k in CONTRACT)
    assert e["n_prompts"] == 6 and e["mode"] == "pairwise"
    lo, hi = e["win_rate_ci"]
    assert lo <= e["win_rate"] <= hi
    # something was judged, and the "longer" judge gives the same verdict in both orders
    assert e["n_judged_pairs"] > 0 and e["position_consistency"] == 1.0
    # every prompt that was not identical cost exactly two calls (both orders), vs SFT and vs round 0
    assert calls == 2 * (e["n_judged_pairs"] + e["vs_previous"]["n_comparisons"] - e["vs_previous"]["n_identical"])
    assert calls > 0, "random adapters should make the policy answer differently from SFT"
    out = pl.read_parquet(run_dir / "round-1" / "eval" / "outcomes.parquet")
    assert out.height == 6 and abs(out["y"].mean() - e["win_rate"]) < 1e-12
    pol = pl.read_parquet(run_dir / "round-1" / "eval" / "answers" / "candidates" / "part-00000.parquet")
    sft = pl.read_parquet(sorted((run_dir / "eval-sft" / "candidates").glob("part-*.parquet")))
    text = dict(zip(pl.concat([pol, sft])["candidate_id"], pl.concat([pol, sft])["response"]))
    for r in out.iter_rows(named=True):
        d = len(fence(text[r["policy_id"]]).strip()) - len(fence(text[r["sft_id"]]).strip())
        if r["policy_first"] != "identical" and abs(d) > 2:  # the judge preferred the longer text
            assert r["y"] == (1.0 if d > 0 else 0.0), r
    # lengths are the answers' token counts
    assert e["policy_mean_tokens"] == pytest.approx(pol["num_tokens"].mean())
    assert e["sft_mean_tokens"] == pytest.approx(sft["num_tokens"].mean())
    assert 0.0 <= e["reward_accuracy"] <= 1.0 and e["n_reward_pairs"] == 5
    # No round-1 candidates in this folder, so no same-model comparisons: LC says why it has no slope
    # rather than fitting one on the policy-vs-SFT outcomes (issue 18, item 9)
    assert e["lc_win_rate"] is None and e["lc_status"] == "no_anchor" and e["lc_method"] == "same-model anchor"
    assert e["lc_reason"] == "round 1 has no finished candidates to compare with each other"
    assert e["length_anchor"]["n_comparisons"] == 0 and "LC win rate n/a (round 1 has no" in first.stdout


def test_second_evaluate_makes_no_judge_calls(evaluated):
    run_dir, first, again, calls_first, calls_again = evaluated
    assert again.returncode == 0, again.stderr[-3000:]
    assert calls_again == calls_first
    e = json.loads((run_dir / "round-1" / "eval" / "eval.json").read_text())
    assert "up to date (made from this config); nothing to do" in again.stdout  # answers were not generated twice either
    assert e["win_rate"] is not None


def test_key_never_written(evaluated):
    run_dir, first, again, *_ = evaluated
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in first.stdout + first.stderr + again.stdout + again.stderr


def test_reward_accuracy_flips_when_pairs_swap(evaluated, tiny_model):
    run_dir = evaluated[0]
    pairs = pl.read_parquet(run_dir / "heldout-pairs.parquet")
    swapped = pairs.with_columns(chosen=pl.col("rejected"), rejected=pl.col("chosen"))
    write_parquet(run_dir / "swapped.parquet", swapped, PAIRS_SCHEMA)
    base = [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", f"model={tiny_model}", "round=1"]
    a = reward_accuracy(load_config(None, base + [f"evaluate.pairs={run_dir / 'heldout-pairs.parquet'}"]), 1)
    b = reward_accuracy(load_config(None, base + [f"evaluate.pairs={run_dir / 'swapped.parquet'}"]), 1)
    assert a["n_reward_pairs"] == b["n_reward_pairs"] == 5
    assert a["reward_accuracy"] + b["reward_accuracy"] == pytest.approx(1.0)  # strict ranks, no exact ties here
    assert a["reward_margin_mean"] == pytest.approx(-b["reward_margin_mean"], rel=1e-4)


def test_evaluate_needs_the_rounds_finished_adapter(tmp_path, tiny_model):
    with FakeJudgeServer(api_key=KEY) as srv:
        res = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", *overrides(tmp_path, srv, tiny_model),
                        env={ENV: KEY})
        assert res.returncode == 2, res.stderr[-2000:]
        assert "round 0 has no trained adapter" in res.stderr
        # save_model writes adapter_config.json (and here the weights too) before train.manifest.json:
        # until the manifest is there, training may still be writing (issue 11, item 6)
        make_adapter(tiny_model, tmp_path / "round-0" / "train" / "adapter", seed=0)
        res = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", *overrides(tmp_path, srv, tiny_model),
                        env={ENV: KEY})
        assert res.returncode == 2 and "round 0 has no trained adapter" in res.stderr, res.stderr[-2000:]
        assert "train.manifest.json missing" in res.stderr
        assert srv.stats()["ok"] == 0


# ----------------------------------------------------------------------------- the loop's stop rule

def _finished_round(run_dir, k: int, mean_tokens: float, lc: float) -> None:
    rdir = run_dir / f"round-{k}"
    write_json(rdir / "candidates.manifest.json", {"counts": {"candidates": 4}})
    write_json(rdir / "judge.manifest.json", {"stage": "judge", "round": k})
    write_json(rdir / "pairs.card.json", {"kept": 2, "removed": {"tie": 1}})
    write_json(rdir / "judge-report.json", {"position_consistency": 0.9})
    write_json(rdir / "train" / "train.manifest.json", {"steps": 1, "final": {"loss": 0.6}})
    write_json(rdir / "eval" / "eval.json", {"win_rate": 0.6, "win_rate_ci": [0.52, 0.7], "lc_win_rate": lc,
                                             "length_coef": 1.0, "policy_mean_tokens": mean_tokens,
                                             "sft_mean_tokens": 100.0, "position_consistency": 0.9})


def test_run_stops_on_length_hacking(tmp_path, demo_model):
    _finished_round(tmp_path, 0, mean_tokens=100.0, lc=0.55)
    _finished_round(tmp_path, 1, mean_tokens=150.0, lc=0.52)  # +50% length, LC fell
    weightless = tokenizer_only(demo_model, tmp_path.parent / f"{tmp_path.name}-no-weights")
    args = ["run", "configs/quickstart.yaml", f"run_dir={tmp_path}", "rounds=3", f"model={weightless}"]
    res = rlaif_cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stopped after round 1: length hacking" in res.stdout and "grew 50%" in res.stdout
    assert not (tmp_path / "round-2").exists()
    report = (tmp_path / "report.md").read_text()
    assert "## Warnings" in report and "round 1: length hacking" in report
    # switched off, the run goes on into round 2 (which then fails loading the missing weights)
    res = rlaif_cli(*args, "run.stop_on_length_hacking=false")
    assert res.returncode != 0 and "stopped after" not in res.stdout, res.stderr[-2000:]
    assert "generate failed in round 2" in res.stderr, res.stderr[-2000:]
    st = rlaif_cli("status", str(tmp_path))
    assert st.returncode == 0 and "done: win 60%, LC 52%" in st.stdout


def test_an_unreadable_eval_json_stops_the_run_naming_it(tmp_path, demo_model):
    """Not {} and no stop: that silently switched the length-hacking stop off (issue 11, item 8)."""
    _finished_round(tmp_path, 0, mean_tokens=100.0, lc=0.55)
    _finished_round(tmp_path, 1, mean_tokens=150.0, lc=0.52)
    eval1 = tmp_path / "round-1" / "eval" / "eval.json"
    eval1.write_text(eval1.read_text()[:40])  # damaged
    weightless = tokenizer_only(demo_model, tmp_path.parent / f"{tmp_path.name}-no-weights")
    res = rlaif_cli("run", "configs/quickstart.yaml", f"run_dir={tmp_path}", "rounds=3", f"model={weightless}")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert f"{eval1}: unreadable" in lines[0] and "evaluate round 1 again" in lines[0]
    assert not (tmp_path / "round-2").exists()


def test_report_command_rebuilds(tmp_path):
    _finished_round(tmp_path, 0, mean_tokens=100.0, lc=0.55)
    res = rlaif_cli("report", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "report.md").exists() and (tmp_path / "winrate.png").stat().st_size > 5000
    assert res.stdout.startswith("Round 0 policy beats SFT")  # the CI is 52-70%: above parity
    assert (tmp_path / "report.md").read_text().startswith("Round 0 policy beats SFT")
