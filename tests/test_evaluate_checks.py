"""Independent checks (rlaif/evaluate/checks.py): the config's one-line errors, what each kind of
check passes, the paired bootstrap against an exact enumeration, and eval.json's `checks` from a
real `rlaif evaluate` with the tiny model and a fake judge server process."""
from __future__ import annotations

import itertools
import json
import re
import textwrap
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from conftest import ASSETS, rlaif_cli
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.evaluate.checks import apply, compare_shares, measure, sentence_count, word_count
from servers import FakeJudgeServer

KEY = "sk-rlaif-checks-test-5f0e27"
ENV = "RLAIF_CHECKS_TEST_KEY"
BRIEF_YAML = r"""
prompts: tests/assets/prompts.jsonl
evaluate:
  checks:
    numbered_list: {regex: '(?m)^\s*1[.)]\s'}
    no_apology: {regex: '(?i)\bsorry\b', must_match: false}
    short: {max_words: 120}
    two_to_three: {min_sentences: 2, max_sentences: 3}
    is_json: {json: true}
    custom: {function: mychecks:polite}
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A checks file in the current directory, as a user would keep one beside the config."""
    (tmp_path / "mychecks.py").write_text(textwrap.dedent("""
        def polite(prompt, response):
            return "please" in response.lower()

        def asks(prompt, response):
            return prompt[-1]["content"].endswith("?")   # prompt: the chat messages list

        def broken(prompt, response):
            raise KeyError("boom")

        def score(prompt, response):
            return 0.7
        """))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import sys

    sys.modules.pop("mychecks", None)


def _load(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return load_config(path, [f"prompts={ASSETS / 'prompts.jsonl'}"])


def test_brief_yaml_loads_and_every_kind_decides(user_module):
    cfg = _load(user_module, BRIEF_YAML)
    c = cfg.evaluate.checks
    assert list(c) == ["numbered_list", "no_apology", "short", "two_to_three", "is_json", "custom"]
    chat = [{"role": "user", "content": "List two fruits, please?"}]

    def passes(name, text):
        return bool(apply(name, c[name], [("p", chat, text)])[0])

    assert passes("numbered_list", "Fruits:\n 1. apple\n2. pear") and not passes("numbered_list", "apple, pear 1.")
    assert passes("no_apology", "Here you go.") and not passes("no_apology", "Sorry, I cannot.")
    assert passes("short", "word " * 120) and not passes("short", "word " * 121)
    assert passes("two_to_three", "One. Two!") and not passes("two_to_three", "Only one.")
    assert not passes("two_to_three", "A. B. C? D.")
    assert passes("is_json", ' {"a": [1, 2]}\n') and not passes("is_json", "```json\n{}\n```")
    assert passes("custom", "Please enjoy.") and not passes("custom", "Enjoy.")


def test_counting_rules():
    assert word_count("  two\twords\n") == 2 and word_count("") == 0
    assert sentence_count("") == 0 and sentence_count("No end mark") == 1
    assert sentence_count("1. First item.\n2. Second item.") == 2  # list numbers are not sentences
    assert sentence_count("Intro:\n- apples\n- pears") == 3  # a line break ends one
    assert sentence_count("Pi is 3.14 today. Yes… really?! Done") == 4  # a decimal point is not an end


@pytest.mark.parametrize("spec, fragment", [
    ("bad: {regex: '(unclosed'}", "evaluate.checks.bad.regex: not a valid regular expression"),
    ("bad: {regexp: 'x'}", "evaluate.checks.bad.regexp: unknown key"),
    ("bad: {}", "evaluate.checks.bad: give exactly one kind of check"),
    ("bad: {regex: x, json: true}", "got regex, json"),
    ("bad: {max_words: 3, must_match: false}", "evaluate.checks.bad: must_match applies to regex checks only"),
    ("bad: {function: nosuch_module_xyz:f}", "evaluate.checks.bad.function: 'nosuch_module_xyz:f': cannot import"),
    ("bad: {function: mychecks:missing}", "evaluate.checks.bad.function: 'mychecks:missing': mychecks has no function"),
    ("bad: {function: mychecks}", "expected module:function"),
    ("bad: {max_words: -1}", "evaluate.checks.bad.max_words"),
    ("'a.b': {json: true}", "check name 'a.b'"),
])
def test_bad_check_is_one_line_naming_file_and_key(user_module, spec, fragment):
    with pytest.raises(UserError) as e:
        _load(user_module, f"evaluate:\n  checks:\n    {spec}\n")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(user_module / "cfg.yaml")) and fragment in msg, msg


