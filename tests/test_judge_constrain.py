"""judge.constrain (issue 22, item 4) against the real fake server process: a vLLM-looking endpoint gets
`structured_outputs: {"choice": labels}`, OpenAI's gets response_format json_schema, every verdict parses
and its probability is read at the constrained label's token; `on` where it cannot is one line; `off`
(and auto where nothing is supported) leaves requests and the judge identity as they were.
The same against vLLM's real server: tests/test_judge_serve.py."""
from __future__ import annotations

import polars as pl
import pytest

from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.judge import constrain
from rlaif.judge import templates as T
from rlaif.judge.backends import Call
from rlaif.judge.backends.openai_chat import request_body
from rlaif.judge.session import JudgeSession
from servers import FakeJudgeServer

CHAT = [{"role": "user", "content": "Tell me about cats."}]
CANDS = [("c0", "Cats purr."), ("c1", "Cats are small carnivores that have lived beside people for ten thousand "
                                      "years, hunting mice and sleeping in the sun."), ("c2", "Meow.")]
ITEM = "The response is not short."


def cfg_for(srv: FakeJudgeServer, tmp_path, *extra: str):
    return load_config(None, [f"run_dir={tmp_path}", "prompts=x", "judge.backend=openai", "judge.model=fake-judge",
                              f"judge.base_url={srv.base_url}", "judge.api_key_env=null", "judge.mode=checklist",
                              f"judge.checklist=[{ITEM!r}]", "judge.timeout_s=5", "judge.max_retries=0", *extra])


def judge_all(cfg, tmp_path) -> tuple[dict, pl.DataFrame]:
    with JudgeSession(cfg, tmp_path / "ledger.sqlite") as js:
        calls = [c for cand in CANDS for c in js.single("p0", CHAT, cand)]
        js.send(calls, "judge: checklist")
        return js.identity, js.results(calls).sort("a_id")


@pytest.fixture(scope="module")
def vllm_like():
    with FakeJudgeServer(policy="longer", env={"FAKE_OPENAI_OWNED_BY": "vllm"}) as srv:
        yield srv


def test_vllm_endpoint_gets_choice_and_every_verdict_has_its_probability(vllm_like, tmp_path):
    vllm_like.control(reset=True)
    ident, res = judge_all(cfg_for(vllm_like, tmp_path), tmp_path)
    assert ident["constrain"] == "choice"
    params = vllm_like.stats()["request_params"]
    assert len(params) == 3 and all(p["structured_outputs"] == {"choice": ["Yes", "No"]} for p in params)
    assert all("response_format" not in p for p in params)
    assert res["verdict"].to_list() == ["no", "yes", "no"]  # policy longer: yes above 40 characters
    # P(yes) from the label token's alternatives (0.88 vs 0.10, normalised), not the 1.0/0.0 of a bare label
    assert res["score_a"].to_list() == pytest.approx([0.1 / 0.98, 0.88 / 0.98, 0.1 / 0.98])


def test_openai_endpoint_gets_a_json_schema_and_the_label_token_inside_it_is_read(vllm_like, tmp_path, monkeypatch):
    monkeypatch.setattr(constrain, "openai_host", lambda url: True)  # the fake stands in for api.openai.com
    vllm_like.control(reset=True)
    ident, res = judge_all(cfg_for(vllm_like, tmp_path), tmp_path)
    assert ident["constrain"] == "json_schema"
    (p0, *_) = params = vllm_like.stats()["request_params"]
    assert len(params) == 3 and all("structured_outputs" not in p for p in params)
    schema = p0["response_format"]["json_schema"]
    assert p0["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"]["properties"]["verdict"]["enum"] == ["Yes", "No"]
    assert res["raw"].to_list()[1] == '{"verdict":"Yes"}'  # the reply as received is what the ledger keeps
    assert res["verdict"].to_list() == ["no", "yes", "no"]
    assert res["score_a"].to_list() == pytest.approx([0.1 / 0.98, 0.88 / 0.98, 0.1 / 0.98])


