"""Multi-turn pairs train only the final turn (issue 23, item 3).

A pair keeps the whole conversation as its prompt (TRL's conversational preference row: prompt = the
messages up to the last user turn, chosen/rejected = one assistant message). These tests run rlaif's own
path (pairs.parquet -> load_pairs -> to_dataset -> stage.build_trainer, the tiny Llama with SmolLM2's
ChatML template, CPU, no training step) and check what TRL 1.16 makes of such a row: which tokens carry
the loss, and that predicting the earlier assistant turns gets no gradient.
"""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ASSETS
from rlaif.config import load_config
from rlaif.io import PAIRS_SCHEMA, write_parquet
from rlaif.models import use_chat_template
from rlaif.train import stage
from rlaif.train.data import load_pairs, to_dataset

END = "<|im_end|>\n"  # SmolLM2's ChatML end of turn: part of the completion, so the policy learns to stop
TURN1, TURN2 = "ALPHA waves fold over grey stones.", "BRAVO streets hum under neon lights."
HISTORY = [{"role": "user", "content": "Write one line of a poem about the sea."},
           {"role": "assistant", "content": TURN1},
           {"role": "user", "content": "Now make it about a city."},
           {"role": "assistant", "content": TURN2},
           {"role": "user", "content": "Which word in your last line did you pick for its sound?"}]
CHOSEN = "I picked hum: its soft m sounds like traffic far away."
REJECTED = "The sea is blue and big."


def with_turns(turn1: str, turn2: str) -> list[dict]:
    return [HISTORY[0], {"role": "assistant", "content": turn1}, HISTORY[2],
            {"role": "assistant", "content": turn2}, HISTORY[4]]


def pair(pid: str, messages: list[dict], chosen: str = CHOSEN, rejected: str = REJECTED) -> dict:
    return {"prompt_id": pid, "messages": messages, "chosen": chosen, "rejected": rejected, "chosen_id": f"{pid}-c",
            "rejected_id": f"{pid}-r", "margin": 1.0, "consistent": True, "chosen_tokens": len(chosen.split()),
            "rejected_tokens": len(rejected.split()), "round": 0}


def trainer_for(run_dir: Path, model: Path, rows: list[dict], *overrides: str) -> SimpleNamespace:
    """The train stage's own steps up to the trainer (stage.run without trainer.train())."""
    import polars as pl
    from transformers import AutoTokenizer

    write_parquet(run_dir / "round-0" / "pairs.parquet", pl.DataFrame(rows, schema=PAIRS_SCHEMA), PAIRS_SCHEMA)
    cfg = load_config(None, [f"run_dir={run_dir}", f"prompts={ASSETS / 'prompts.jsonl'}", f"model={model}",
                             "train.max_steps=1", "train.batch_size=2", *overrides])
    pairs, _ = load_pairs(cfg)
    tok = use_chat_template(AutoTokenizer.from_pretrained(model), cfg)
    dataset, over = to_dataset(pairs, tok, cfg)
    trainer = stage.build_trainer(cfg, str(model), dataset, tok)
    return SimpleNamespace(cfg=cfg, tok=tok, over=over, trainer=trainer, rows=trainer.train_dataset)


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """Row 0: the 3-turn conversation; row 1: the same final turn after other, longer earlier answers."""
    rows = [pair("mt", HISTORY),
            pair("mt-other", with_turns("CHARLIE " + "tides keep their slow count. " * 4,
                                        "DELTA " + "the tram bell rings twice. " * 5))]
    return trainer_for(tmp_path_factory.mktemp("mt-run"), tiny_model, rows, "train.max_length=512")


def split(tok, batch, i: int) -> tuple[str, str]:
    """(prompt text, loss-bearing text) of collated sequence i: the completion mask is one run of 1s
    that ends the sequence (padding after it is 0), so everything before it is prompt."""
    ids, mask = batch["input_ids"][i], batch["completion_mask"][i]
    on = mask.nonzero().flatten()
    assert on.numel() and bool((mask[on[0]: on[-1] + 1] == 1).all()), "completion mask is not one contiguous run"
    assert batch["attention_mask"][i][on[-1] + 1:].sum() == 0, "tokens after the completion carry no loss but exist"
    return tok.decode(ids[: on[0]]), tok.decode(ids[on])


def test_completion_mask_covers_exactly_the_final_turn(built):
    """Chosen (sequence 0) and rejected (sequence 1) each carry loss on the final assistant text plus the
    template's end of turn, nothing of turns 1-2; the prompt part is the whole history as the template
    renders it for generation, so training sees the context the policy answered in."""
    tok = built.tok
    batch = built.trainer.data_collator([built.rows[0]])
    expected_prompt = tok.apply_chat_template(HISTORY, add_generation_prompt=True, tokenize=False)
    for i, text in ((0, CHOSEN), (1, REJECTED)):
        prompt, completion = split(tok, batch, i)
        assert completion == text + END
        assert prompt == expected_prompt
        assert TURN1 in prompt and TURN2 in prompt
        assert "ALPHA" not in completion and "BRAVO" not in completion


