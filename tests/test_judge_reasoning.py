"""The OpenAI judge backend against reasoning models (GPT-5 family, o-series), through a real fake
server process in reasoning mode (tests/fake_openai_server.py --reasoning): request styles, auto's
one switch, stops on a 400 no style fixes, reasoning tokens billed, cut-off replies, possibly
billed timeouts, the iterator contract, and the key kept out of every message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import polars as pl
import pytest

from conftest import ROOT
from rlaif.config import JudgeConfig, load_config
from rlaif.errors import JudgeUnreliable, UserError
from rlaif.io import CANDIDATES_SCHEMA, write_json, write_parquet
from rlaif.judge import stage
from rlaif.judge.backends import Call
from rlaif.judge.backends.openai_batch import request_line
from rlaif.judge.backends.openai_chat import OpenAIJudge, is_reasoning_model
from servers import FakeJudgeServer, body_key

KEY = "sk-rlaif-reasoning-test-2b8e4f6a0c1d3e5f"  # distinctive: grepped for in every message
ENV = "RLAIF_REASONING_TEST_KEY"
REASONING = 40  # the server's default hidden reasoning tokens per reply
CHAT_KEYS = {"max_tokens", "temperature", "logprobs", "top_logprobs"}


def block(id_: str, text: str) -> str:
    return f"<<<BEGIN_DATA id={id_}>>>\n{text}\n<<<END_DATA id={id_}>>>"


def messages(i: int) -> tuple:
    user = (f"[CONVERSATION]\n{block('conversation', f'user: question {i}')}\n\n[RESPONSE A]\n"
            f"{block('A', f'answer one to {i}')}\n\n[RESPONSE B]\n{block('B', f'answer two to {i}')}\n\n"
            "Which response is better? Reply with exactly one of: A, B, tie.")
    return ({"role": "system", "content": "You are an impartial judge."}, {"role": "user", "content": user})


def calls(n: int) -> list[Call]:
    return [Call(f"k{i}", f"p{i}", "pairwise", f"p{i}-a", f"p{i}-b", "ab", messages(i), 60, max_tokens=16)
            for i in range(n)]


def cfg(srv: FakeJudgeServer, **kw) -> JudgeConfig:
    base = dict(backend="openai", base_url=srv.base_url, model="fake-judge", api_key_env=ENV, max_backoff_s=0.2,
                timeout_s=5, concurrency=4)
    return JudgeConfig(**{**base, **kw})


def judge(srv, cs: list[Call], model: str = "fake-judge", **kw) -> tuple[OpenAIJudge, dict]:
    backend = OpenAIJudge(cfg=cfg(srv, **kw), model=model, ledger=None)
    got = {}
    backend.run(iter(cs), lambda call, reply: got.__setitem__(call.key, reply))
    return backend, got


@pytest.fixture(scope="module")
def srv():
    with FakeJudgeServer(api_key=KEY, policy="hash", reasoning=True) as s:
        yield s
        assert KEY not in s.stderr_tail(10**6)


@pytest.fixture
def server(srv, monkeypatch):
    srv.reset()
    srv.control(reasoning=True, reasoning_tokens=REASONING)
    monkeypatch.setenv(ENV, KEY)
    yield srv


# ----------------------------------------------------------------------------- the fake server's reasoning mode

def test_server_refuses_chat_parameters_like_openai(server):
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=5) as c:
        def ask(**kw):
            return c.chat.completions.create(model="o3", messages=list(messages(0)), **kw)

        for kw, code, param in [({"max_tokens": 8}, "unsupported_parameter", "max_tokens"),
                                ({"temperature": 0}, "unsupported_value", "temperature"),
                                ({"logprobs": True}, "unsupported_parameter", "logprobs")]:
            with pytest.raises(openai.BadRequestError) as e:
                ask(**kw)
            assert (e.value.code, e.value.param, e.value.type) == (code, param, "invalid_request_error")
        r = ask(max_completion_tokens=100, temperature=1)
        u = r.usage
        assert r.choices[0].message.content in ("A", "B") and r.choices[0].logprobs is None
        assert (u.completion_tokens, u.completion_tokens_details.reasoning_tokens) == (REASONING + 1, REASONING)
        r = ask(max_completion_tokens=REASONING)  # no room after the reasoning
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("", "length")
        assert r.usage.completion_tokens == REASONING
    st = server.stats()
    assert st["faults"] == {"unsupported_parameter": 2, "unsupported_value": 1, "reasoning_cut_off": 1}
    assert st["ok"] == 1 and st["request_params"][3] == {"model": "o3", "max_completion_tokens": 100,
                                                          "temperature": 1}


def test_server_max_tokens_message_is_openais(server):
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=5) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="o3", messages=list(messages(0)), max_tokens=8)
    assert e.value.body["message"] == ("Unsupported parameter: 'max_tokens' is not supported with this model. "
                                       "Use 'max_completion_tokens' instead.")


# ----------------------------------------------------------------------------- request styles


@pytest.mark.parametrize("name,reasoning", [("o1", True), ("o1-mini", True), ("o3-mini-2025-01-31", True),
                                            ("o4-mini", True), ("gpt-5", True), ("gpt-5-nano", True),
                                            ("gpt-5.1", True), ("openai/gpt-5-mini", True), ("azure/o3", True),
                                            ("gpt-4o", False), ("gpt-4o-mini", False), ("fake-judge", False),
                                            ("o10-model", False), ("llama-o3", False), ("Qwen/Qwen2.5-7B", False)])
def test_reasoning_families_by_name(name, reasoning):
    assert is_reasoning_model(name) is reasoning


def test_auto_switches_once_and_judges_everything(server, capsys):
    cs = calls(12)
    backend, got = judge(server, cs)
    assert set(got) == {c.key for c in cs} and all(r.error is None for r in got.values())
    st = server.stats()
    # one refused request (the first, sent alone), then every call judged exactly once
    assert st["faults"] == {"unsupported_parameter": 1} and st["requests"] == 13 and st["ok"] == 12
    assert set(st["ok_by_body"].values()) == {1} and len(st["ok_by_body"]) == 12
    assert max(st["by_body"].values()) == 2 and sum(st["by_body"].values()) == 13
    assert all(not (CHAT_KEYS & set(p)) for p in st["request_params"][1:])
    for r in got.values():
        assert r.attempts == 1 and r.top is None and r.text in ("A", "B", "tie")
        assert r.extra == {"api_style": "reasoning", "reasoning_tokens": REASONING}
        assert r.output_tokens == REASONING + 1  # billed: reasoning + the visible verdict
    s = backend.stats()
    assert s["api_style"] == "reasoning" and s["switched"]["from"] == "chat" and s["switched"]["to"] == "reasoning"
    assert "'max_tokens' is not supported" in s["switched"]["why"]
    assert s["refused_requests"] == 1 and s["reasoning_tokens"] == 12 * REASONING
    assert s["timeout_s"] == 5
    err = capsys.readouterr().err
    assert err.count("switches this run to reasoning") == 1 and KEY not in err


def test_known_reasoning_name_sends_max_completion_tokens_first(server):
    _, got = judge(server, calls(3), model="openai/gpt-5-mini", reasoning_effort="low", max_completion_tokens=500)
    st = server.stats()
    assert st["faults"] == {} and st["requests"] == st["ok"] == 3
    assert st["request_params"][0] == {"model": "openai/gpt-5-mini", "max_completion_tokens": 500,
                                       "reasoning_effort": "low"}
    assert all(r.extra["api_style"] == "reasoning" for r in got.values())


def test_explicit_chat_stops_at_once_with_the_servers_message(server):
    with pytest.raises(UserError) as e:
        judge(server, calls(40), api_style="chat", concurrency=2)
    msg = str(e.value)
    assert "\n" not in msg and KEY not in msg and "judge.api_style=auto or reasoning" in msg
    assert "Unsupported parameter: 'max_tokens' is not supported with this model" in msg
    assert server.stats()["requests"] <= 2  # what was in flight, never the 40 calls


def test_a_second_refusal_after_the_switch_stops(server):
    # a reasoning name starts in reasoning style; a (scripted) refusal of max_completion_tokens
    # switches to chat, which this reasoning server refuses too: no style works, stop
    server.control(faults=[{"type": "400", "code": "unsupported_parameter", "param": "max_completion_tokens",
                            "message": "Unsupported parameter: 'max_completion_tokens'."}])
    with pytest.raises(UserError, match="neither request style is accepted"):
        judge(server, calls(5), model="o3")
    assert server.stats()["requests"] == 2


def test_reasoning_to_chat_switch_against_a_chat_server(server):
    server.control(reasoning=False, faults=[{"type": "400", "code": "unsupported_parameter",
                                             "param": "reasoning_effort", "message": "Unrecognized: reasoning_effort"}])
    backend, got = judge(server, calls(4), model="gpt-5-local-alias", reasoning_effort="high")
    assert backend.stats()["switched"]["to"] == "chat" and all(r.top for r in got.values())
    assert [set(p) & CHAT_KEYS for p in server.stats()["request_params"]][1:] == [CHAT_KEYS] * 4


def test_unsupported_effort_is_not_a_style_problem(server):
    server.control(faults=[{"type": "400", "code": "unsupported_value", "param": "reasoning_effort",
                            "message": "Unsupported value: 'reasoning_effort' does not support 'minimal'."}])
    with pytest.raises(UserError, match="check judge.reasoning_effort"):
        judge(server, calls(3), model="o3", reasoning_effort="minimal")


def test_other_400s_stay_per_call_and_the_key_is_scrubbed(server):
    echo = f"This model's maximum context length is 128 tokens (request had Authorization: Bearer {KEY})"
    server.control(faults=[{"type": "400", "code": "context_length_exceeded", "param": "messages",
                            "message": echo}])
    _, got = judge(server, calls(4), api_style="reasoning")
    errors = [r.error for r in got.values() if r.error]
    assert len(errors) == 1 and "maximum context length" in errors[0] and KEY not in errors[0]
    assert "[api key removed]" in errors[0]
    assert sum(r.error is None for r in got.values()) == 3


def test_refusal_with_the_key_in_it_is_scrubbed(server):
    server.control(reasoning=False, faults=[{"type": "400", "code": "unsupported_parameter", "param": "logprobs",
                                             "message": f"logprobs not allowed for key {KEY}"}])
    with pytest.raises(UserError) as e:
        judge(server, calls(1), api_style="chat")
    assert KEY not in str(e.value) and "logprobs not allowed for key [api key removed]" in str(e.value)


# ----------------------------------------------------------------------------- replies, timeouts, the iterator

def test_tiny_completion_cap_gives_cut_off_replies_and_a_hint(server, capsys):
    backend, got = judge(server, calls(3), api_style="reasoning", max_completion_tokens=16)
    assert all((r.text, r.finish_reason, r.error) == ("", "length", None) for r in got.values())
    assert all(r.output_tokens == 16 for r in got.values())  # the whole cap was billed
    s = backend.stats()
    assert s["cut_off_replies"] == 3 and "raise judge.max_completion_tokens" in s["hint"]
    assert capsys.readouterr().err.count("raise judge.max_completion_tokens") == 1


def test_timed_out_attempts_are_possibly_billed(server):
    server.control(faults=[{"type": "hang", "seconds": 2}])
    backend, got = judge(server, calls(2), api_style="reasoning", timeout_s=0.5, concurrency=1)
    assert all(r.error is None for r in got.values()) and got["k0"].attempts == 2
    assert backend.stats()["possibly_billed_attempts"] == 1


def test_reasoning_default_timeout_is_long():
    j = JudgeConfig(backend="openai", model="o3")
    assert j.timeout_for("reasoning") == 600 and j.timeout_for("chat") == 60


def test_calls_are_pulled_only_when_a_worker_is_free(server):
    server.control(latency_s=0.05)
    pulled, replied = [], []

    def source():
        for c in calls(10):
            pulled.append(len(pulled) - len(replied))  # calls in flight when this one is pulled
            yield c
            if len(pulled) == 7:
                return  # the stage's budget: nothing after this is ever sent

    backend = OpenAIJudge(cfg=cfg(server, api_style="reasoning", concurrency=3), model="o3", ledger=None)
    backend.run(source(), lambda call, reply: replied.append(call.key))
    assert len(replied) == 7 and server.stats()["requests"] == 7
    assert max(pulled) <= 3 - 1


def test_batch_lines_use_the_same_body(server):
    c = calls(1)[0]
    line = json.loads(request_line(c, cfg(server, max_completion_tokens=300), "o4-mini"))
    assert line["body"] == {"model": "o4-mini", "messages": list(c.messages), "max_completion_tokens": 300}
    line = json.loads(request_line(c, cfg(server), "gpt-4o"))
    assert {k: line["body"][k] for k in CHAT_KEYS} == {"max_tokens": 16, "temperature": 0, "logprobs": True,
                                                        "top_logprobs": 10}
    assert body_key(line["body"]["messages"]) == body_key(list(c.messages))


# ----------------------------------------------------------------------------- the real stage and CLI

def write_candidates(run_dir: Path, n_prompts: int = 4, n: int = 3) -> int:
    """round-0 candidates as the generate stage leaves them; returns the stage's call count (N scores + 2)."""
    rows = [{"prompt_id": f"p{p}", "candidate_id": f"p{p}-c{i}", "round": 0,
             "messages": [{"role": "user", "content": f"Question {p}: explain something."}],
             "response": f"Answer {i} to {p}: " + "word " * (4 + 3 * i), "num_tokens": 8 + 3 * i,
             "finish_reason": "stop", "model": "policy", "adapter": None, "seed": 0}
            for p in range(n_prompts) for i in range(n)]
    rdir = run_dir / "round-0"
    write_parquet(rdir / "candidates" / "part-00000.parquet", pl.DataFrame(rows, schema=CANDIDATES_SCHEMA),
                  CANDIDATES_SCHEMA)
    write_json(rdir / "candidates.manifest.json", {"stage": "generate", "round": 0, "shards": 1, "rows": len(rows)})
    return n_prompts * (n + 2)


