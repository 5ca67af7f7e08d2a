"""`rlaif check` and the preflight of every stage: each problem its own line, all of them at once,
exit 2, in seconds, spending nothing (issue 21 items 1 and 5). The endpoint is a real server process."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import rlaif_cli
from rlaif.check import Report, collect, preflight
from rlaif.check_config import load_for_check
from rlaif.config import load_config
from rlaif.errors import UserError
from servers import FakeJudgeServer

QS = "configs/quickstart.yaml"
KEY_ENV = "RLAIF_CHECK_TEST_KEY"


@pytest.fixture(scope="module")
def server():
    with FakeJudgeServer() as srv:
        yield srv


def lines_of(overrides: list[str], monkeypatch=None) -> list[str]:
    r = Report()
    cfg = load_for_check(QS, overrides, r)
    if cfg is not None:
        stages = ["generate", "judge", "train", "evaluate"] if cfg.rounds else []
        collect(cfg, stages, r)
    return r.lines()


def api(server, *more: str) -> list[str]:
    return ["judge.backend=openai", "judge.model=fake-judge", f"judge.base_url={server.base_url}",
            f"judge.api_key_env={KEY_ENV}", "judge.mode=pairwise", *more]


def test_the_quickstart_has_no_problem():
    res = rlaif_cli("check", QS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 problem(s)" in res.stdout


# (overrides on the quickstart, the substrings of the ONE line each check gives)
CASES = {
    "prompts": (["prompts=tests/assets/nope.jsonl"], ["prompts file not found"]),
    "rubric": (["judge.rubric=tests/assets/nope-rubric.md"], ["judge.rubric", "not found"]),
    "overlap": (["evaluate.prompts=configs/prompts/quickstart.jsonl"], ["also appear in the training prompts"]),
    "heldout pairs": (["evaluate.pairs=tests/assets/nope.parquet"], ["evaluate.pairs", "not found"]),
    "model folder": (["model=/nonexistent/sft"], ["/nonexistent/sft", "no such folder"]),
    "vllm": (["generate.backend=vllm"], ["generate.backend", "pip install 'rlaif[vllm]'"]),
    "loss type": (["train.loss_type=dpo_nope"], ["train.loss_type"]),
    "unknown key": (["generate.temprature=0.5"], ["unknown key", "temperature"]),
    "bad YAML value": (["judge.checklist=[Is it short?]"], ["judge.checklist", "not valid YAML", "quote it"]),
    "4-bit on CPU": (["train.load_in_4bit=true"], ["train.load_in_4bit", "CUDA"]),
}
API_CASES = {
    "key": ([], ["environment variable", KEY_ENV, "not set"]),
    "price": (["judge.max_cost_usd=5"], ["judge.prices", "fake-judge"]),
    "endpoint down": (["judge.base_url=http://127.0.0.1:9/v1"], ["judge.base_url", "did not answer"]),
    "model not served": (["judge.model=fake-judg"], ["'fake-judg' is not among", "fake-judge"]),
    "reasoning margin": (["judge.model=gpt-5-mini", "filter.min_margin=0.2"], ["filter.min_margin", "graded"]),
}


@pytest.mark.parametrize("name", CASES)
def test_each_check_alone_gives_its_own_line(name):
    overrides, words = CASES[name]
    lines = lines_of(overrides)
    assert len(lines) == 1, lines
    assert all(w in lines[0] for w in words), lines


@pytest.mark.parametrize("name", API_CASES)
def test_each_judge_check_alone_gives_its_own_line(name, server, monkeypatch):
    overrides, words = API_CASES[name]
    if name != "key":
        monkeypatch.setenv(KEY_ENV, "sk-test-check")
    else:
        monkeypatch.delenv(KEY_ENV, raising=False)
    lines = lines_of(api(server, *overrides))
    assert len(lines) == 1, lines
    assert all(w in lines[0] for w in words), lines


def test_a_refused_key_and_the_critic_are_checked(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-client-key-0042")
    with FakeJudgeServer(api_key="sk-server-wants-another") as guarded:
        lines = lines_of(api(guarded))
        assert len(lines) == 1 and "authentication failed" in lines[0] and "HTTP 401" in lines[0], lines
        assert "sk-client-key-0042" not in lines[0]
        critic = ["pairs.source=both", "judge.principles=[Be brief.]", "revise.critic.backend=openai",
                  "revise.critic.model=gpt-4.1-mini", "revise.critic.api_key_env=RLAIF_CHECK_UNSET_CRITIC",
                  f"revise.critic.base_url={guarded.base_url}", "judge.max_cost_usd=5", "judge.prices.fake-judge=[1, 1]"]
        monkeypatch.setenv(KEY_ENV, "sk-server-wants-another")
        lines = lines_of(api(guarded, *critic))
    assert len(lines) == 2, lines
    assert any("revise.critic.api_key_env" in ln and "RLAIF_CHECK_UNSET_CRITIC" in ln for ln in lines), lines
    assert any("revise.critic.prices" in ln and "gpt-4.1-mini" in ln for ln in lines), lines


def test_a_good_api_judge_passes_and_a_reasoning_judge_warns(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-check")
    assert lines_of(api(server)) == []
    r = Report()
    collect(load_config(QS, api(server, "judge.model=gpt-5-mini")), ["judge"], r)
    assert r.problems == [] and any("margin is 1" in w for w in r.warnings), r.warnings


def test_lora_rank_above_the_engine_limit(monkeypatch):
    cfg = load_config(QS, ["rounds=2", "train.lora_r=128", "generate.max_lora_rank=64"])
    cfg.generate.backend = "vllm"
    r = collect(cfg, ["generate"])
    assert any("train.lora_r=128 is above generate.max_lora_rank=64" in ln for ln in r.lines()), r.lines()
    cfg.generate.max_lora_rank = 100
    assert any("vLLM accepts only" in ln for ln in collect(cfg, ["generate"]).lines())


def test_a_tokenizer_without_chat_template(tiny_model, tmp_path):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    lines = collect(load_config(QS, [f"model={folder}"]), ["generate"]).lines()
    assert len(lines) == 1 and "no chat template" in lines[0], lines


def test_one_broken_config_gives_every_line_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    overrides = ["judge.backend=openai", "judge.model=gpt-5-mini", "judge.base_url=http://127.0.0.1:9/v1",
                 f"judge.api_key_env={KEY_ENV}", "judge.mode=pairwise", "judge.max_cost_usd=5",
                 "filter.min_margin=0.2", "judge.rubric=tests/assets/nope-rubric.md",
                 "evaluate.prompts=configs/prompts/quickstart.jsonl", "evaluate.pairs=tests/assets/nope.parquet",
                 "generate.backend=vllm", "rounds=2", "train.lora_r=128", "train.loss_type=dpo_nope",
                 "generate.temprature=0.5", "model=/nonexistent/sft", f"run_dir={tmp_path}"]
    res = rlaif_cli("check", QS, *overrides)
    assert res.returncode == 2, res.stdout + res.stderr
    problems = [ln for ln in res.stdout.splitlines() if ln.startswith("problem: ")]
    expected = ["train.loss_type", "unknown key", KEY_ENV, "judge.prices", "judge.base_url", "filter.min_margin",
                "judge.rubric", "also appear in the training prompts", "evaluate.pairs", "rlaif[vllm]",
                "train.lora_r=128", "/nonexistent/sft"]
    for word in expected:
        assert sum(word in ln for ln in problems) >= 1, (word, problems)
    assert len(problems) == len(expected), problems
    js = rlaif_cli("check", QS, *overrides, "--json")
    out = json.loads(js.stdout)
    assert js.returncode == 2 and out["ok"] is False and len(out["problems"]) == len(expected)
    assert {"check", "key", "message"} <= set(out["problems"][0])
    assert not (tmp_path / "round-0").exists()


def test_preflight_stops_a_run_before_anything_starts(tmp_path):
    res = rlaif_cli("run", QS, f"run_dir={tmp_path}", "judge.rubric=tests/assets/nope-rubric.md",
                    "evaluate.pairs=tests/assets/nope.parquet")
    assert res.returncode == 2, res.stderr
    assert "2 problem(s) found before starting" in res.stderr
    assert "judge.rubric" in res.stderr and "evaluate.pairs" in res.stderr
    assert not (tmp_path / "round-0").exists() and not (tmp_path / "config.yaml").exists()


def test_preflight_checks_only_what_the_stage_needs():
    cfg = load_config(QS, ["evaluate.pairs=tests/assets/nope.parquet"])
    preflight(cfg, "generate")  # the held-out pairs are evaluate's
    with pytest.raises(UserError, match="evaluate.pairs"):
        preflight(cfg, "evaluate")
