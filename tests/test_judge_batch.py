"""judge.mode_api=batch against tests/fake_batch_server.py (a real HTTP server process speaking
/v1/files, /v1/batches and /v1/files/{id}/content): same verdicts as live judging at the batch
price, splitting, expiry and failure (retried by a rerun, or live with batch_fallback_live), and
kill -9 at upload, batch creation, poll and download with no key ever submitted twice; and (issue 21)
a budget for half a round sends one batch cut to fit (expected cost, on the cap or on measured replies),
batches within the provider's request, byte and enqueued-token limits, and --submit-only then collect."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import ROOT
from rlaif.errors import BudgetExceeded, JudgeIncomplete
from rlaif.judge import stage
from servers import FakeBatchServer, FakeJudgeServer
from test_judge_openai import (ENV, KEY, cli_env, config, judgments, ledger_rows, overrides, rd, report, standard,
                               write_candidates)

BATCH = ("judge.mode_api=batch", "judge.strategy=all_pairs", "judge.batch_poll_s=0.05", "judge.batch_max_poll_s=0.2",
         "judge.prices={fake-judge: [2.0, 8.0]}")
N_CALLS = 8 * 6 * 2  # 8 prompts, 4 candidates: 6 pairs, both orders


@pytest.fixture
def bsrv(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    with FakeBatchServer(api_key=KEY, policy="hash") as s:
        yield s
        assert KEY not in s.stderr_tail(10**6)


def verdicts(run_dir) -> pl.DataFrame:
    return judgments(run_dir).select("key", "verdict", "a_id", "b_id", "order").sort("key")


def test_batch_gives_live_verdicts_at_the_batch_price(bsrv, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    live_dir, batch_dir = tmp_path / "live", tmp_path / "batch"
    for d in (live_dir, batch_dir):
        write_candidates(d, standard())
    # two test servers stand for one OpenAI endpoint (live and batch): declared one judge, so keys match
    with FakeJudgeServer(api_key=KEY, policy="hash") as live:
        stage.run(config(live_dir, live, *BATCH[1:], "judge.identity=openai"))  # same settings, live calls
    stage.run(config(batch_dir, bsrv, *BATCH, "judge.identity=openai"))
    assert verdicts(batch_dir).equals(verdicts(live_dir))
    st = bsrv.stats()
    assert st["batches_created"] == 1 and st["uploads"] == 1 and st["live_calls"] == 0
    assert len(st["submitted"]) == N_CALLS and set(st["submitted"].values()) == {1}
    live_cost, batch_cost = report(live_dir)["cost_usd"], report(batch_dir)["cost_usd"]
    assert live_cost > 0 and batch_cost == pytest.approx(live_cost / 2)  # judge.batch_discount 0.5
    assert report(batch_dir)["batch"]["chunks_submitted"] == 1
    # a rerun finds everything in the ledger: no upload, no batch
    stage.run(config(batch_dir, bsrv, *BATCH, "judge.identity=openai"))
    assert bsrv.stats()["batches_created"] == 1 and bsrv.stats()["uploads"] == 1


def test_requests_split_by_count_and_bytes(bsrv, tmp_path):
    write_candidates(tmp_path, standard())
    stage.run(config(tmp_path, bsrv, *BATCH, "judge.batch_max_requests=20"))
    st = bsrv.stats()
    assert st["batches_created"] == -(-N_CALLS // 20) and set(st["submitted"].values()) == {1}
    bsrv.control(reset=True)
    write_candidates(tmp_path / "b", standard())
    stage.run(config(tmp_path / "b", bsrv, *BATCH, "judge.batch_max_bytes=4096"))
    st = bsrv.stats()
    assert st["batches_created"] > 1 and len(st["submitted"]) == N_CALLS and set(st["submitted"].values()) == {1}


def test_expired_items_wait_for_a_rerun(bsrv, tmp_path):
    write_candidates(tmp_path, standard())
    bsrv.control(outcome="expired", expire_share=0.25)
    with pytest.raises(JudgeIncomplete, match="no reply"):
        stage.run(config(tmp_path, bsrv, *BATCH))
    first = bsrv.stats()["submitted"]
    bsrv.control(outcome="completed")
    stage.run(config(tmp_path, bsrv, *BATCH))
    st = bsrv.stats()
    assert st["batches_created"] == 2 and st["live_calls"] == 0
    again = [k for k, n in st["submitted"].items() if n > 1]
    assert len(again) == N_CALLS // 4  # only the expired items were submitted a second time
    assert len(first) == N_CALLS and judgments(tmp_path)["key"].n_unique() == N_CALLS


@pytest.mark.parametrize("outcome", ["expired", "failed"])
def test_fallback_live_finishes_in_one_run(bsrv, tmp_path, outcome):
    write_candidates(tmp_path, standard())
    bsrv.control(outcome=outcome, expire_share=0.5)
    stage.run(config(tmp_path, bsrv, *BATCH, "judge.batch_fallback_live=true"))
    st = bsrv.stats()
    expected_live = N_CALLS // 2 if outcome == "expired" else N_CALLS
    assert st["batches_created"] == 1 and st["live_calls"] == expected_live
    r = report(tmp_path)
    assert r["batch"]["fallback_live"] == expected_live and judgments(tmp_path)["key"].n_unique() == N_CALLS
    # live items are billed at the live price, batch items at half
    rows = [r for r in ledger_rows(tmp_path) if r["status"] == "done"]
    api = [json.loads(r["request"])["api"] for r in rows]
    assert api.count("live") == expected_live and api.count("batch") == N_CALLS - expected_live
    for r, a in zip(rows, api):
        full = (r["input_tokens"] * 2.0 + r["output_tokens"] * 8.0) / 1e6
        assert r["cost_usd"] == pytest.approx(full * (1.0 if a == "live" else 0.5))


@pytest.mark.parametrize("at", ["upload", "create", "retrieve", "content"])
def test_kill_9_then_rerun_never_submits_twice(bsrv, tmp_path, at):
    ref = tmp_path / "ref"
    write_candidates(ref, standard())
    stage.run(config(ref, bsrv, *BATCH))
    bsrv.control(reset=True, hang={"at": at, "seconds": 60})
    run_dir = tmp_path / "run"
    write_candidates(run_dir, standard())
    cmd = [sys.executable, "-m", "rlaif", "judge", *overrides(run_dir, bsrv, *BATCH)]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and not bsrv.stats()["hung"].get(at) and time.monotonic() < deadline:
                time.sleep(0.02)
            alive = proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert alive, (tmp_path / "killed.log").read_text()[-2000:]
    bsrv.control(hang=None)
    res = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    st = bsrv.stats()
    assert st["batches_created"] == 1, st  # the crash after create is adopted via the batch's metadata
    assert len(st["submitted"]) == N_CALLS and set(st["submitted"].values()) == {1}
    assert verdicts(run_dir).equals(verdicts(ref))
    assert KEY not in res.stdout + res.stderr + (tmp_path / "killed.log").read_text()


def test_batch_replies_read_the_verdict_token_too(bsrv, tmp_path):
    # the batch path shares the live reply reader: an explained score is read at its digit, not at the
    # rationale's first token ("2 small slips aside ...\nScore: 8" is ~7.9, not 2.1; issue 18)
    from judge_replies import top_candidates

    write_candidates(tmp_path, standard(2, 2))
    stage.run(config(tmp_path, bsrv, *BATCH[:1], *BATCH[2:4], "judge.mode=score", "judge.explain=true",
                     "judge.min_consistency=0"))
    rows = [r for r in ledger_rows(tmp_path) if r["kind"] == "score"]
    assert len(rows) == 4 and bsrv.stats()["batches_created"] == 1
    for r in rows:
        alts = [(int(t), p) for t, p in top_candidates("score", r["raw"][-1]) if t.isdigit()]
        assert r["raw"].splitlines()[-1].startswith("Score: ")
        assert r["score_a"] == pytest.approx(sum(d * p for d, p in alts) / sum(p for _, p in alts)), r["raw"]


# ------------------------------------------------- issue 21: budgets, per-batch limits, --submit-only

def other_texts(n_prompts: int = 8, n: int = 4) -> dict[str, list[str]]:
    """Another round's candidates: the same sizes, other texts, so other keys."""
    return {pid: [t + " (again)" for t in ts] for pid, ts in standard(n_prompts, n).items()}


