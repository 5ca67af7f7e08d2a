"""The vLLM judge (judge.backend=vllm) and the reward model's vLLM pooling path, on vLLM's CPU build
(RLAIF_VLLM_PYTHON), against the transformers backends on the same calls: every label's log-likelihood,
the verdicts read from them (P(A), E[grade], E[score], P(yes)), greedy text, with and without a LoRA
adapter; and rewards. The vLLM side is ONE process in the vLLM venv (two engine starts, ~50 s each on
this CPU: the judge's, with LoRA enabled, serves the base and the adapter; then the reward model's);
it writes its replies to JSON, the transformers side is computed here."""
import dataclasses
import json
import math
import os
import subprocess

import pytest

from conftest import ROOT, make_adapter
from rlaif.config import JudgeConfig
from rlaif.judge.backends import Call, load_judge
from rlaif.judge.templates import GRADES, expected_grade, expected_score, p_first_slot, p_yes
from test_generate_vllm import ENV, _vllm_python

pytestmark = pytest.mark.slow

SYSTEM = "You are a careful judge. Answer with the label only."
QUESTIONS = ["Which answer is better for 'Name a colour'? A: Blue. B: A colour.",
             "Rate the reply 'Four' to 'What is 2 + 2?' from 1 to 9.",
             "Does the reply 'Paris is the capital of France.' answer the question? Yes or No."]
GRADED = tuple(f"[[{g}]]" for g in GRADES)
# Every turn ends with <|im_end|>, SmolLM2's pad id: transformers pools before it, vLLM at the last token
EOS_LAST = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"


def _calls() -> list[Call]:
    def call(key, kind, q, labels=(), max_tokens=1, **kw):
        msgs = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": q})
        return Call(key=key, prompt_id="p", kind=kind, a_id="a", b_id="b", order="ab", messages=msgs,
                    labels=labels, max_tokens=max_tokens, **kw)
    out = []
    for i, q in enumerate(QUESTIONS):
        out += [call(f"ab{i}", "pairwise", q, ("A", "B")), call(f"grade{i}", "pairwise", q, GRADED),
                call(f"score{i}", "score", q, tuple(map(str, range(1, 10)))),
                call(f"yes{i}", "checklist", q, ("Yes", "No")),
                call(f"text{i}", "checklist_writer", q, max_tokens=8)]  # no labels: greedy text
    return out


