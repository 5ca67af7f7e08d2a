"""judge.processes=N (rlaif/judge/workers.py) against the real fake OpenAI server: the same judgments
as one process, each call sent once, a kill -9 of a worker or of the parent loses nothing beyond the
calls in flight; and the plan keeps no rendered call once it is sent (issue 22, item 5)."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from rlaif.judge import stage
from rlaif.judge.backends import Call
from test_judge_openai import (KEY, cli_env, config, config_file, done_count, judgments, key_of_frame,
                               ledger_rows, rd, report, sha_of, standard, write_candidates)
from servers import FakeJudgeServer

CALLS = 48  # standard(): 8 prompts x 4 candidates, all_pairs, both orders


@pytest.fixture(scope="module")
def srv():
    with FakeJudgeServer(api_key=KEY, policy="hash") as s:
        yield s


@pytest.fixture
def server(srv, monkeypatch):
    srv.reset()
    monkeypatch.setenv("RLAIF_TEST_KEY", KEY)
    yield srv
    srv.reset()


@pytest.fixture
def reference(server, tmp_path):
    """One process's judgments of standard(): what every other run must reproduce."""
    write_candidates(tmp_path / "ref", standard())
    stage.run(config(tmp_path / "ref", server))
    server.reset()
    return key_of_frame(judgments(tmp_path / "ref"))


def test_two_processes_same_judgments_each_call_once(server, reference, tmp_path):
    write_candidates(tmp_path, standard())
    # concurrency 1 per process: more than one request at once can only come from a second process;
    # 0.15 s a reply keeps this process busy (16 score calls) past a worker's start (~1 s of imports)
    server.control(latency_s=0.15)
    stage.run(config(tmp_path, server, "judge.processes=2", "judge.concurrency=1"))
    assert key_of_frame(judgments(tmp_path)).equals(reference)
    st = server.stats()
    assert st["requests"] == CALLS and set(st["by_body"].values()) == {1}
    assert st["max_in_flight"] == 2
    rep = report(tmp_path)
    assert rep["calls_made_this_run"] == CALLS and rep["pending_calls"] == 0
    server.reset()
    stage.run(config(tmp_path, server, "judge.processes=2"))  # a rerun pays nothing
    assert server.stats()["requests"] == 0


