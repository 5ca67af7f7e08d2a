"""Constitutional AI pairs (pairs.source revise|both, rlaif/judge/pairs/revise.py and revise_pairs.py).

Transport (ledger reuse, kill -9, confirmation verdicts) runs against the fake OpenAI server process,
which writes critiques and revisions deterministically (tests/fake_openai_server.py revise_text);
stage semantics (every removal counted, both sources apart, templates, a critic of its own) against
tests/judges.py's in-process ScriptedJudge; and once end to end with the local demo model."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import polars as pl
import pytest
import yaml

from conftest import ROOT
from fake_openai_server import hash_pairwise, sha
from judges import ScriptedJudge, listy
from judges import write_candidates as write_listy
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.judge import stage
from rlaif.judge import templates as T
from servers import FakeJudgeServer

KEY, ENV = "sk-revise-test-5e4d3c2b1a09", "RLAIF_REVISE_KEY"
PRINCIPLES = ["Be concise.", "Answer the question first.", "Be kind."]


def api_cfg(run_dir, srv, *extra):
    return load_config(None, api_overrides(run_dir, srv, *extra))


def api_overrides(run_dir, srv, *extra):
    return [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy", "judge.backend=openai",
            f"judge.base_url={srv.base_url}", "judge.model=fake-judge", f"judge.api_key_env={ENV}",
            "judge.api_style=chat", "judge.timeout_s=5", "judge.max_backoff_s=0.2", "pairs.source=revise",
            f"judge.principles={json.dumps(PRINCIPLES)}", "revise.max_tokens=200", *extra]


def standard(n_prompts: int, n: int = 2) -> dict[str, list[str]]:
    """Plain answers, lengths varied within the filter's default 3x length ratio."""
    return {f"p{p:02d}": [f"Answer {i} to question {p}: " + " ".join(f"w{(p * 7 + i * 3 + k) % 26}"
                                                                      for k in range(8 + 4 * i)) for i in range(n)]
            for p in range(n_prompts)}


def write_candidates(run_dir, texts: dict[str, list[str]]):
    return write_listy(run_dir, texts)


def done_count(path) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2)
        try:
            return db.execute("SELECT count(*) FROM calls WHERE status='done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def rd(run_dir):
    return run_dir / "round-0"


def revisions(run_dir) -> pl.DataFrame:
    return pl.read_parquet(rd(run_dir) / "revisions.parquet").sort("prompt_id")


def card(run_dir) -> dict:
    return json.loads((rd(run_dir) / "pairs.card.json").read_text())


def pairs(run_dir) -> pl.DataFrame:
    return pl.read_parquet(rd(run_dir) / "pairs.parquet")


def ledger_rows(run_dir) -> list[dict]:
    db = sqlite3.connect(f"file:{rd(run_dir) / 'judge-ledger.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM calls")]
    finally:
        db.close()


def drawn(pid: str, seed: int = 0, round_: int = 0) -> str:
    """The principle the issue asks for, computed apart: sha256 of [seed, round, prompt_id]."""
    h = hashlib.sha256(json.dumps([seed, round_, pid], sort_keys=True).encode()).hexdigest()
    return PRINCIPLES[int(h[:12], 16) % len(PRINCIPLES)]


def adds_up(c: dict) -> bool:
    return c["comparisons_in"] == c["kept"] + sum(c["removed"].values())


@pytest.fixture(scope="module")
def srv():
    with FakeJudgeServer(api_key=KEY, policy="longer") as s:
        yield s


@pytest.fixture
def server(srv, monkeypatch):
    srv.reset("longer")
    monkeypatch.setenv(ENV, KEY)
    return srv


# ----------------------------------------------------------------------------- the fake OpenAI server