def spent(run_dir, ledger=None) -> float:
    from rlaif.judge.ledger import Ledger

    led = Ledger(ledger or rd(run_dir) / "judge-ledger.sqlite")
    try:
        return led.spent()[1]
    finally:
        led.close()


def stop_at_half(run_dir, bsrv, cap: float, *extra: str) -> dict:
    """A capped batch run that the cap stops: one batch, spend within the cap, a stop line that says
    what is left; returns this run's admission basis (judge-report.json)."""
    with pytest.raises(BudgetExceeded) as stop:
        stage.run(config(run_dir, bsrv, *BATCH, "judge.max_tokens=400", f"judge.max_cost_usd={cap}", *extra))
    st, adm = bsrv.stats(), report(run_dir)["batch_admission"]
    (b,) = adm["by_template"].values()
    n = b["admitted_calls"]
    assert st["batches_created"] == 1 and len(st["submitted"]) == n and set(st["submitted"].values()) == {1}
    assert N_CALLS // 4 < n < N_CALLS, (n, adm)  # about half the round: the batch was cut, not refused
    assert adm["not_admitted"]["calls"] == N_CALLS - n
    msg = str(stop.value)
    assert "\n" not in msg and f"{N_CALLS - n} calls of this phase not sent, expected $" in msg, msg
    return b


