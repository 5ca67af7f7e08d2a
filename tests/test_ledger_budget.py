"""judge.max_cost_usd and judge.max_calls cap everything written to one ledger, whoever writes it:
the judge and a separate revise.critic (two sessions of one process, as revise runs them), and
several processes on one ledger file (judge.ledger is shareable across runs).

Issue 18 item 6: the runner read the ledger's spend once, when its session opened, so the judge's
confirmation calls after a critic's critiques and revisions were admitted against a stale total
(a $1.50 cap ended at $6.19). Transport runs against the fake OpenAI server process."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from rlaif.config import load_config
from rlaif.errors import BudgetExceeded
from rlaif.judge import stage
from rlaif.judge.ledger import SCHEMA as LEDGER_SCHEMA
from rlaif.judge.ledger import Ledger
from rlaif.judge.session import JudgeSession
from test_revise import ENV, KEY, api_cfg, server, srv, standard, write_candidates  # noqa: F401 (fixtures)

PRICE = [1000.0, 1000.0]  # $0.001 a token: a call costs about $0.2, a run a few dollars




def critic(srv) -> list[str]:
    """revise.critic: another model on the same server, so its calls are another session's (another
    identity), written to the judge's ledger; no cap of its own."""
    return ["revise.critic.backend=openai", f"revise.critic.base_url={srv.base_url}", "revise.critic.model=fake-critic",
            f"revise.critic.api_key_env={ENV}", "revise.critic.api_style=chat", "revise.critic.timeout_s=5",
            "revise.critic.max_backoff_s=0.2", f"revise.critic.prices={{fake-critic: {PRICE}}}",
            f"judge.prices={{fake-judge: {PRICE}}}"]


def ledger_spend(run_dir) -> dict[str, tuple[int, float]]:
    db = sqlite3.connect(run_dir / "round-0" / "judge-ledger.sqlite")
    try:
        return {k: (n, c) for k, n, c in db.execute(
            "SELECT kind, COUNT(*), SUM(cost_usd) FROM calls WHERE status='done' GROUP BY kind")}
    finally:
        db.close()


# Uncapped, this run spends about $7.2: 8 critiques ($1.72) and 8 revisions ($2.02) by the critic,
# then 16 confirmation calls ($3.49) by the judge. 1.5: the critic alone would pass the cap;
# 6: the critic finishes under it and the judge's confirmations must stop at what is left.
@pytest.mark.parametrize("cap", [1.5, 6.0])
def test_the_judges_cap_holds_for_a_separate_critic_on_its_ledger(server, tmp_path, cap):
    write_candidates(tmp_path, standard(8))
    with pytest.raises(BudgetExceeded) as stop:
        stage.run(api_cfg(tmp_path, server, *critic(server), f"judge.max_cost_usd={cap}"))
    spend = ledger_spend(tmp_path)
    total = sum(c for _, c in spend.values())
    # Admission counts every call at its worst case (input chars / 3 tokens, the whole reply cap);
    # this server bills chars / 4 and at most the cap, so nothing in flight can push past the cap.
    assert total <= cap + 1e-9, (total, spend)
    if cap == 6.0:  # the critic finished; the judge confirmed with what was left, then stopped
        assert spend["critique"][0] == spend["revision"][0] == 8 and 0 < spend["pairwise"][0] < 16, spend
        assert str(stop.value).startswith("judge stopped: judge.max_cost_usd=6 reached"), stop.value
    else:  # the critic is stopped by the judge's cap, before the judge is asked anything
        assert str(stop.value).startswith("revise.critic stopped: judge.max_cost_usd=1.5 reached"), stop.value
        assert "pairwise" not in spend, spend
    m = re.search(r"\$(\d+\.\d+) spent over (\d+) paid calls in the ledger", str(stop.value))
    assert m, stop.value  # the message states the ledger's spend, every session's calls included
    assert float(m.group(1)) == pytest.approx(total, abs=1e-4)
    assert int(m.group(2)) == sum(n for n, _ in spend.values())


# ------------------------------------------------------------------ sessions and processes