def test_function_errors_name_the_check_and_prompt(user_module):
    cfg = load_config(None, [f"prompts={ASSETS / 'prompts.jsonl'}",
                             "evaluate.checks={b: {function: 'mychecks:broken'}, s: {function: 'mychecks:score'}}"])
    rows = [("h7", [{"role": "user", "content": "hi"}], "x")]
    with pytest.raises(UserError, match=r"evaluate\.checks\.b: mychecks:broken raised KeyError: 'boom' \(prompt_id 'h7'\)"):
        apply("b", cfg.evaluate.checks["b"], rows)
    with pytest.raises(UserError, match=r"evaluate\.checks\.s: mychecks:score returned float, not a bool"):
        apply("s", cfg.evaluate.checks["s"], rows)


# ----------------------------------------------------------------------------- the paired bootstrap

def _exact_percentiles(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ideal bootstrap distribution of mean(d): every one of the n^n equally likely ordered
    resamples enumerated, no random numbers (Efron & Tibshirani 1993, section 6.4)."""
    n = d.size
    means = np.array([d[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])
    a = (1 - level) / 2
    return tuple(np.quantile(means, [a, 1 - a]))


def test_paired_bootstrap_hand_case_and_exact_enumeration():
    # n = 2, differences (1, 0): resample means 0, 1/2, 1 with probability 1/4, 1/2, 1/4 -> [0, 1].
    r = compare_shares([True, False], [False, False], n_boot=4000, seed=0)
    assert (r["policy"], r["sft"], r["diff"], r["diff_ci"]) == (0.5, 0.0, 0.5, [0.0, 1.0])
    rng = np.random.default_rng(7)
    for n in (5, 6):
        pol, sft = rng.random(n) < 0.7, rng.random(n) < 0.3
        r = compare_shares(pol, sft, n_boot=20000, seed=3)
        lo, hi = _exact_percentiles(pol.astype(float) - sft.astype(float))
        # Monte Carlo quantiles of a lattice distribution land on or next to the exact ones (step 1/n)
        assert abs(r["diff_ci"][0] - lo) <= 1 / n + 1e-9 and abs(r["diff_ci"][1] - hi) <= 1 / n + 1e-9, (r, lo, hi)
        assert r["diff"] == pytest.approx(pol.mean() - sft.mean())


def test_bootstrap_is_paired_and_seeded():
    rng = np.random.default_rng(1)
    same = rng.random(40) < 0.5
    # Both sides pass on exactly the same prompts: no resample can show a difference. An unpaired
    # bootstrap (sides resampled independently) would give an interval about +-0.2 wide here.
    assert compare_shares(same, same, 2000, 0)["diff_ci"] == [0.0, 0.0]
    a, b = rng.random(40) < 0.6, rng.random(40) < 0.4
    assert compare_shares(a, b, 2000, 5) == compare_shares(a, b, 2000, 5)
    assert compare_shares([], [], 2000, 0)["diff_ci"] == [None, None]


def test_measure_pairs_answers_by_prompt(tmp_path):
    cfg = load_config(None, [f"prompts={ASSETS / 'prompts.jsonl'}", "evaluate.checks={x: {regex: 'yes'}}"])
    chat = [{"role": "user", "content": "q"}]
    m = pl.DataFrame({"prompt_id": ["b", "a", "c"], "messages": [chat] * 3,
                      "policy_text": ["yes", "yes", "no"], "sft_text": ["no", "yes", "no"]})
    res = measure(cfg, m, tmp_path / "checks.parquet")
    assert res["x"]["policy"] == pytest.approx(2 / 3) and res["x"]["sft"] == pytest.approx(1 / 3)
    assert res["x"]["check"] == "regex 'yes' matches" and res["x"]["n"] == 3
    rows = pl.read_parquet(tmp_path / "checks.parquet")
    assert rows.to_dicts() == [{"prompt_id": "a", "x_policy": True, "x_sft": True},
                               {"prompt_id": "b", "x_policy": True, "x_sft": False},
                               {"prompt_id": "c", "x_policy": False, "x_sft": False}]
    assert measure(SimpleNamespace(evaluate=SimpleNamespace(checks={})), m) == {}


# ----------------------------------------------------------------------------- the stage, for real

def _random_adapter(base, round_dir, seed: int) -> None:
    """A LoRA adapter with random B (so answers differ from SFT) and the train manifest that marks
    the round's train stage finished, which is all evaluate reads of it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(round_dir / "train" / "adapter")
    (round_dir / "train" / "train.manifest.json").write_text(json.dumps({"stage": "train", "round": 0}))


def _answers(folder) -> pl.DataFrame:
    return pl.read_parquet(sorted((folder / "candidates").glob("part-*.parquet"))).sort("prompt_id")


def test_evaluate_writes_checks_measured_on_both_answers(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    _random_adapter(tiny_model, run_dir / "round-0", seed=1)
    (tmp_path / "qchecks.py").write_text("def asks(prompt, response):\n"
                                         "    return prompt[-1]['content'].endswith('?')\n")
    checks = "{short: {max_words: 9}, fuses: {regex: 'fuses'}, asks: {function: 'qchecks:asks'}}"
    with FakeJudgeServer(api_key=KEY, policy="longer") as srv:
        res = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", f"run_dir={run_dir}",
                        "prompts=tests/assets/prompts.jsonl", f"model={tiny_model}", "round=0",
                        "evaluate.prompts=tests/assets/heldout.jsonl", "evaluate.mode=pairwise",
                        "generate.max_tokens=12", "judge.backend=openai", f"judge.base_url={srv.base_url}",
                        "judge.model=fake-judge", f"judge.api_key_env={ENV}", "judge.max_backoff_s=0.2",
                        f"evaluate.checks={checks}", "seed=11", "evaluate.n_boot=3000",
                        env={ENV: KEY, "PYTHONPATH": f"{tmp_path}:{ASSETS.parents[1]}"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "evaluate: checks SFT → policy: short" in res.stdout
    e = json.loads((run_dir / "round-0" / "eval" / "eval.json").read_text())
    pol = _answers(run_dir / "round-0" / "eval" / "answers")
    sft = _answers(run_dir / "eval-sft")
    assert pol["prompt_id"].to_list() == sft["prompt_id"].to_list() and pol.height == 6
    assert pol["response"].to_list() != sft["response"].to_list()
    expect = {"short": lambda t: len(t.split()) <= 9, "fuses": lambda t: re.search("fuses", t) is not None}
    mixed = 0
    for name, test in expect.items():  # recomputed here from the answer files, not through checks.py
        p = np.array([test(t) for t in pol["response"]], dtype=float)
        s = np.array([test(t) for t in sft["response"]], dtype=float)
        c = e["checks"][name]
        assert (c["policy"], c["sft"], c["n"]) == (pytest.approx(p.mean()), pytest.approx(s.mean()), 6)
        lo, hi = _exact_percentiles(p - s)
        mixed += lo < hi  # the random adapter gives answers on which the check is not all-or-nothing
        assert abs(c["diff_ci"][0] - lo) <= 1 / 6 + 1e-9 and abs(c["diff_ci"][1] - hi) <= 1 / 6 + 1e-9
    assert mixed, e["checks"]
    # The function saw the chat messages: two held-out prompts end in "?", on both sides.
    assert e["checks"]["asks"]["policy"] == e["checks"]["asks"]["sft"] == pytest.approx(2 / 6)
    rows = pl.read_parquet(run_dir / "round-0" / "eval" / "checks.parquet")
    assert rows.filter(pl.col("asks_policy"))["prompt_id"].to_list() == ["h1", "h4"]