def test_no_gradient_for_predicting_earlier_turns(built):
    """The strongest check TRL's API allows. Gradient w.r.t. the history's input embeddings is not zero
    and should not be (the final turn attends to it: that is what makes it context). What must be zero is
    any training signal to *produce* history tokens. TRL's fused LM head scores position t against token
    t+1 only where the label is not -100 (trl/trainer/utils.py add_fused_lm_head), and the last hidden
    state at t feeds nothing but that head, so d(loss)/d(hidden_t) is exactly 0 for every t that predicts
    a history token (turns 1-2 included) and non-zero for every t that predicts a final-turn token.
    One forward/backward of the DPO loss through the trainer's own compute_loss, reference included."""
    trainer = built.trainer
    batch = trainer.data_collator([built.rows[0]])
    model = trainer.model
    model.train()
    seen = {}

    def keep(module, args, out):
        if out.requires_grad:  # the policy's forward; the reference's runs under no_grad
            out.retain_grad()
            seen["h"] = out

    hook = model.get_base_model().model.norm.register_forward_hook(keep)  # last hidden state = the LM head's input
    try:
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
    finally:
        hook.remove()
        model.zero_grad()
    grad = seen["h"].grad[:, :-1].abs().sum(-1)  # position t predicts token t+1; the last predicts nothing
    predicts_final_turn = batch["completion_mask"][:, 1:].bool()
    assert torch.isfinite(loss) and loss.item() > 0
    assert bool((grad[~predicts_final_turn] == 0).all()), "a history (or padding) position got gradient"
    assert bool((grad[predicts_final_turn] > 0).all()), "a final-turn token got no gradient"
    # and turn 1/2 in particular: their tokens are all in the zero-gradient part
    ids = batch["input_ids"][0].tolist()
    for text in (TURN1, TURN2):
        sub = built.tok(text, add_special_tokens=False)["input_ids"]
        start = next(k for k in range(len(ids)) if ids[k:k + len(sub)] == sub)
        assert grad[0, start - 1: start + len(sub) - 1].sum() == 0


def test_other_history_same_loss_tokens(built):
    """Longer, different earlier answers change only the prompt: the loss-bearing ids of chosen and
    rejected are the same ids, so the completion mask has the same length whatever the history."""
    a, b = built.rows[0], built.rows[1]
    assert a["chosen_ids"] == b["chosen_ids"] and a["rejected_ids"] == b["rejected_ids"]
    assert len(b["prompt_ids"]) > len(a["prompt_ids"]) + 40
    assert built.tok.decode(b["chosen_ids"]) == CHOSEN + END


def long_history(exchanges: int) -> list[dict]:
    """Old exchanges first (OLDEST marks the first), then the final user turn of HISTORY."""
    msgs = []
    for k in range(exchanges):
        tag = "OLDEST" if k == 0 else f"old{k}"
        msgs += [{"role": "user", "content": f"{tag}: tell me about rivers, part {k}."},
                 {"role": "assistant", "content": f"{tag}: rivers carry water and silt downhill to the sea, part {k}."}]
    return msgs + [HISTORY[4]]


def test_long_history_keeps_the_final_turn_whole(tiny_model, tmp_path):
    """A history over train.max_length. Default overlong=drop: the pair is dropped and counted, never cut.
    overlong=truncate: the prompt loses its oldest whole exchanges, and the final turn (the judged one)
    is trained whole after the turns nearest it. TRL's own truncation would do the opposite: its default
    truncation_mode keep_start cuts the end of prompt+completion, and drops a row whose prompt alone fills
    max_length (trl/trainer/dpo_trainer.py, DataCollatorForPreference and _prepare_dataset)."""
    from transformers import AutoTokenizer

    limit = 160
    tok = AutoTokenizer.from_pretrained(tiny_model)
    convo = long_history(6)
    n = lambda msgs: len(tok.apply_chat_template(msgs + [{"role": "assistant", "content": CHOSEN}], tokenize=True,
                                                 return_dict=True)["input_ids"])
    assert n(convo) > limit >= n(convo[-5:]) + 16, "the case must need cutting and leave room for two exchanges"
    rows = [pair("short", HISTORY), pair("long", convo)]

    dropped = trainer_for(tmp_path / "drop", tiny_model, rows, f"train.max_length={limit}")
    assert dropped.over == 1 and [r["prompt"][-1] for r in dropped.rows] == [HISTORY[4]]
    assert len(dropped.rows) == 1 and len(dropped.rows[0]["prompt"]) == len(HISTORY)

    cut = trainer_for(tmp_path / "cut", tiny_model, rows, f"train.max_length={limit}", "train.overlong=truncate")
    assert len(cut.rows) == 2, "the long conversation was dropped instead of cut from its oldest turn"
    batch = cut.trainer.data_collator([cut.rows[1]])
    for i, text in ((0, CHOSEN), (1, REJECTED)):
        prompt, completion = split(cut.tok, batch, i)
        assert completion == text + END
        assert prompt.endswith(cut.tok.apply_chat_template([HISTORY[4]], add_generation_prompt=True,
                                                           tokenize=False).split("<|im_end|>\n", 1)[1])
        assert "OLDEST" not in prompt and "old5: tell me" in prompt  # oldest out, the nearest kept
        assert batch["attention_mask"][i].sum() <= limit
    kept = cut.rows[1]["prompt"]
    assert [m["role"] for m in kept if m["role"] != "system"][0] == "user"  # whole exchanges, not half of one
