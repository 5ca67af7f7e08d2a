"""The reward-model judge (judge.backend=reward_model) on a tiny random sequence-classification Llama
built here with the demo model's tokenizer: rewards equal the model's own single-sequence forward,
do not depend on the batch, and folders that are not reward models fail in one line."""
import json
import shutil

import pytest

from rlaif.config import JudgeConfig
from rlaif.errors import UserError
from rlaif.judge.backends import Call, load_judge

CHATS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
]
RESPONSES = ["Blue.", "Four, because two plus two makes four, as anyone who has counted apples knows well.",
             "I think it might be green, or maybe red; it depends on the light and on who is asked.", "4"]


# Every turn ends with <|im_end|>, the eos, and nothing follows it (Llama-3-style templates end the same way):
# with no pad id in the config transformers pools at that last token; padding with eos would pool before it.
EOS_LAST = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"


def _build_rm(demo_model, out, pad: bool, num_labels: int = 1):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(demo_model)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if pad else None, num_labels=num_labels)
    if not pad:
        tok.chat_template = EOS_LAST  # the reward model's own template, not the policy's
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_rm(demo_model, tmp_path_factory):
    """pad_token_id set (SmolLM2's pad is <|im_end|>, which also occurs inside every rendered chat)."""
    return _build_rm(demo_model, tmp_path_factory.mktemp("tiny-rm"), pad=True)


@pytest.fixture(scope="session")
def tiny_rm_nopad(demo_model, tmp_path_factory):
    """No pad_token_id in the config (transformers then pools at the last token and refuses batches > 1),
    and a template whose every sequence ends with the eos."""
    return _build_rm(demo_model, tmp_path_factory.mktemp("tiny-rm-nopad"), pad=False)


def _calls():
    return [Call(key=f"k{i}", prompt_id=f"p{i % 2}", kind="reward", a_id=f"c{i}", b_id=None, order=None,
                 messages=(), chat=tuple(CHATS[i % 2]), response=r) for i, r in enumerate(RESPONSES)]


def _judge(path, **kw):
    return load_judge(JudgeConfig(backend="reward_model", model=str(path), **kw), str(path))


def _run(judge, calls):
    got = {}
    judge.run(iter(calls), lambda call, reply: got.setdefault(call.key, reply))
    return got


def _reference(path, chat, response):
    """The reward computed independently: the model's own forward on this one sequence, no padding."""
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(path)
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    ids = tok.apply_chat_template([*chat, {"role": "assistant", "content": response}], return_dict=True)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0]), len(ids)


@pytest.mark.parametrize("fixture", ["tiny_rm", "tiny_rm_nopad"])
def test_rewards_equal_the_single_sequence_forward(fixture, request):
    path = request.getfixturevalue(fixture)
    got = _run(_judge(path, batch_size=8), _calls())  # one batch: four lengths, padded to the longest
    assert set(got) == {c.key for c in _calls()}
    for call in _calls():
        reward, n = _reference(path, call.chat, call.response)
        r = got[call.key]
        assert r.score == pytest.approx(reward, abs=1e-5) and r.error is None
        assert (r.input_tokens, r.output_tokens, r.finish_reason) == (n, 0, "stop") and r.latency_s > 0
    assert len({round(r.score, 6) for r in got.values()}) == len(RESPONSES)  # the reward reads the response


@pytest.mark.parametrize("fixture", ["tiny_rm", "tiny_rm_nopad"])
def test_a_reward_does_not_depend_on_its_batch(fixture, request):
    path = request.getfixturevalue(fixture)
    judge, calls = _judge(path, batch_size=1), _calls()
    alone = _run(judge, calls)
    for bs in (2, 3, 4):
        judge.cfg = JudgeConfig(backend="reward_model", batch_size=bs)
        for order in (calls, calls[::-1]):
            mixed = _run(judge, order)
            for k, r in mixed.items():
                assert r.score == pytest.approx(alone[k].score, abs=1e-5), (bs, k)
    assert judge.model.config.pad_token_id == (2 if fixture == "tiny_rm" else None)  # left as configured


def test_batches_are_pulled_as_they_are_sent(tiny_rm):
    """The stage's iterator owns budgets: at most batch_size calls are taken before their replies."""
    state = {"pulled": 0, "replied": 0, "ahead": 0}

    def source():
        for c in _calls():
            state["pulled"] += 1
            yield c

    def on_reply(call, reply):
        state["ahead"] = max(state["ahead"], state["pulled"] - state["replied"])
        state["replied"] += 1

    judge = _judge(tiny_rm, batch_size=3)
    judge.run(source(), on_reply)
    assert state["replied"] == len(RESPONSES) and state["ahead"] == 3
    assert judge.count_tokens(CHATS[0], RESPONSES[0]) == _reference(tiny_rm, CHATS[0], RESPONSES[0])[1]


def _one_line_error(path, *match):
    with pytest.raises(UserError) as e:
        _judge(path)
    msg = str(e.value)
    assert "\n" not in msg and "judge.model" in msg and str(path) in msg, msg
    for m in match:
        assert m in msg, msg


