"""The judge the user steers: rubric, principles and template in every key and prompt; explained,
graded and checklist verdicts; the judge identity; the invalid-rate gate. Transport behaviour runs
against the fake OpenAI server process; stage semantics against tests/judges.py's in-process judge,
which implements the real backend contract."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import polars as pl
import pytest
import yaml

from conftest import ROOT
from judges import ScriptedJudge, listy, write_candidates
from rlaif.config import load_config
from rlaif.errors import JudgeUnreliable, UserError
from rlaif.judge import stage
from rlaif.judge import templates as T
from servers import FakeJudgeServer, body_key

KEY, ENV = "sk-rubric-test-0a9b8c7d6e5f", "RLAIF_RUBRIC_KEY"
TEXTS = {f"p{p}": [listy(0), listy(2), listy(5)] for p in range(3)}


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    with FakeJudgeServer(api_key=KEY, policy="hash") as s:
        yield s


def api_cfg(run_dir, srv, *extra):
    return load_config(None, [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                              "judge.backend=openai", f"judge.base_url={srv.base_url}", "judge.model=fake-judge",
                              f"judge.api_key_env={ENV}", "judge.api_style=chat", "judge.timeout_s=5",
                              "judge.min_consistency=0", "judge.max_invalid_rate=1", *extra])


def local_cfg(run_dir, model, *extra):
    return load_config(None, [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                              "judge.backend=local", f"judge.model={model}", "judge.min_consistency=0",
                              "filter.max_length_ratio=null", *extra])


def ledger(run_dir) -> list[dict]:
    db = sqlite3.connect(run_dir / "round-0" / "judge-ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM calls")]
    finally:
        db.close()


def judgments(run_dir) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "round-0" / "judgments.parquet")


# ------------------------------------------------------------------ the rubric in keys and prompts

def test_rubric_reaches_the_server_and_an_edit_rejudges(api, tmp_path):
    write_candidates(tmp_path, TEXTS)
    rubric = "Prefer answers written as numbered steps."
    cfg = api_cfg(tmp_path, api, f"judge.rubric={rubric}", "judge.principles=[Be brief., Be kind.]")
    stage.run(cfg)
    first = {r["key"] for r in ledger(tmp_path)}
    n = api.stats()["requests"]
    assert n == len(first) > 0
    # server-side: the exact messages with the rubric and the numbered principles were received
    spec = T.build_spec(cfg.judge)
    chat = [{"role": "user", "content": "Question p0: how do I reset my password?"}]
    sent = spec.render("score", chat, listy(2))
    assert rubric in sent[0]["content"] and "1. Be brief.\n2. Be kind." in sent[0]["content"]
    assert api.stats()["ok_by_body"].get(body_key(sent)) == 1
    rep = json.loads((tmp_path / "round-0" / "judge-report.json").read_text())
    assert rep["rubric"]["first_line"] == rubric and rep["rubric"]["source"] == "inline"
    stage.run(cfg)  # unchanged rubric: the ledger answers everything
    assert api.stats()["requests"] == n
    stage.run(api_cfg(tmp_path, api, "judge.rubric=Prefer prose.", "judge.principles=[Be brief., Be kind.]"))
    second = {r["key"] for r in ledger(tmp_path)} - first
    assert len(second) == len(first) and api.stats()["requests"] == 2 * n  # every key changed, all re-judged


def test_rubric_file_user_template_and_bad_input(tmp_path, scripted, demo_model):
    write_candidates(tmp_path, TEXTS)
    stage.run(local_cfg(tmp_path, scripted, "judge.rubric=configs/rubrics/support-agent.md", "judge.mode=score"))
    rep = json.loads((tmp_path / "round-0" / "judge-report.json").read_text())
    assert rep["rubric"]["source"] == "configs/rubrics/support-agent.md"
    assert rep["rubric"]["first_line"].startswith("Acme support agent")
    assert "Prefer the response a senior Acme support agent" in ScriptedJudge.calls[0].messages[0]["content"]
    tpl = tmp_path / "mine.yaml"
    tpl.write_text(yaml.safe_dump({"system": "House judge. {criteria}", "user": "Q: {conversation}\n"
                                   "<<<BEGIN_DATA id=R>>>\n{response}\n<<<END_DATA id=R>>>\nRate it 1-9."}))
    ScriptedJudge.calls = []
    stage.run(local_cfg(tmp_path, scripted, f"judge.template={tpl}", "judge.mode=score"))
    msgs = ScriptedJudge.calls[0].messages
    assert msgs[0]["content"].startswith("House judge.") and "single digit" in msgs[1]["content"]
    bad = [("judge.rubric=missing/rubric.md", r"judge.rubric: file missing/rubric.md not found"),
           ("judge.rubric=' '", r"judge.rubric: inline text is empty"),
           (f"judge.template={tmp_path / 'none.yaml'}", r"judge.template: template file .*none.yaml not found")]
    (tmp_path / "nofields.yaml").write_text("system: s\nuser: 'Compare {response_a} and {response_b}'\n")
    bad.append((f"judge.template={tmp_path / 'nofields.yaml'}", r"judge.template: .*nofields.yaml: a pairwise "
                                                                r"template needs the placeholder\(s\) \{conversation\}"))
    for override, msg in bad:
        res = subprocess.run([sys.executable, "-m", "rlaif", "judge", f"run_dir={tmp_path}", "prompts=x.jsonl",
                              # a real model folder: the preflight checks its tokenizer (the scripted one has none)
                              "judge.backend=local", f"judge.model={demo_model}", override],
                             capture_output=True, text=True, cwd=ROOT)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert __import__("re").search(msg, lines[0]), lines[0]


# ------------------------------------------------------------------ explained and graded verdicts

@pytest.mark.parametrize("reply,explain,graded,value", [
    ("A is clearly better.\nVerdict: B", True, False, "B"),
    ("Response A wins on tone\nVerdict: [[A>>B]]", True, True, "A>>B"),
    ("I prefer A.", True, False, None),  # no final verdict line: invalid, whatever the rationale says
    ("A", True, False, None),  # with explain the fixed form is required
    ("[[B > A]]", False, True, "B>A"), ("[[A>B]] or [[B>A]]", False, True, None),
    ("Short.\nScore: 7", True, False, None),  # a score line is no pairwise verdict
])
def test_only_the_final_verdict_line_counts(reply, explain, graded, value):
    assert T.parse("pairwise", reply, explain, graded)[0] == value


def test_explained_verdicts_keep_the_rationale(tmp_path, scripted):
    write_candidates(tmp_path, TEXTS)
    cfg = local_cfg(tmp_path, scripted, "judge.explain=true", "judge.strategy=all_pairs")
    stage.run(cfg)
    j = judgments(tmp_path)
    assert j.height == 3 * 3 * 2 and j["rationale"].str.contains("Response A opens well").all()
    # the rationale names A every time; the verdicts follow the final line (more list items wins)
    lab = j.filter(pl.col("a_id").str.ends_with("c0") & pl.col("b_id").str.ends_with("c2"))
    assert set(lab["verdict"]) == {"b"}
    rep = json.loads((tmp_path / "round-0" / "judge-report.json").read_text())
    assert rep["rationales"] and "Response A" in rep["rationales"][0]["rationale"]
    assert cfg.judge.reply_tokens() == 512 and load_config(None, ["prompts=x"]).judge.reply_tokens() == 16


def test_graded_verdicts_give_margins_and_min_margin_filters(tmp_path, scripted):
    write_candidates(tmp_path, TEXTS)
    stage.run(local_cfg(tmp_path, scripted, "judge.verdicts=graded", "judge.strategy=all_pairs"))
    j = judgments(tmp_path)
    # both orders agree in sign: grades are stored from a_id's view, so both rows carry the same grade
    g = j.group_by("a_id", "b_id").agg(pl.col("grade").n_unique().alias("u"), pl.col("grade").first())
    assert (g["u"] == 1).all()
    strong = g.filter(pl.col("a_id").str.ends_with("c0") & pl.col("b_id").str.ends_with("c2"))
    weak = g.filter(pl.col("a_id").str.ends_with("c0") & pl.col("b_id").str.ends_with("c1"))  # 2 list items apart
    assert strong["grade"].to_list() == [-2.0] * 3 and weak["grade"].to_list() == [-1.0] * 3
    pairs = pl.read_parquet(tmp_path / "round-0" / "pairs.parquet")
    assert sorted(set(pairs["margin"])) == [0.5, 1.0]
    stage.run(local_cfg(tmp_path, scripted, "judge.verdicts=graded", "judge.strategy=all_pairs",
                        "filter.min_margin=0.75"))
    card = json.loads((tmp_path / "round-0" / "pairs.card.json").read_text())
    assert card["kept"] == 6 and card["removed"]["low_margin"] == 3  # c0 vs c1, graded B>A only, per prompt


# ------------------------------------------------------------------ checklist judging (RLCF)

CHECKLIST = ["judge.mode=checklist",
             "judge.checklist=[{item: 'Is the response written as a numbered list?', weight: 2}, "
             "'Is the response under 80 characters?']"]


def test_checklist_items_in_the_ledger_best_vs_worst_and_rerun(tmp_path, scripted):
    write_candidates(tmp_path, TEXTS)
    cfg = local_cfg(tmp_path, scripted, *CHECKLIST)
    stage.run(cfg)
    rows = ledger(tmp_path)
    assert len(rows) == 3 * 3 * 2 and {r["item"] for r in rows} == {"0", "1"}
    assert {r["verdict"] for r in rows} <= {"yes", "no"}
    # aggregation: weighted mean of P(yes): numbered (0.9 * 2 + 0.2 * 1) / 3 (too long for item 1),
    # the one-line prose (0.2 * 2 + 0.9 * 1) / 3 (short): the weight of the list item decides
    pairs = pl.read_parquet(tmp_path / "round-0" / "pairs.parquet")
    assert pairs.height == 3 and pairs["rejected_id"].str.ends_with("c0").all()
    expected = (0.9 * 2 + 0.2) / 3 - (0.2 * 2 + 0.9) / 3
    assert pairs["margin"].to_list() == pytest.approx([expected] * 3)  # c1 and c2 tie at the top; c1 by id
    rep = json.loads((tmp_path / "round-0" / "judge-report.json").read_text())
    item0 = next(i for i in rep["checklist_items"] if i["item"] == "0")
    assert item0["p_yes_best"] == pytest.approx(0.9) and item0["p_yes_worst"] == pytest.approx(0.2)
    ScriptedJudge.calls = []
    stage.run(cfg)
    assert ScriptedJudge.calls == []  # a rerun: zero calls


def test_checklist_on_the_local_model_reads_yes_no_off_the_logits(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_candidates(tmp_path, {"p0": [listy(0), listy(3)]})
    cfg = local_cfg(tmp_path, tiny_model, "judge.mode=checklist", "judge.checklist=['Is it a numbered list?']",
                    "judge.max_invalid_rate=1")
    stage.run(cfg)
    j = judgments(tmp_path)
    assert j.height == 2 and set(j["kind"]) == {"checklist"}
    # independently: P(Yes) / (P(Yes) + P(No)) after the chat template's assistant prefix
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    spec = T.build_spec(cfg.judge)
    chat = [{"role": "user", "content": "Question p0: how do I reset my password?"}]
    for row in j.iter_rows(named=True):
        text = listy(0) if row["a_id"].endswith("c0") else listy(3)
        msgs = spec.render("checklist", chat, text, question="Is it a numbered list?")
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([list(ids)])).logits[0, -1], -1)
        y, n = (float(logp[tok.encode(w, add_special_tokens=False)[0]].exp()) for w in ("Yes", "No"))
        assert row["score_a"] == pytest.approx(y / (y + n), rel=1e-4)
        assert row["verdict"] == ("yes" if y > n else "no")


# ------------------------------------------------------------------ identity, stale errors, the invalid gate

def test_another_endpoint_is_another_judge_unless_declared_the_same(api, tmp_path, monkeypatch):
    write_candidates(tmp_path, {"p0": [listy(0), listy(2)]})
    stage.run(api_cfg(tmp_path, api))
    n = api.stats()["requests"]
    with FakeJudgeServer(api_key=KEY, policy="hash") as other:  # same model name, another server
        stage.run(api_cfg(tmp_path, other))
        assert other.stats()["requests"] == n  # not one verdict reused from the first endpoint
        stage.run(api_cfg(tmp_path, api, "judge.identity=acme-judge-pool"))
        other.reset()
        stage.run(api_cfg(tmp_path, other, "judge.identity=acme-judge-pool"))
        assert other.stats()["requests"] == 0  # declared one judge: replicas share the ledger


def test_a_recovered_call_keeps_no_stale_error(api, tmp_path):
    write_candidates(tmp_path, {"p0": [listy(0), listy(2)]})
    api.control(storm={"type": "500", "rate": 1.0})
    with pytest.raises(UserError, match="got no reply"):
        stage.run(api_cfg(tmp_path, api, "judge.max_retries=0"))
    assert all(r["status"] == "error" and r["error"] for r in ledger(tmp_path))
    api.control(storm=None)
    stage.run(api_cfg(tmp_path, api, "judge.max_retries=0"))
    rows = ledger(tmp_path)
    assert rows and all(r["status"] == "done" and r["error"] is None for r in rows)


def test_a_judge_whose_every_verdict_is_invalid_fails_the_round(api, tmp_path):
    write_candidates(tmp_path, {"p0": [listy(0), listy(2)], "p1": [listy(1), listy(3)]})
    api.control(storm={"type": "text", "content": "Here is the template you sent me", "rate": 1.0})
    cfg = api_cfg(tmp_path, api, "judge.max_invalid_rate=0.5")
    with pytest.raises(JudgeUnreliable, match=r"judge: 4 of 4 verdicts are invalid \(rate 1.000 > "
                                              r"judge.max_invalid_rate=0.5\)"):
        stage.run(cfg)
    rdir = tmp_path / "round-0"
    assert not (rdir / "judge.manifest.json").exists() and not (rdir / "pairs.card.json").exists()
    with pytest.raises(UserError, match="the judge has not finished"):
        from rlaif.judge.pairs import filter as flt

        flt.run(cfg)


def test_credentials_in_base_url_never_reach_errors_or_the_saved_config(tmp_path, monkeypatch):
    from rlaif.config import dump_config
    from rlaif.credentials import redact_url
    from rlaif.judge.identity import endpoint

    url = "https://alice:s3cr3t-tok@judge.example.com:8443/v1?api-key=k3y-in-query&region=eu"
    red = redact_url(url)
    assert "s3cr3t" not in red and "k3y-in-query" not in red and "alice" not in red
    assert red == "https://***@judge.example.com:8443/v1?api-key=%2A%2A%2A&region=eu"
    assert endpoint(url) == "https://judge.example.com:8443/v1"  # the identity: no credential either
    saved = dump_config(load_config(None, ["prompts=x", f"judge.base_url={url}"]))
    assert "s3cr3t" not in saved and "k3y-in-query" not in saved and "judge.example.com" in saved
    # a 404 from an endpoint given with credentials: the error names the endpoint, not the secret
    write_candidates(tmp_path, {"p0": [listy(0), listy(2)]})
    monkeypatch.setenv(ENV, KEY)
    with FakeJudgeServer(api_key=KEY) as srv:
        bad = srv.url.replace("http://", "http://bob:pa55word@") + "/nope?token=t0ken"
        with pytest.raises(UserError) as e:
            stage.run(api_cfg(tmp_path, srv, f"judge.base_url={bad}"))
    assert "HTTP 404" in str(e.value) and "pa55word" not in str(e.value) and "t0ken" not in str(e.value)


def test_the_length_audit_covers_judges_that_score_alone(tmp_path, scripted):
    # the scripted scorer rewards list items, and longer candidates here have more of them
    write_candidates(tmp_path, TEXTS)
    stage.run(local_cfg(tmp_path, scripted, "judge.mode=score"))
    rep = json.loads((tmp_path / "round-0" / "judge-report.json").read_text())
    assert rep["single_length"] == {"longer_scored_higher_rate": 1.0, "comparisons": 3}
    write_candidates(tmp_path, {f"p{p}": [listy(3, words=1), listy(0, words=40)] for p in range(3)})
    stage.run(local_cfg(tmp_path, scripted, "judge.mode=score"))
    rep = json.loads((tmp_path / "round-0" / "judge-report.json").read_text())
    assert rep["single_length"]["longer_scored_higher_rate"] == 0.0  # the short list beats the long prose


def test_report_md_names_the_rubric_and_shows_rationales(tmp_path, scripted):
    from rlaif.evaluate.report import write_report

    write_candidates(tmp_path, TEXTS)
    stage.run(local_cfg(tmp_path, scripted, "judge.rubric=configs/rubrics/code-reviewer.md", "judge.explain=true",
                        "judge.strategy=all_pairs"))
    text = write_report(tmp_path).read_text()
    sha = json.loads((tmp_path / "round-0" / "judge-report.json").read_text())["rubric"]["sha256"]
    assert f'criteria: configs/rubrics/code-reviewer.md {sha} "Careful code reviewer"' in text
    assert "Response A opens well" in text


def test_checklist_from_prompt_writes_items_through_the_ledger(tmp_path, scripted):
    write_candidates(tmp_path, TEXTS)
    cfg = local_cfg(tmp_path, scripted, *CHECKLIST, "judge.checklist_from_prompt=true")
    stage.run(cfg)
    kinds = [c.kind for c in ScriptedJudge.calls]
    assert kinds.count("checklist_writer") == 3  # one per prompt, before any item is asked
    rows = ledger(tmp_path)
    writer = [r for r in rows if r["kind"] == "checklist_writer"]
    assert len(writer) == 3 and json.loads(writer[0]["rationale"]) == ["Is the answer a numbered list?", "Is it polite?"]
    items = {r["item"] for r in rows if r["kind"] == "checklist"}
    assert items == {"0", "1", "p0", "p1"}  # the configured items, then the prompt's own
    ScriptedJudge.calls = []
    stage.run(cfg)
    assert ScriptedJudge.calls == []


def test_an_explained_reply_without_a_final_verdict_is_invalid_and_kept(api, tmp_path):
    write_candidates(tmp_path, {"p0": [listy(0), listy(2)]})
    api.control(storm={"type": "text", "content": "Both are fine, but I lean to A.", "rate": 1.0})
    stage.run(api_cfg(tmp_path, api, "judge.explain=true", "judge.strategy=all_pairs"))
    j = judgments(tmp_path)
    assert j.height == 2 and set(j["verdict"]) == {"invalid"}
    assert set(j["raw"]) == {"Both are fine, but I lean to A."} and set(j["error"]) == {"unparseable pairwise reply"}
    sent = api.stats()["request_params"][0]
    assert sent["max_tokens"] == 512  # explain grows the reply cap


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("run_dir: runs/caf\xe9\nprompts: x.jsonl\n".encode("latin-1"))
    res = subprocess.run([sys.executable, "-m", "rlaif", "judge", "--config", str(bad)], capture_output=True,
                         text=True, cwd=ROOT)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "latin1.yaml: not UTF-8 text (byte 17" in lines[0], res.stderr