def run_config(run_dir: Path, srv: FakeJudgeServer, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy", "judge.backend=openai",
            f"judge.base_url={srv.base_url}", "judge.model=fake-judge", f"judge.api_key_env={ENV}",
            "judge.max_backoff_s=0.2", "judge.timeout_s=5", *extra]


def read_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "round-0" / "judge-report.json").read_text())


def test_stage_auto_recovers_judges_everything_and_bills_reasoning(server, tmp_path):
    n_calls = write_candidates(tmp_path)
    stage.run(load_config(None, run_config(tmp_path, server, "judge.prices={fake-judge: [1.0, 2.0]}")))
    rep = read_report(tmp_path)
    assert rep["calls"] == n_calls and rep["pending_calls"] == 0 and rep["invalid_calls"] == 0
    b = rep["backend_stats"]
    assert b["api_style"] == "reasoning" and b["switched"]["from"] == "chat" and b["refused_requests"] == 1
    assert b["reasoning_tokens"] == n_calls * REASONING and b["possibly_billed_attempts"] == 0
    st = server.stats()  # one refused request; every call judged exactly once
    assert st["requests"] == n_calls + 1 and st["ok"] == n_calls and set(st["ok_by_body"].values()) == {1}
    # cost is what the API bills: completion tokens include the hidden reasoning (1 visible token each)
    assert rep["output_tokens"] == n_calls * (REASONING + 1)
    assert rep["cost_usd"] == pytest.approx((rep["input_tokens"] * 1.0 + rep["output_tokens"] * 2.0) / 1e6)
    j = pl.read_parquet(tmp_path / "round-0" / "judgments.parquet")
    assert j.filter(pl.col("kind") == "pairwise")["p_a"].null_count() == j.filter(pl.col("kind") == "pairwise").height
    assert (tmp_path / "round-0" / "pairs.parquet").exists()