def test_a_causal_lm_folder_is_refused(tiny_model):
    _one_line_error(tiny_model, "LlamaForCausalLM", "not a reward model")


def test_a_checkpoint_without_score_weights_is_refused(tiny_model, tmp_path):
    """A causal LM whose config claims a classifier: transformers would init `score` at random."""
    folder = shutil.copytree(tiny_model, tmp_path / "claims-rm")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(cfg))
    _one_line_error(folder, "not a trained reward model: score.weight missing")
    del cfg["architectures"]
    (folder / "config.json").write_text(json.dumps(cfg))
    _one_line_error(folder, "not a trained reward model")


def test_a_multi_output_classifier_is_refused(demo_model, tmp_path):
    _one_line_error(_build_rm(demo_model, tmp_path / "two-labels", pad=True, num_labels=2),
                    "score.weight has shape [2, 32]", "one output")


def test_bad_paths_are_refused(tmp_path):
    _one_line_error(tmp_path / "missing", "no such folder")
    _one_line_error(tmp_path, "no config.json")
    (tmp_path / "config.json").write_text("{not json")
    _one_line_error(tmp_path, "config.json unreadable")


def test_an_over_long_input_stops_before_the_forward_pass(tiny_rm):
    judge = _judge(tiny_rm, max_input_tokens=64)
    long = Call(key="k", prompt_id="p", kind="reward", a_id="c-long", b_id=None, order=None, messages=(),
                chat=tuple(CHATS[0]), response="word " * 200)
    with pytest.raises(UserError, match="c-long is [0-9]+ tokens, over the limit of 64"):
        _run(judge, [long])


def test_the_judge_stage_ranks_by_reward_and_reruns_from_the_ledger(tmp_path, tiny_model, tiny_rm):
    """`rlaif judge` with judge.backend=reward_model: every candidate's reward in the ledger and
    judgments, best vs worst by reward, and a rerun that loads (so runs) no model at all."""
    import math

    import polars as pl

    import rlaif.generate as generate
    from conftest import ROOT, rlaif_cli
    from rlaif.config import load_config

    overrides = [f"run_dir={tmp_path}", f"model={tiny_model}", "generate.max_tokens=12", "generate.max_prompts=3",
                 "generate.n=3", "generate.temperature=1.0", "judge.backend=reward_model", f"judge.model={tiny_rm}",
                 "filter.drop_length_truncated=false", "filter.max_length_ratio=1000"]
    generate.run(load_config(ROOT / "configs/quickstart.yaml", overrides))
    first = rlaif_cli("judge", "--config", "configs/quickstart.yaml", *overrides)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"judge: reward model {tiny_rm} loaded" in first.stderr and "cpu, float32" in first.stderr
    rdir = tmp_path / "round-0"
    j = pl.read_parquet(rdir / "judgments.parquet")
    cands = pl.read_parquet(sorted((rdir / "candidates").glob("part-*.parquet")))
    assert j.height == cands.height == 9 and set(j["kind"]) == {"reward"} and set(j["verdict"]) == {"score"}
    reward = dict(zip(j["a_id"], j["score_a"]))
    for c in cands.iter_rows(named=True):  # what the stage recorded is the model's own reward
        assert reward[c["candidate_id"]] == pytest.approx(_reference(tiny_rm, c["messages"], c["response"])[0],
                                                          abs=1e-5)
    pairs = pl.read_parquet(rdir / "pairs.parquet")
    assert pairs.height >= 1
    by_prompt = {pid: [reward[c] for c in grp["candidate_id"]] for (pid,), grp in cands.group_by("prompt_id")}
    for p in pairs.iter_rows(named=True):
        hi, lo = max(by_prompt[p["prompt_id"]]), min(by_prompt[p["prompt_id"]])
        assert (reward[p["chosen_id"]], reward[p["rejected_id"]]) == (hi, lo)
        assert p["margin"] == pytest.approx(math.tanh((hi - lo) / 2))  # 2 sigmoid(d) - 1, judge/pairs/compare.py

    again = rlaif_cli("judge", "--config", "configs/quickstart.yaml", *overrides)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "judge: reward model" not in again.stderr  # every reward came from the ledger
    assert pl.read_parquet(rdir / "judgments.parquet").equals(j)
    assert pl.read_parquet(rdir / "pairs.parquet").equals(pairs)
    # Another judge.model is another judge: a causal LM folder is loaded, and refused in one line.
    lm = rlaif_cli("judge", "--config", "configs/quickstart.yaml", *overrides, f"judge.model={tiny_model}")
    assert lm.returncode == 2 and lm.stderr.strip().splitlines()[-1] == (
        f"rlaif: error: judge.model {tiny_model}: a LlamaForCausalLM, not a reward model (judge.backend="
        "reward_model needs a ...ForSequenceClassification checkpoint with a one-output score head)"), lm.stderr