def capped_cfg(tmp_path, *extra):
    return load_config(None, [f"run_dir={tmp_path}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                              "judge.backend=openai", "judge.base_url=http://127.0.0.1:9/v1", "judge.model=fake-judge",
                              f"judge.api_key_env={ENV}", "judge.api_style=chat",
                              f"judge.prices={{fake-judge: {PRICE}}}", *extra])


def calls(js: JudgeSession, n: int, tag: str) -> list:
    chat = [{"role": "user", "content": "Question: say something."}]
    return [c for i in range(n) for c in js.pairwise(f"{tag}{i}", chat, ("a", f"answer a {tag}{i}"),
                                                     ("b", f"answer b {tag}{i}"))]


# Another process on the same ledger: admits the calls it is given against the cap, prints how many
# it admitted, waits for its stdin to close, and exits without releasing (as a killed process would).
OTHER = textwrap.dedent("""
    import json, os, sys
    sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests")]
    from test_ledger_budget import calls, capped_cfg
    from rlaif.judge.session import JudgeSession
    from pathlib import Path
    js = JudgeSession(capped_cfg(Path(sys.argv[2]), *json.loads(sys.argv[3])), Path(sys.argv[2]) / "ledger.sqlite")
    print(sum(js.runner.admit(c) for c in calls(js, int(sys.argv[4]), "x")), flush=True)
    sys.stdin.read()
    os._exit(0)
""")