def test_stage_tiny_completion_cap_gives_cut_off_verdicts(server, tmp_path):
    write_candidates(tmp_path, n_prompts=2)
    with pytest.raises(JudgeUnreliable):  # every verdict invalid: the invalid-rate gate stops the round
        stage.run(load_config(None, run_config(tmp_path, server, "judge.api_style=reasoning",
                                               "judge.max_completion_tokens=16")))
    j = pl.read_parquet(tmp_path / "round-0" / "judgments.parquet")
    assert j.height and set(j["verdict"]) == {"invalid"}
    assert set(j["error"]) == {"reply cut off (finish_reason=length)"}
    assert "raise judge.max_completion_tokens" in read_report(tmp_path)["backend_stats"]["hint"]


def test_cli_chat_style_stops_at_the_first_call(server, tmp_path):
    write_candidates(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update({ENV: KEY, "PYTHONPATH": str(ROOT)})
    r = subprocess.run([sys.executable, "-m", "rlaif", "judge", *run_config(tmp_path, server, "judge.api_style=chat",
                                                                            "judge.concurrency=2")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("rlaif: error:")]
    assert len(errors) == 1 and "'max_tokens' is not supported with this model" in errors[0]
    assert "judge.api_style=auto or reasoning" in errors[0]
    assert KEY not in r.stderr + r.stdout and "gave up" not in r.stderr and "rerun to retry" not in r.stderr
    assert server.stats()["requests"] <= 2