def test_a_budget_for_half_a_round_sends_one_batch_and_stops_at_the_cap(bsrv, tmp_path):
    # cap basis: a fresh ledger has no replies of this judge, so each call counts its 400-token cap
    cost_cap = 1.0e-6 * 0.5 * (N_CALLS // 2) * (220 * 2.0 + 400 * 8.0)  # ~half the calls at their worst case
    write_candidates(tmp_path / "cap", standard())
    b = stop_at_half(tmp_path / "cap", bsrv, cost_cap)
    assert b["basis"] == "cap" and b["expected_output_tokens"] == 400 and b["measured_replies"] == 0
    assert spent(tmp_path / "cap") <= cost_cap
    # measured basis: a shared ledger where an earlier round of this judge left 96 replies
    shared = tmp_path / "ledger.sqlite"
    write_candidates(tmp_path / "r0", standard())
    stage.run(config(tmp_path / "r0", bsrv, *BATCH, "judge.max_tokens=400", f"judge.ledger={shared}"))
    round0 = spent(None, shared)
    bsrv.control(reset=True)
    cap = round0 * 1.5  # the ledger-wide cap leaves half of round 0's cost for this round
    write_candidates(tmp_path / "r1", other_texts())
    b = stop_at_half(tmp_path / "r1", bsrv, cap, f"judge.ledger={shared}")
    assert b["basis"] == "measured" and b["measured_replies"] == N_CALLS and b["expected_output_tokens"] < 5
    assert spent(None, shared) <= cap
    # with the worst case, this budget would admit a handful: the measured mean admits the half it pays for
    assert b["admitted_calls"] > 4 * (cap - round0) / (1e-6 * 0.5 * (220 * 2.0 + 400 * 8.0))
    # a rerun with a higher cap submits exactly the remainder, in one more batch
    stage.run(config(tmp_path / "r1", bsrv, *BATCH, "judge.max_tokens=400", "judge.max_cost_usd=100",
                     f"judge.ledger={shared}"))
    st = bsrv.stats()
    assert st["batches_created"] == 2 and len(st["submitted"]) == N_CALLS and set(st["submitted"].values()) == {1}
    assert judgments(tmp_path / "r1")["key"].n_unique() == N_CALLS


@pytest.mark.parametrize("limit", ["requests", "bytes", "enqueued_tokens"])
def test_batches_stay_within_the_providers_limits(bsrv, tmp_path, limit):
    # about a third of the round's requests, bytes or prompt tokens per batch; enqueued tokens are
    # counted over every batch in progress (the real limit's rule), so those batches go one at a time
    value = {"requests": 16, "bytes": 16 * 1500, "enqueued_tokens": 16 * 200}[limit]
    write_candidates(tmp_path, standard(4, 4))
    bsrv.control(**{f"max_{limit}": value})
    stage.run(config(tmp_path, bsrv, *BATCH, f"judge.batch_max_{limit}={value}"))
    st = bsrv.stats()
    assert st["rejected"] == {} and st["batches_created"] >= 3, st
    assert len(st["submitted"]) == N_CALLS // 2 and set(st["submitted"].values()) == {1}
    if limit == "enqueued_tokens":
        assert 0 < st["max_enqueued_tokens"] <= value


def test_a_limit_above_the_providers_is_one_clear_line(bsrv, tmp_path):
    write_candidates(tmp_path, standard(4, 4))
    bsrv.control(max_enqueued_tokens=1000)
    with pytest.raises(JudgeIncomplete) as e:
        stage.run(config(tmp_path, bsrv, *BATCH, "judge.batch_max_enqueued_tokens=1000000"))
    msg = str(e.value)
    assert bsrv.stats()["rejected"] == {"token_limit_exceeded": 1}
    assert "\n" not in msg and "token_limit_exceeded: Enqueued token limit reached" in msg, msg
    assert "batch_max_enqueued_tokens" in msg, msg


def test_submit_only_then_collect(bsrv, tmp_path, capsys):
    from rlaif.errors import UserError
    from rlaif.judge.ledger import Ledger

    with pytest.raises(UserError, match="--submit-only: for judge.mode_api=batch"):
        stage.run(config(tmp_path / "live", bsrv), submit_only=True)
    ref, run = tmp_path / "ref", tmp_path / "run"
    for d in (ref, run):
        write_candidates(d, standard())
    stage.run(config(ref, bsrv, *BATCH))
    bsrv.control(reset=True)
    capped = (*BATCH, "judge.max_cost_usd=100")
    assert stage.run(config(run, bsrv, *capped), submit_only=True) == rd(run)
    assert f"submitted 1 batch(es) with {N_CALLS} calls" in capsys.readouterr().out
    st = bsrv.stats()
    assert st["batches_created"] == 1 and st["retrieves"] == 0  # returned without waiting for the window
    assert not any((rd(run) / f).exists() for f in ("judgments.parquet", "pairs.parquet", stage.MANIFEST))
    led = Ledger(rd(run) / "judge-ledger.sqlite")
    held = led.in_flight()
    led.close()
    assert held[0] == N_CALLS and held[1] > 0  # the batch's cost stays counted after its process is gone
    stage.run(config(run, bsrv, *capped))  # a plain run collects
    st = bsrv.stats()
    assert st["batches_created"] == 1 and st["retrieves"] > 0
    assert len(st["submitted"]) == N_CALLS and set(st["submitted"].values()) == {1}
    assert verdicts(run).equals(verdicts(ref)) and (rd(run) / stage.MANIFEST).exists()
    led = Ledger(rd(run) / "judge-ledger.sqlite")
    assert led.in_flight() == (0, 0.0)
    led.close()


def test_models_endpoint(bsrv):
    import openai

    client = openai.OpenAI(base_url=bsrv.base_url, api_key=KEY, max_retries=0)
    assert "fake-judge" in [m.id for m in client.models.list()]


def test_repeated_submit_only_finishes_a_two_phase_round(bsrv, tmp_path):
    # best_vs_worst: scores first, then one pair per prompt from them. Each --submit-only collects
    # what finished (one retrieve per batch) and submits the next phase; none waits for a window.
    write_candidates(tmp_path, standard(4, 4))
    cfg = config(tmp_path, bsrv, *BATCH[:1], *BATCH[2:], "judge.strategy=best_vs_worst")
    outs = []
    while len(outs) < 10 and (not outs or outs[-1] == rd(tmp_path)):
        before = bsrv.stats()["retrieves"]
        outs.append(stage.run(cfg, submit_only=True))
        assert bsrv.stats()["retrieves"] - before <= 1  # one status request for the one batch in flight
    st = bsrv.stats()
    assert outs[-1].name == "pairs.parquet" and len(outs) > 3, outs
    assert st["batches_created"] == 2 and set(st["submitted"].values()) == {1}
    assert len(st["submitted"]) == 16 + 4 * 2  # 16 scores, then best vs worst of 4 prompts in both orders