def workers_of(pid: int) -> list[int]:
    """Live `python -m rlaif.judge.worker_main` children of pid."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == pid and b"rlaif.judge.worker_main" in cmd and stat[0] != "Z":
            out.append(int(d.name))
    return out


def kill_mid_run(run_dir: Path, server, tmp_path: Path, victim: str) -> tuple[dict, list[int]]:
    """Start `rlaif judge` with 2 processes, kill -9 the worker or the parent once some calls are
    done; returns (the keys done before the kill -> their body hash, the worker pids)."""
    server.control(latency_s=0.08)
    cfg_path = config_file(tmp_path / "judge.yaml", run_dir, server)
    ledger = rd(run_dir) / "judge-ledger.sqlite"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlaif", "judge", "--config", str(cfg_path),
                                 "judge.concurrency=2", "judge.processes=2"], cwd=ROOT, env=cli_env(),
                                stdout=log, stderr=log)
        try:
            deadline, workers = time.monotonic() + 60, []
            while proc.poll() is None and time.monotonic() < deadline and (not workers or done_count(ledger) < 8):
                workers = workers or workers_of(proc.pid)
                time.sleep(0.005)
            assert workers and proc.poll() is None, (tmp_path / "killed.log").read_text()
            os.kill(workers[0] if victim == "worker" else proc.pid, signal.SIGKILL)
            if victim == "worker":
                assert proc.wait(60) != 0  # the parent finishes its share and says calls are missing
        finally:
            if proc.poll() is None and victim == "parent":
                proc.wait()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {r["key"]: sha_of(r) for r in ledger_rows(run_dir) if r["status"] == "done"}, workers


@pytest.mark.parametrize("victim", ["worker", "parent"])
def test_kill_9_then_rerun_sends_only_what_is_missing(server, reference, tmp_path, victim):
    run_dir = tmp_path / "run"
    write_candidates(run_dir, standard())
    done_before, workers = kill_mid_run(run_dir, server, tmp_path, victim)
    assert 8 <= len(done_before) < CALLS
    if victim == "parent":  # its worker dies with it (PR_SET_PDEATHSIG, rlaif/procs.py)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
                  for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not workers_of(os.getpid()) and all(not Path(f"/proc/{w}").exists() or
                                                   Path(f"/proc/{w}/stat").read_text().split()[2] == "Z"
                                                   for w in workers)
    before = server.stats()["requests"]
    server.control(latency_s=0.0)
    stage.run(config(run_dir, server, "judge.processes=2"))
    assert key_of_frame(judgments(run_dir)).equals(reference)
    by_body = server.stats()["by_body"]
    assert all(by_body[s] == 1 for s in done_before.values()), "a call answered before the kill was sent again"
    # repeats: at most the calls in flight at the kill (2 processes x concurrency 2)
    assert server.stats()["requests"] - CALLS <= 4, (before, server.stats()["requests"])


def test_the_plan_keeps_no_rendered_call_once_sent(server, tmp_path):
    from rlaif.judge.candidates import read_candidates, split_inputs
    from rlaif.judge.pairs.rank import rank_round
    from rlaif.judge.session import JudgeSession

    write_candidates(tmp_path, standard())
    cfg = config(tmp_path, server)
    accepted, _ = split_inputs(read_candidates(cfg.round_dir()), cfg.judge)
    with JudgeSession(cfg, tmp_path / "ledger.sqlite") as js:
        plan, _ = rank_round(js, cfg, accepted)
        gc.collect()
        keys = set(plan.frame()["key"])  # this stage's calls: other tests in this worker process may hold theirs
        held = [o for o in gc.get_objects() if isinstance(o, Call) and o.key in keys]
        assert len(plan) == CALLS and len(keys) == CALLS and held == []
        assert js.results(plan).height == CALLS


def test_judgments_are_written_a_slice_at_a_time_and_equal_the_whole_join(server, tmp_path, monkeypatch):
    import polars as pl
    import pyarrow.parquet as pq

    from rlaif.judge import session as S
    from rlaif.judge.candidates import read_candidates, split_inputs
    from rlaif.judge.pairs.rank import rank_round

    write_candidates(tmp_path, standard())
    cfg = config(tmp_path, server, "judge.explain=true")
    accepted, _ = split_inputs(read_candidates(cfg.round_dir()), cfg.judge)
    monkeypatch.setattr(S, "SLICE", 7)  # 48 calls: 7 slices, each one row group
    with S.JudgeSession(cfg, tmp_path / "ledger.sqlite") as js:
        plan, _ = rank_round(js, cfg, accepted)
        whole = js.results(plan)
        assert js.write_results(plan, tmp_path / "j.parquet") == CALLS
    assert pq.ParquetFile(tmp_path / "j.parquet").metadata.num_row_groups == 7
    got = pl.read_parquet(tmp_path / "j.parquet")
    assert got.equals(whole) and got["rationale"].is_not_null().all()  # the texts too, in the same order


@pytest.mark.parametrize("cap", [["judge.max_calls=20"],
                                 ["judge.max_cost_usd=2.5", "judge.prices={fake-judge: [1000.0, 1000.0]}"]])
def test_a_budget_stops_two_processes_together_and_a_rerun_finishes(server, reference, tmp_path, cap):
    """The cap is ledger-wide: two client processes together stay within it (admission is a ledger
    reservation, rlaif/judge/ledger.py reserve), the stage stops loudly, and a rerun with the cap
    lifted sends only the calls still missing."""
    from rlaif.errors import BudgetExceeded

    write_candidates(tmp_path, standard())
    server.control(latency_s=0.02)
    with pytest.raises(BudgetExceeded, match="Rerun"):
        stage.run(config(tmp_path, server, "judge.processes=2", "judge.concurrency=2", *cap))
    done = {r["key"] for r in ledger_rows(tmp_path) if r["status"] == "done"}
    sent = server.stats()["requests"]
    assert 0 < len(done) < CALLS and sent == len(done)  # nothing sent beyond what was admitted and answered
    if "max_calls" in cap[0]:
        assert len(done) == 20  # admitted up to the cap, across both processes
    else:  # ~$0.21 a call at $0.001 a token: the cap admits a handful, and the total stays under it
        assert 0 < sum(r["cost_usd"] for r in ledger_rows(tmp_path) if r["status"] == "done") <= 2.5
    assert not (rd(tmp_path) / "pairs.parquet").exists()
    stage.run(config(tmp_path, server, "judge.processes=2"))
    assert key_of_frame(judgments(tmp_path)).equals(reference)
    assert server.stats()["requests"] == CALLS  # the rerun paid only for the missing calls


def test_score_calls_read_the_candidates_a_slice_at_a_time(server, tmp_path, monkeypatch):
    """judge.mode=score from the stage's lazy scan: no frame of more than STREAM_ROWS candidates is ever
    collected, and the calls and judgments are those of the candidates passed as one frame."""
    import polars as pl

    from rlaif.judge.candidates import scan_candidates, split_inputs
    from rlaif.judge.pairs import rank
    from rlaif.judge.session import JudgeSession

    write_candidates(tmp_path, standard())
    cfg = config(tmp_path, server, "judge.mode=score")
    lazy, _ = split_inputs(scan_candidates(cfg.round_dir()), cfg.judge)
    with JudgeSession(cfg, tmp_path / "ledger.sqlite") as js:
        whole, _ = rank.rank_round(js, cfg, lazy.collect())
        expect = js.results(whole)
    seen, batches, real = [], [], pl.LazyFrame.collect_batches

    def collect_batches(self, *a, **kw):
        for b in real(self, *a, **kw):
            batches.append(b.height)
            yield b

    real_collect = pl.LazyFrame.collect
    monkeypatch.setattr(pl.LazyFrame, "collect", lambda self, *a, **kw: seen.append(r := real_collect(self, *a, **kw)) or r)
    monkeypatch.setattr(pl.LazyFrame, "collect_batches", collect_batches)
    monkeypatch.setattr(rank, "STREAM_ROWS", 5)
    server.reset()
    with JudgeSession(cfg, tmp_path / "ledger2.sqlite") as js:
        plan, _ = rank.rank_round(js, cfg, lazy)
        got = js.results(plan)
    assert server.stats()["requests"] == 32  # 8 prompts x 4 candidates, each scored once
    assert sum(batches) == 32 and max(batches) <= 5
    assert all(f.height <= 5 for f in seen if "response" in f.columns)  # never the round whole
    cols = ["key", "prompt_id", "a_id", "verdict", "score_a"]
    assert got.select(cols).equals(expect.select(cols))