def test_pairs_formed_principle_recorded_and_a_rerun_makes_no_call(server, tmp_path):
    cands = standard(6, 2)
    write_candidates(tmp_path, cands)
    cfg = api_cfg(tmp_path, server)
    stage.run(cfg)
    assert server.stats()["requests"] == 6 * 4  # critique, revision, confirmation in both orders
    rev = revisions(tmp_path)
    assert rev["status"].to_list() == ["ok"] * 6 and rev["candidate_id"].str.ends_with("-c0").all()
    assert rev["principle"].to_list() == [drawn(p) for p in rev["prompt_id"]]
    assert rev["principle"].n_unique() > 1  # drawn per pair, not one for the run
    for r in rev.iter_rows(named=True):  # the server's critique of the original fed its revision
        orig = cands[r["prompt_id"]][0]
        assert r["critique"] == f"Critique {sha(T.fence(orig))[:8]}: lead with the answer, then give one reason."
        assert r["revision"] == f"{T.fence(orig)} In short: revised after critique {sha(T.fence(r['critique']))[:8]}."
    p = pairs(tmp_path).sort("prompt_id")
    assert p.height == 6 and p["source"].to_list() == ["revise"] * 6 and p["consistent"].all()
    assert p["principle"].to_list() == rev["principle"].to_list()
    assert p["chosen"].to_list() == rev["revision"].to_list()
    assert p["rejected"].to_list() == [cands[pid][0] for pid in p["prompt_id"]]
    c = card(tmp_path)
    assert adds_up(c) and c["sources"]["revise"]["confirmation_rate"] == 1.0 and "rank" not in c["sources"]
    rows = ledger_rows(tmp_path)
    text = [r for r in rows if r["kind"] in ("critique", "revision")]
    assert len(text) == 12 and {r["verdict"] for r in text} == {"text"}
    assert all(r["rationale"] == r["raw"].strip() for r in text)
    assert {r["template_version"].split("@")[0] for r in text} == {"critique-v1", "revision-v1"}

    before, first = server.stats()["requests"], pairs(tmp_path)
    stage.run(cfg)
    assert server.stats()["requests"] == before  # every call answered from the ledger
    assert pairs(tmp_path).equals(first) and card(tmp_path)["sources"] == c["sources"]


def test_confirmation_keeps_only_revisions_the_judge_prefers_in_both_orders(server, tmp_path):
    cands = standard(10, 2)
    write_candidates(tmp_path, cands)
    server.reset("hash")  # position-blind: the revision wins both orders exactly when its hash is lower
    stage.run(api_cfg(tmp_path, server))
    rev = revisions(tmp_path)
    wins = {r["prompt_id"] for r in rev.iter_rows(named=True)
            if hash_pairwise(T.fence(r["revision"]), T.fence(cands[r["prompt_id"]][0])) == "A"}
    assert 0 < len(wins) < 10
    assert set(pairs(tmp_path)["prompt_id"]) == wins
    c = card(tmp_path)["sources"]["revise"]
    assert c["removed"]["revision_not_better"] == 10 - len(wins) and c["confirmed"] == len(wins)

    server.reset("first")  # slot A always: each revision wins one order and loses the other
    write_candidates(tmp_path / "first", cands)
    stage.run(api_cfg(tmp_path / "first", server, "judge.min_consistency=0"))
    c = card(tmp_path / "first")
    assert c["kept"] == 0 and c["removed"]["revision_not_better"] == 10
    assert c["sources"]["revise"]["confirmation_rate"] == 0.0

    server.reset("first")  # revise.confirm=false: every revision is a pair, and no judge call is made
    write_candidates(tmp_path / "trust", cands)
    stage.run(api_cfg(tmp_path / "trust", server, "revise.confirm=false"))
    p = pairs(tmp_path / "trust")
    assert server.stats()["requests"] == 20 and p.height == 10
    assert not p["consistent"].any() and p["margin"].is_null().all()


def test_empty_unchanged_and_cut_off_revisions_are_dropped_and_counted(server, tmp_path):
    cands = standard(5, 2)
    for pid, mark in (("p00", "MUTE"), ("p01", "UNCHANGED"), ("p02", "RAMBLE")):
        cands[pid][0] = f"{mark} {cands[pid][0]}"
    write_candidates(tmp_path, cands)
    stage.run(api_cfg(tmp_path, server))
    assert revisions(tmp_path)["status"].to_list() == ["critique_failed", "revision_unchanged",
                                                       "revision_cut_off", "ok", "ok"]
    c = card(tmp_path)
    assert (c["removed"]["critique_failed"], c["removed"]["revision_unchanged"], c["removed"]["revision_cut_off"],
            c["kept"]) == (1, 1, 1, 2) and adds_up(c)
    cut = [r for r in ledger_rows(tmp_path) if r["kind"] == "revision" and r["verdict"] == "cut_off"]
    assert len(cut) == 1 and cut[0]["output_tokens"] == 200  # revise.max_tokens reached the request
    assert server.stats()["requests"] == 5 + 4 + 2 * 2  # no revision of an empty critique, no confirmation of drops