def test_on_where_the_endpoint_cannot_is_one_line(tmp_path):
    with FakeJudgeServer() as plain:  # owned_by "rlaif-tests": neither OpenAI nor vLLM
        with pytest.raises(UserError) as e:
            JudgeSession(cfg_for(plain, tmp_path, "judge.constrain='on'"), tmp_path / "ledger.sqlite")
        assert plain.stats()["requests"] == 0  # refused before any judge call
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("judge.constrain=on: ") and "rlaif-tests" in msg
    assert "set judge.constrain: auto" in msg
    with pytest.raises(UserError, match="judge.constrain=on: judge.explain replies are free text"):
        constrain.resolve(cfg_for(plain, tmp_path, "judge.constrain='on'", "judge.explain=true").judge)


def test_off_and_unsupported_auto_leave_requests_and_identity_as_they_were(vllm_like, tmp_path):
    with FakeJudgeServer(policy="longer") as plain:
        ident_auto, res = judge_all(cfg_for(plain, tmp_path / "a"), tmp_path / "a")
        params = plain.stats()["request_params"]
    assert "constrain" not in ident_auto and len(params) == 3
    assert not any({"structured_outputs", "response_format"} & set(p) for p in params)
    assert res["verdict"].to_list() == ["no", "yes", "no"]
    vllm_like.control(reset=True)
    ident_off, _ = judge_all(cfg_for(vllm_like, tmp_path / "b", "judge.constrain='off'"), tmp_path / "b")
    assert "constrain" not in ident_off
    assert not any("structured_outputs" in p for p in vllm_like.stats()["request_params"])
    # explained verdicts are free text: never constrained, even where the endpoint could
    explain = cfg_for(vllm_like, tmp_path, "judge.explain=true").judge
    assert constrain.resolve(explain) == "off"


def test_free_text_calls_carry_no_constraint(vllm_like, tmp_path):
    j = cfg_for(vllm_like, tmp_path).judge
    msgs = ({"role": "user", "content": "write a checklist"},)
    writer = Call("k", "p0", "checklist_writer", "p0", None, None, msgs, labels=())
    verdict = Call("k", "p0", "checklist", "c0", None, None, msgs, labels=("Yes", "No"))
    assert "structured_outputs" not in request_body("chat", writer, j, "fake-judge")
    assert request_body("chat", verdict, j, "fake-judge")["structured_outputs"] == {"choice": ["Yes", "No"]}


def test_probability_is_read_at_the_label_when_the_stop_token_follows_it():
    # vLLM lists the stop token in logprobs.content but not in message.content (measured with 0.32)
    positions = [("No", {"No": -0.54, "Yes": -0.91, "Y": -4.29}), ("<|im_end|>", {"<|im_end|>": 0.0})]
    top = T.verdict_top("checklist", "No", positions)
    assert T.p_yes(top) == pytest.approx(0.4085, abs=1e-3)


def test_a_server_that_refuses_the_constraint_stops_the_stage_in_one_line(tmp_path):
    from rlaif.judge.backends.openai_chat import OpenAIJudge

    with FakeJudgeServer() as plain:  # not vLLM: refuses structured_outputs with a 400, as OpenAI's API would
        j = cfg_for(plain, tmp_path).judge.model_copy(update={"serve": True})  # serve: resolved as vLLM, unprobed
        call = Call("k", "p0", "checklist", "c0", None, None, ({"role": "user", "content": "x"},), labels=("Yes", "No"))
        with pytest.raises(UserError) as e:
            OpenAIJudge(cfg=j, model="fake-judge").run(iter([call]), lambda c, r: None)
    msg = str(e.value)
    assert "\n" not in msg and "refused the verdict constraint (choice, from judge.constrain=auto)" in msg
    assert "set judge.constrain: off" in msg