def _tiny(demo_model, out, seq_cls: bool):
    """2 layers, hidden 64, 2 heads of 32 (the CPU attention's smallest head size), SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(demo_model)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=not seq_cls, num_labels=1)
    torch.manual_seed(1)
    (LlamaForSequenceClassification if seq_cls else LlamaForCausalLM)(cfg).save_pretrained(out)
    if seq_cls:
        tok.chat_template = EOS_LAST  # the reward model's own template
    tok.save_pretrained(out)
    return out


def _rm_calls() -> list[Call]:
    chats = [({"role": "user", "content": "Name a colour."},), ({"role": "user", "content": "What is 2 + 2?"},)]
    resp = ["Blue.", "Four, because two plus two makes four.", "Green, or maybe red.", "4"]
    return [Call(key=f"r{i}", prompt_id="p", kind="reward", a_id=f"c{i}", b_id=None, order=None, messages=(),
                 chat=chats[i % 2], response=r) for i, r in enumerate(resp)]


VLLM_SIDE = '''
import json, sys
from rlaif.config import JudgeConfig
from rlaif.judge.backends import Call, load_judge
from rlaif.judge.backends.vllm_judge import VLLMJudge, engine_args

def calls(rows):
    return [Call(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}) for r in rows]

def run(judge, rows):
    got = {}
    judge.run(iter(calls(rows)), lambda c, r: got.__setitem__(c.key, {"text": r.text, "top": r.top,
              "finish_reason": r.finish_reason, "score": r.score, "input_tokens": r.input_tokens}))
    return got

if __name__ == "__main__":
    spec = json.load(open(sys.argv[1]))
    cfg = JudgeConfig(backend="vllm", engine_args={"max_model_len": 2048})
    from vllm import LLM
    llm = LLM(**engine_args(spec["model"], cfg, spec["adapter"]))  # one engine: base and adapter requests
    out = {"base": run(VLLMJudge(cfg, spec["model"], llm=llm), spec["calls"]),
           "adapter": run(VLLMJudge(cfg, spec["model"], adapter=spec["adapter"], llm=llm), spec["calls"])}
    llm.llm_engine.engine_core.shutdown()
    del llm
    rm = load_judge(JudgeConfig(backend="reward_model", model=spec["rm"]), spec["rm"])
    assert rm.llm is not None, "the reward model did not take the vLLM path"
    out["rewards"] = run(rm, spec["rm_calls"])
    rm.close()  # the pooling engine's core shut down here, not by the interpreter's exit
    assert rm.llm is None
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
'''


@pytest.fixture(scope="module")
def sides(demo_model, tmp_path_factory):
    """(vLLM replies, transformers replies) for the base model, the adapter and the reward model."""
    tmp = tmp_path_factory.mktemp("judge-vllm")
    model, rm = _tiny(demo_model, tmp / "llama", False), _tiny(demo_model, tmp / "rm", True)
    make_adapter(model, tmp / "adapter", seed=3)
    rows = [dataclasses.asdict(c) for c in _calls()]
    spec = {"model": str(model), "adapter": str(tmp / "adapter"), "rm": str(rm), "calls": rows,
            "rm_calls": [dataclasses.asdict(c) for c in _rm_calls()]}
    (tmp / "spec.json").write_text(json.dumps(spec))
    (tmp / "side.py").write_text(VLLM_SIDE)
    proc = subprocess.Popen([_vllm_python(), str(tmp / "side.py"), str(tmp / "spec.json"), str(tmp / "out.json")],
                            cwd=ROOT, env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    local = {}  # the transformers side while vLLM starts (2 cores: it mostly waits on imports)
    for name, adapter in (("base", None), ("adapter", str(tmp / "adapter"))):
        judge = load_judge(JudgeConfig(backend="local", batch_size=4), str(model), adapter=adapter)
        local[name] = {}
        # label and text calls mixed in one batch, as a stage sends them: each part answered its own way
        judge.run(iter(_calls()), lambda c, r, d=local[name]: d.__setitem__(c.key, r))
    rmj = load_judge(JudgeConfig(backend="reward_model", model=str(rm)), str(rm))
    local["rewards"] = {}
    rmj.run(iter(_rm_calls()), lambda c, r: local["rewards"].__setitem__(c.key, r))
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    return json.loads((tmp / "out.json").read_text()), local


@pytest.mark.parametrize("name", ["base", "adapter"])
def test_label_log_likelihoods_and_verdicts_equal_the_local_judge_s(sides, name):
    got, want = sides[0][name], sides[1][name]
    for call in _calls():
        g, w = got[call.key], want[call.key]
        if not call.labels:
            continue
        (g_label, g_top), ((w_label, w_top),) = g["top"][0], w.top
        assert set(g_top) == set(call.labels) and g["finish_reason"] == "stop"
        for lab in call.labels:  # every label's exact log-likelihood, ranked first or not
            assert math.isclose(g_top[lab], w_top[lab], abs_tol=2e-4), (call.key, lab, g_top, w_top)
        ranked = sorted(w_top.values())
        if ranked[-1] - ranked[-2] > 1e-3:  # the same verdict unless two labels tie within float noise
            assert g_label == w_label == g["text"], call.key
        read = {"A": p_first_slot, "[": expected_grade, "1": expected_score, "Y": p_yes}[call.labels[0][0]]
        assert math.isclose(read(g_top), read(w_top), abs_tol=1e-3), call.key


def test_the_adapter_changes_the_judge(sides):
    got = sides[0]
    diffs = [abs(got["base"][c.key]["top"][0][1]["A"] - got["adapter"][c.key]["top"][0][1]["A"])
             for c in _calls() if c.labels == ("A", "B")]
    assert max(diffs) > 0.01  # a LoRA that did not load would answer as the base model


@pytest.mark.parametrize("name", ["base", "adapter"])
def test_free_text_is_the_same_greedy_text(sides, name):
    got, want = sides[0][name], sides[1][name]
    for call in _calls():
        if not call.labels:
            assert (got[call.key]["text"], got[call.key]["finish_reason"]) == (want[call.key].text,
                                                                                want[call.key].finish_reason)
            assert got[call.key]["input_tokens"] == want[call.key].input_tokens


def test_reward_model_pooling_gives_the_transformers_rewards(sides):
    got, want = sides[0]["rewards"], sides[1]["rewards"]
    assert len(got) == len(_rm_calls())
    for key, r in want.items():
        assert math.isclose(got[key]["score"], r.score, abs_tol=1e-4), (key, got[key]["score"], r.score)
    assert len({round(r["score"], 4) for r in got.values()}) == len(got)  # distinct rewards: not a constant


def test_lora_rank_is_the_smallest_vllm_rank_that_holds_the_adapter(tmp_path):
    from rlaif.errors import UserError
    from rlaif.judge.backends.vllm_judge import lora_rank

    for r, want in ((4, 8), (8, 8), (9, 16), (300, 320)):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}))
        assert lora_rank(str(tmp_path)) == want
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(UserError, match="over vLLM's largest max_lora_rank 512"):
        lora_rank(str(tmp_path))
    with pytest.raises(UserError, match="cannot read the LoRA rank"):
        lora_rank(str(tmp_path / "missing"))