def start_other(tmp_path, extra: list[str], n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV: KEY}
    return subprocess.Popen([sys.executable, "-c", OTHER, str(ROOT), str(tmp_path), json.dumps(extra), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def admitted_by(proc: subprocess.Popen) -> int:
    """How many calls the process admitted; it stays alive (its reservations live) until finish()."""
    line = proc.stdout.readline()
    assert line.strip().isdigit(), proc.stderr.read() if proc.poll() is not None else line
    return int(line)


def finish(proc: subprocess.Popen) -> None:
    proc.communicate(timeout=120)
    assert proc.returncode == 0


def other_process(tmp_path, extra: list[str], n: int) -> int:
    proc = start_other(tmp_path, extra, n)
    try:
        return admitted_by(proc)
    finally:
        finish(proc)


def test_calls_in_flight_count_for_every_session_and_process(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    path = tmp_path / "ledger.sqlite"
    a = JudgeSession(capped_cfg(tmp_path, "judge.max_cost_usd=1"), path)
    b = JudgeSession(capped_cfg(tmp_path, "judge.max_cost_usd=1"), path)  # the critic's, say: its own connection
    try:
        est = a.runner._estimate(calls(a, 1, "a")[0])
        admitted = sum(a.runner.admit(c) for c in calls(a, 20, "a"))  # in flight: admitted, no reply yet
        assert admitted == int(1 / est) and a.runner.stopped, (admitted, est)
        assert not any(b.runner.admit(c) for c in calls(b, 3, "b")), "a second session ignored the first's calls in flight"
        assert b.runner.stopped and "max_cost_usd=1 reached" in b.runner.stopped
        assert other_process(tmp_path, ["judge.max_cost_usd=1"], 3) == 0  # and so does another process
        a.runner.ledger.release(a.runner.owner)  # a's calls came back unanswered: their reservations go
        assert other_process(tmp_path, ["judge.max_cost_usd=1"], 20) == admitted
        # that process exited without releasing, as kill -9 would: a new session sweeps its reservations
        c = JudgeSession(capped_cfg(tmp_path, "judge.max_cost_usd=1"), path)
        assert sum(c.runner.admit(x) for x in calls(c, 20, "c")) == admitted
        c.close()
        # max_calls is ledger-wide too, in-flight calls included (c's are still in flight)
        d = JudgeSession(capped_cfg(tmp_path, f"judge.max_calls={admitted}"), path)
        assert not d.runner.admit(calls(d, 1, "d")[0]) and f"max_calls={admitted} reached" in d.runner.stopped
        d.close()
    finally:
        a.close()
        b.close()


def test_processes_admitting_at_once_share_one_cap(tmp_path, monkeypatch):
    """Four processes admit 20 calls each at the same moment on one ledger: together they admit what
    one alone would, never more (each admission holds SQLite's write lock while it reads and writes)."""
    monkeypatch.setenv(ENV, KEY)
    js = JudgeSession(capped_cfg(tmp_path, "judge.max_cost_usd=2"), tmp_path / "ledger.sqlite")
    alone = int(2 / js.runner._estimate(calls(js, 1, "x")[0]))  # the script's calls all cost the same
    js.close()
    procs = [start_other(tmp_path, ["judge.max_cost_usd=2"], 20) for _ in range(4)]
    try:
        got = [admitted_by(p) for p in procs]  # all four alive, with their calls in flight, until here
    finally:
        for p in procs:
            finish(p)
    assert sum(got) == alone, got


def test_ledger_totals_follow_every_write_and_older_ledgers(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)  # a ledger written before totals existed: its calls table only
    old.executescript(LEDGER_SCHEMA.split(";")[0] + ";" + "INSERT INTO calls (key, status, cost_usd) VALUES "
                      "('k1', 'done', 0.5), ('k2', 'error', 0), ('k3', 'done', 0.25);")
    old.close()
    led = Ledger(path)
    assert led.spent() == (2, 0.75)
    led.record({"key": "k2", "status": "done", "cost_usd": 1.0})  # an error row answered later
    led.record({"key": "k1", "status": "done", "cost_usd": 9.0})  # done is final: no change
    led.record({"key": "k4", "status": "error", "cost_usd": 0.0})
    other = sqlite3.connect(path, isolation_level=None)  # any writer, even one that knows nothing of totals
    other.execute("INSERT INTO calls (key, status, cost_usd) VALUES ('k5', 'done', 2.0)")
    other.close()
    exact = sqlite3.connect(path).execute("SELECT COUNT(*), SUM(cost_usd) FROM calls WHERE status='done'").fetchone()
    assert exact == (4, 3.75) and led.spent() == (4, pytest.approx(3.75))
    led.close()


def test_a_submitted_batch_holds_its_cost_past_its_process(tmp_path, monkeypatch):
    """Issue 21: `rlaif judge --submit-only` exits with its batch in flight. The batch's calls stay
    counted (Ledger.move_reservations) when their owner releases, when a sweep clears dead owners, and
    for another process; each result recorded ends its hold, and the chunk's end ends the rest."""
    from rlaif.judge.ledger import BATCH_OWNER

    monkeypatch.setenv(ENV, KEY)
    path = tmp_path / "ledger.sqlite"
    a = JudgeSession(capped_cfg(tmp_path, "judge.max_cost_usd=2"), path)
    try:
        batch = calls(a, 2, "a")  # 4 calls, as a batch backend would have been handed them
        assert all(a.runner.admit(c) for c in batch)
        alone = int(2 / a.runner._estimate(batch[0]))
        a.ledger.add_chunks([("chunk1", [c.key for c in batch])])
        a.ledger.move_reservations([c.key for c in batch], a.runner.owner, BATCH_OWNER + "chunk1")
        a.ledger.release(a.runner.owner)  # the process is done: its own reservations go, the batch's stay
        a.ledger.sweep()
        assert a.ledger.in_flight()[0] == len(batch)
        assert a.ledger.held_keys([c.key for c in batch] + ["other"]) == {c.key for c in batch}
        assert other_process(tmp_path, ["judge.max_cost_usd=2"], 20) == alone - len(batch)
        a.ledger.sweep()  # that process exited without releasing: its calls go, the batch's stay
        assert a.ledger.in_flight()[0] == len(batch)
        a.ledger.record({"key": batch[0].key, "status": "done", "cost_usd": 0.01}, a.runner.owner)
        assert a.ledger.in_flight()[0] == len(batch) - 1  # collected by a later process: its hold ends
        a.ledger.update_chunk("chunk1", status="done")  # folded, and the process killed before it released
        a.ledger.sweep()  # a done chunk holds nothing
        assert a.ledger.in_flight() == (0, 0.0)
    finally:
        a.close()