def test_kill_9_mid_revision_then_rerun_is_a_clean_run(server, tmp_path):
    seed = random.randrange(2**32)
    print(f"kill point seed: {seed}")
    threshold = random.Random(seed).randint(13, 19)  # 12 critiques done, then 1..7 of 12 revisions
    cands = standard(12, 2)
    ref, run = tmp_path / "ref", tmp_path / "run"
    write_candidates(ref, cands)
    write_candidates(run, cands)
    stage.run(api_cfg(ref, server))
    server.reset("longer")
    server.control(latency_s=0.08)
    cfg_file = tmp_path / "revise.yaml"
    cfg_file.write_text(yaml.safe_dump({"prompts": "tests/assets/prompts.jsonl"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV: KEY}
    ledger = rd(run) / "judge-ledger.sqlite"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlaif", "judge", "--config", str(cfg_file),
                                 *api_overrides(run, server, "judge.concurrency=4")], cwd=ROOT, env=env,
                                stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and done_count(ledger) < threshold and time.monotonic() < deadline:
                time.sleep(0.005)
            alive = proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert alive, f"seed {seed}: the run ended before the kill: {(tmp_path / 'killed.log').read_text()[-2000:]}"
    done = [r for r in ledger_rows(run) if r["status"] == "done"]
    kinds = [r["kind"] for r in done]
    assert kinds.count("critique") == 12 and 0 < kinds.count("revision") < 12, f"seed {seed}: {kinds}"
    sent = {json.loads(r["request"])["messages_sha256"] for r in done}

    server.control(latency_s=0.0)
    stage.run(api_cfg(run, server))
    assert revisions(run).drop("round").equals(revisions(ref).drop("round")), f"seed {seed}"
    assert pairs(run).equals(pairs(ref)) and card(run)["sources"]["revise"]["kept"] == 12, f"seed {seed}"
    rows = ledger_rows(run)
    assert len(rows) == 48 and all(r["status"] == "done" for r in rows), f"seed {seed}"
    by_body = server.stats()["by_body"]
    assert {s: by_body[s] for s in sent} == {s: 1 for s in sent}, f"seed {seed}: a finished call was sent again"


# ----------------------------------------------------------------------------- stage semantics, in process

def local_cfg(run_dir, model, *extra):
    return load_config(None, [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                              "judge.backend=local", f"judge.model={model}", "filter.max_length_ratio=null",
                              "pairs.source=revise",
                              f"judge.principles={json.dumps(PRINCIPLES)}", *extra])


MARKED = {"p0": ["MUTE " + listy(0), listy(2)], "p1": ["UNCHANGED " + listy(0), listy(2)],
          "p2": ["RAMBLE " + listy(0), listy(2)], "p3": ["WORSEN " + listy(3), listy(1)],
          "p4": [listy(0), listy(2)], "p5": [listy(1), listy(3)]}


def test_both_sources_are_counted_apart_and_train_reads_the_pairs(scripted, tmp_path):
    write_listy(tmp_path, MARKED)
    cfg = local_cfg(tmp_path, scripted, "pairs.source=both")
    stage.run(cfg)
    c = card(tmp_path)
    rank, rev = c["sources"]["rank"], c["sources"]["revise"]
    assert adds_up(c) and adds_up(rank) and adds_up(rev)
    assert rank["comparisons_in"] == rev["comparisons_in"] == 6 and rank["kept"] + rev["kept"] == c["kept"]
    assert {k: v for k, v in rev["removed"].items() if v} == {
        "critique_failed": 1, "revision_unchanged": 1, "revision_cut_off": 1, "revision_not_better": 1}
    assert rev["kept"] == 2 and rev["confirm_asked"] == 3 and rev["confirmation_rate"] == pytest.approx(2 / 3)
    assert rank["calls"] == 6 * 4 and rev["calls"] == 6 + 5 + 3 * 2 and rev["calls_per_kept_pair"] == 17 / 2
    p = pairs(tmp_path)
    assert set(p["source"]) == {"rank", "revise"}
    assert p.filter(pl.col("source") == "rank")["principle"].is_null().all()
    kept = p.filter(pl.col("source") == "revise").sort("prompt_id")
    assert kept["prompt_id"].to_list() == ["p4", "p5"] and kept["principle"].to_list() == [drawn("p4"), drawn("p5")]
    critiques = [x for x in ScriptedJudge.calls if x.kind == "critique"]
    assert all(f"The principle: {drawn(x.prompt_id)}" in x.messages[0]["content"] for x in critiques)
    confirms = [x for x in ScriptedJudge.calls if x.kind == "pairwise" and x.a_id.endswith("-rev")]
    assert all(f"The principle: {drawn(x.prompt_id)}" in x.messages[0]["content"] for x in confirms)

    from rlaif.train.data import load_pairs

    trained, _ = load_pairs(cfg)  # train reads its own columns and ignores source and principle
    assert trained.height == c["kept"] and "principle" not in trained.columns

    from rlaif.evaluate.report import write_report

    md = write_report(tmp_path).read_text()
    assert "## Pair sources" in md and "2 of 3 (67%)" in md and f"*{drawn('p4')}*" in md


def test_score_mode_confirms_by_score_under_the_principle(scripted, tmp_path):
    write_listy(tmp_path, MARKED)
    stage.run(local_cfg(tmp_path, scripted, "judge.mode=score"))
    rev = card(tmp_path)["sources"]["revise"]
    assert rev["kept"] == 2 and rev["removed"]["revision_not_better"] == 1
    confirms = [x for x in ScriptedJudge.calls if x.kind == "score"]
    assert len(confirms) == 3 * 2 and all("The principle: " in x.messages[0]["content"] for x in confirms)


def test_a_revision_wrapped_in_the_data_markers_is_unwrapped(scripted, tmp_path):
    write_listy(tmp_path, {"p6": ["ECHO " + listy(0), listy(2)]})
    stage.run(local_cfg(tmp_path, scripted))
    rev = revisions(tmp_path).row(0, named=True)
    assert rev["status"] == "ok" and rev["revision"] == f"1. ECHO {listy(0)}\n2. Check that it worked."
    row = next(r for r in ledger_rows(tmp_path) if r["kind"] == "revision")
    assert row["verdict"] == "cut_off" and row["rationale"].startswith("<<<BEGIN_DATA")  # the ledger keeps the reply
    assert pairs(tmp_path)["chosen"].to_list() == [rev["revision"]]


def test_user_templates_and_a_critic_of_its_own(scripted, tmp_path):
    tpl = tmp_path / "my-critique.yaml"
    tpl.write_text(yaml.safe_dump({"system": "Critic. {criteria}", "user": "{conversation}\n<<<BEGIN_DATA "
                                   "id=original>>>\n{response}\n<<<END_DATA id=original>>>\nFind fault."}))
    (tmp_path / "critic-model").mkdir()
    (tmp_path / "critic-model" / "config.json").write_text("{}")  # another model: another identity
    write_listy(tmp_path, {"p4": MARKED["p4"]})
    stage.run(local_cfg(tmp_path, scripted, f"revise.critique_template={tpl}", "revise.critic.backend=local",
                        f"revise.critic.model={tmp_path / 'critic-model'}"))
    crit = next(x for x in ScriptedJudge.calls if x.kind == "critique")
    assert crit.messages[-1]["content"].endswith("Find fault.") and crit.version.startswith("my-critique@")
    ids = {r["kind"]: r["judge_id"] for r in ledger_rows(tmp_path)}
    assert ids["critique"] == ids["revision"] != ids["pairwise"]  # the critic's identity keys its calls

    tpl.write_text(yaml.safe_dump({"system": "Critic.", "user": "no placeholders"}))
    with pytest.raises(UserError, match=r"revise.critique_template: .* needs the placeholder\(s\) "
                                        r"\{conversation\}, \{response\}"):
        stage.run(local_cfg(tmp_path, scripted, f"revise.critique_template={tpl}"))


@pytest.mark.parametrize("extra,match", [
    (["judge.principles=[]"], r"judge.principles is empty"),
    (["judge.backend=reward_model"], r"revise.critic: backend reward_model does not write text"),
    (["judge.mode=checklist", "judge.checklist=[Is it short]"], r"revise.confirm: .*pairwise or score"),
])
def test_bad_settings_are_one_line_before_any_call(scripted, tmp_path, extra, match):
    write_listy(tmp_path, {"p4": MARKED["p4"]})
    with pytest.raises(UserError, match=match):
        stage.run(local_cfg(tmp_path, scripted, "pairs.source=both", *extra))
    assert ScriptedJudge.calls == []


# ----------------------------------------------------------------------------- the demo model, end to end

def test_demo_model_revises_two_prompts_end_to_end(tmp_path, demo_model, monkeypatch):
    import rlaif.generate as generate
    import rlaif.judge.runner as runner

    cfg = load_config(ROOT / "configs/quickstart.yaml", [
        f"run_dir={tmp_path}", "generate.max_prompts=2", "generate.n=1", "generate.max_tokens=32",
        "judge.mode=score", "pairs.source=revise", "revise.max_tokens=48", f"judge.principles={json.dumps(PRINCIPLES[:1])}",
        "filter.drop_length_truncated=false"])
    generate.run(cfg)
    stage.run(cfg)
    rev = revisions(tmp_path)
    assert rev.height == 2 and rev["critique"].is_not_null().all() and rev["principle"].to_list() == PRINCIPLES[:1] * 2
    j = pl.read_parquet(rd(tmp_path) / "judgments.parquet")
    assert set(j["kind"]) <= {"critique", "revision", "score"} and (j["kind"] == "critique").sum() == 2
    c = card(tmp_path)
    assert adds_up(c) and c["sources"]["revise"]["revisions"] == 2
    first = pairs(tmp_path)
    monkeypatch.setattr(runner, "load_judge", lambda *a, **k: pytest.fail("the rerun loaded the model"))
    stage.run(cfg)
    assert pairs(tmp_path).equals(first)


def test_critiques_are_not_shown_as_judge_rationales(scripted, tmp_path):
    write_listy(tmp_path, {"p4": MARKED["p4"]})
    stage.run(local_cfg(tmp_path, scripted))
    assert json.loads((rd(tmp_path) / "judge-report.json").read_text())["rationales"] == []
