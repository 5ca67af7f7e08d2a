"""The train stage: DPO + LoRA on a tiny random Llama (and one real step on the demo model).

Most tests share one module-scoped round-0 run (2 steps, high learning rate so the adapter
visibly moves); each test builds only what it needs on top of it.
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import torch

from conftest import ASSETS, ROOT, rlaif_cli
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.io import PAIRS_SCHEMA, write_parquet
from rlaif.train import stage
from rlaif.train.data import load_pairs, to_dataset
from rlaif.train.policy import adapter_dir, merge_adapter, policy_base

PROBE = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 plus 2 is 4."}]


# ---------------------------------------------------------------- helpers

def pairs_df(n: int = 6, round_: int = 0, messages=None, chosen=None, rejected=None) -> pl.DataFrame:
    rows = []
    for i in range(n):
        c = chosen(i) if chosen else f"{i} plus {i} is {2 * i}."
        r = rejected(i) if rejected else f"No idea, maybe {i + 7}? Ask someone else."
        rows.append({"prompt_id": f"p{round_}-{i}",
                     "messages": messages(i) if messages else [{"role": "user", "content": f"What is {i} plus {i}?"}],
                     "chosen": c, "rejected": r, "chosen_id": f"c{i}", "rejected_id": f"r{i}", "margin": 1.0,
                     "consistent": True, "chosen_tokens": len(c.split()), "rejected_tokens": len(r.split()),
                     "round": round_})
    return pl.DataFrame(rows)


def write_pairs(run_dir: Path, k: int, df: pl.DataFrame | None = None) -> Path:
    return write_parquet(Path(run_dir) / f"round-{k}" / "pairs.parquet", pairs_df(round_=k) if df is None else df,
                         PAIRS_SCHEMA)


def make_cfg(run_dir, model, *extra):
    return load_config(None, [f"run_dir={run_dir}", f"prompts={ASSETS / 'prompts.jsonl'}", f"model={model}",
                              "train.max_steps=2", "train.batch_size=2", "train.max_length=128",
                              "train.save_steps=1", *extra])


def probe_ids(tok) -> torch.Tensor:
    return torch.tensor([tok.apply_chat_template(PROBE, tokenize=True, return_dict=True)["input_ids"]])


def load_base(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@torch.no_grad()
def logits(model, ids) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


@torch.no_grad()
def seq_logps(model, batch) -> torch.Tensor:
    """Summed completion log-probs of a DPO collator batch, computed by hand (no TRL)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    lp = out[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (lp * batch["completion_mask"][:, 1:]).sum(1)


def metric_lines(train_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (train_dir / "train-metrics.jsonl").read_text().splitlines() if ln]


def tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def trainer_for(cfg, base=None, tok=None):
    pairs, _ = load_pairs(cfg)
    base = base or policy_base(cfg, cfg.round)
    tok = tok or tokenizer(base)
    dataset, _ = to_dataset(pairs, tok, cfg)
    return stage.build_trainer(cfg, base, dataset, tok), tok


def adapter_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ---------------------------------------------------------------- shared round 0

@pytest.fixture(scope="module")
def round0(tmp_path_factory, tiny_model):
    """Round 0 trained for 2 steps at lr 1e-2 (so the adapter moves), plus round 1's pairs on disk."""
    run_dir = tmp_path_factory.mktemp("run")
    write_pairs(run_dir, 0)
    write_pairs(run_dir, 1, pairs_df(round_=1, chosen=lambda i: f"The sum is {2 * i}.",
                                     rejected=lambda i: f"Sums are hard; {i * 3}?"))
    cfg = make_cfg(run_dir, tiny_model, "train.learning_rate=1e-2")
    adapter = stage.run(cfg)
    return SimpleNamespace(cfg=cfg, adapter=adapter, run_dir=run_dir, train=adapter.parent, model=tiny_model)


@pytest.fixture(scope="module")
def fresh_trainer(round0, demo_model):
    """A round-0 trainer (nothing loaded into the adapter) built with the demo model's tokenizer."""
    tok = tokenizer(demo_model)
    trainer, _ = trainer_for(round0.cfg, base=str(round0.model), tok=tok)
    return trainer, tok


# ---------------------------------------------------------------- 1. a real DPO run

def test_dpo_two_steps_adapter_loads_changes_model_and_merges(round0, tmp_path):
    from peft import PeftModel

    train = round0.train
    manifest = json.loads((train / stage.MANIFEST).read_text())
    assert manifest["steps"] == 2 and manifest["resumed_from_step"] == 0
    assert manifest["pairs"]["trained_on"] == 6 and manifest["reference"] == "sft"
    assert math.isfinite(manifest["final"]["loss"])

    steps = [ln for ln in metric_lines(train) if "loss" in ln]
    assert [ln["step"] for ln in steps] == [1, 2]
    for ln in steps:
        for key in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "grad_norm", "learning_rate"):
            assert key in ln, f"{key} missing from step {ln['step']}: {sorted(ln)}"
            assert math.isfinite(ln[key]), (key, ln)

    assert (train / "checkpoint-1").is_dir() and (train / "checkpoint-2").is_dir()
    adapter = round0.adapter
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    tok = tokenizer(round0.model)
    ids = probe_ids(tok)
    base_logits = logits(load_base(round0.model), ids)
    peft = PeftModel.from_pretrained(load_base(round0.model), str(adapter)).eval()
    peft_logits = logits(peft, ids)
    assert (peft_logits - base_logits).abs().max().item() > 1e-3, "the trained adapter changed nothing"

    merged = tmp_path / "merged"
    merge_adapter(str(round0.model), adapter, merged)
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    assert not list(merged.parent.glob(".merged.*")), "temporary merge folder left behind"
    merged_logits = logits(load_base(merged), ids)
    assert torch.allclose(merged_logits, peft_logits, atol=1e-4), (merged_logits - peft_logits).abs().max()
    assert tokenizer(merged).get_vocab() == tok.get_vocab()


def test_rerun_after_manifest_is_a_no_op(round0, capsys):
    before = (round0.adapter / "adapter_model.safetensors").read_bytes()
    assert stage.run(round0.cfg) == round0.adapter
    assert "stage already done" in capsys.readouterr().out
    assert (round0.adapter / "adapter_model.safetensors").read_bytes() == before


# ---------------------------------------------------------------- 2. reference = SFT, no second copy

def test_reference_is_the_base_with_adapter_disabled_no_second_copy(fresh_trainer, round0):
    from peft import PeftModel

    trainer, tok = fresh_trainer
    assert trainer.ref_model is None
    assert isinstance(trainer.model, PeftModel)
    assert list(trainer.model.peft_config) == ["default"], "a 'ref' adapter would make the reference a LoRA copy"

    ids = probe_ids(tok)
    base_logits = logits(load_base(round0.model), ids)
    model = trainer.model.eval()
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    saved = {n: p.detach().clone() for n, p in lora_b.items()}
    try:
        torch.manual_seed(1)
        with torch.no_grad():
            for p in lora_b.values():  # a non-trivial adapter, so "disabled" is distinguishable from "zero"
                p.normal_(std=0.05)
        assert (logits(model, ids) - base_logits).abs().max().item() > 1e-3
        with model.disable_adapter():
            assert torch.allclose(logits(model, ids), base_logits, atol=1e-5)
        # and the log-probs TRL itself computes for the reference are the base model's
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        ref_c, ref_r = trainer.compute_ref_log_probs(model, batch)
        want = seq_logps(load_base(round0.model), batch)
        assert torch.allclose(torch.cat([ref_c, ref_r]).float(), want, atol=1e-4), (ref_c, ref_r, want)
    finally:
        with torch.no_grad():
            for n, p in lora_b.items():
                p.copy_(saved[n])


# ---------------------------------------------------------------- 3. round 1: continuation vs reference

def test_round1_sft_reference_continues_adapter_but_references_sft(round0):
    from peft import PeftModel, get_peft_model_state_dict, load_peft_weights

    cfg1 = make_cfg(round0.run_dir, round0.model, "round=1")
    assert policy_base(cfg1, 1) == str(round0.model)
    trainer, tok = trainer_for(cfg1)

    prev = load_peft_weights(str(adapter_dir(cfg1, 0)))
    now = {k: v for k, v in get_peft_model_state_dict(trainer.model).items()}
    assert now.keys() == prev.keys()
    for k in prev:
        assert torch.equal(now[k].float(), prev[k].float()), f"{k}: round 1 did not start from round 0's adapter"

    ids = probe_ids(tok)
    model = trainer.model.eval()
    base = load_base(round0.model)
    with model.disable_adapter():
        assert torch.allclose(logits(model, ids), logits(base, ids), atol=1e-5)
    policy0 = PeftModel.from_pretrained(load_base(round0.model), str(round0.adapter)).eval()
    assert torch.allclose(logits(model, ids), logits(policy0, ids), atol=1e-5)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ref_c, ref_r = trainer.compute_ref_log_probs(model, batch)
    assert torch.allclose(torch.cat([ref_c, ref_r]).float(), seq_logps(base, batch), atol=1e-4)


def test_round1_previous_reference_is_merged_round0_policy(round0):
    from peft import PeftModel

    cfg1 = make_cfg(round0.run_dir, round0.model, "round=1", "train.reference=previous")
    base1 = policy_base(cfg1, 1)
    assert Path(base1) == round0.run_dir / "round-0" / "train" / "merged"
    assert (Path(base1) / "config.json").is_file()

    tok = tokenizer(base1)
    ids = probe_ids(tok)
    policy0 = PeftModel.from_pretrained(load_base(round0.model), str(round0.adapter)).eval()
    assert torch.allclose(logits(load_base(base1), ids), logits(policy0, ids), atol=1e-4)

    trainer, _ = trainer_for(cfg1)
    model = trainer.model.eval()
    # a fresh adapter on the merged model: policy == reference == round 0's policy at the start
    with model.disable_adapter():
        ref_logits = logits(model, ids)
    assert torch.allclose(ref_logits, logits(policy0, ids), atol=1e-4)
    assert not torch.allclose(ref_logits, logits(load_base(round0.model), ids), atol=1e-3)


def test_precompute_cache_fingerprint_changes_with_reference(round0):
    sft = make_cfg(round0.run_dir, round0.model, "round=1", "train.precompute_ref_log_probs=true")
    prev = make_cfg(round0.run_dir, round0.model, "round=1", "train.precompute_ref_log_probs=true",
                    "train.reference=previous")
    t_sft, _ = trainer_for(sft)
    t_prev, _ = trainer_for(prev)
    assert t_sft._precompute_model_hash and t_prev._precompute_model_hash
    assert t_sft._precompute_model_hash != t_prev._precompute_model_hash
    # and what was precomputed is each reference's log-probs: the SFT model's vs round 0's merged policy
    for trainer, ref in ((t_sft, round0.model), (t_prev, policy_base(prev, 1))):
        rows = [trainer.train_dataset[i] for i in range(2)]
        got = torch.tensor([r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows])
        assert torch.allclose(got, seq_logps(load_base(ref), trainer.data_collator(rows)), atol=1e-4), ref


@pytest.mark.parametrize("reference", ["previous", "sft"])
def test_round1_without_a_finished_round0_fails_naming_it(tmp_path, tiny_model, reference):
    # Round 1 continues from (or merges) round 0's finished policy: without round 0's manifest it must
    # fail naming it, not crash in PEFT or silently start from a fresh adapter.
    write_pairs(tmp_path, 1)
    cfg = make_cfg(tmp_path, tiny_model, "round=1", f"train.reference={reference}", "train.max_steps=1")
    with pytest.raises(UserError, match="round-0"):
        stage.run(cfg)
    assert not (tmp_path / "round-1" / "train" / stage.MANIFEST).exists()


# ---------------------------------------------------------------- 4. the real demo model

def test_one_real_step_on_demo_model(tmp_path, demo_model):
    write_pairs(tmp_path, 0, pairs_df(2))
    cfg = make_cfg(tmp_path, demo_model, "train.max_steps=1", "train.batch_size=1", "train.lora_r=4")
    adapter = stage.run(cfg)
    manifest = json.loads((adapter.parent / stage.MANIFEST).read_text())
    assert manifest["steps"] == 1 and math.isfinite(manifest["final"]["loss"])
    (line,) = [ln for ln in metric_lines(adapter.parent) if "loss" in ln]
    assert math.isfinite(line["logps/chosen"]) and line["logps/chosen"] < 0
    assert (adapter / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- 5. kill -9 and resume

def _train_args(cfg_yaml: Path, run_dir: Path):
    return ["train", "--config", str(cfg_yaml), f"run_dir={run_dir}"]


def test_kill_9_then_rerun_resumes_from_checkpoint(tmp_path, tiny_model):
    cfg_yaml = tmp_path / "train.yaml"
    cfg_yaml.write_text(
        f"prompts: {ASSETS / 'prompts.jsonl'}\nmodel: {tiny_model}\n"
        "train:\n  max_steps: 6\n  save_steps: 2\n  batch_size: 2\n  max_length: 128\n  learning_rate: 1.0e-3\n")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for d in (killed, clean):
        write_pairs(d, 0)
    out = killed / "round-0" / "train"

    proc = subprocess.Popen([sys.executable, "-m", "rlaif", *_train_args(cfg_yaml, killed)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        # a checkpoint is complete once trainer_state.json (written last) is there
        while not list(out.glob("checkpoint-*/trainer_state.json")) and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / stage.MANIFEST).exists(), "training finished before the kill; nothing was tested"
    assert list(out.glob("checkpoint-*"))
    # a kill -9 inside the metrics append leaves its last line torn (issue 11, item 4)
    with open(out / "train-metrics.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 0.6')

    resumed = rlaif_cli(*_train_args(cfg_yaml, killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train-metrics.jsonl: dropped a torn last line" in resumed.stdout
    m = re.search(r"resuming from (\S+checkpoint-(\d+)) \(step \d+\)", resumed.stdout)
    assert m, resumed.stdout
    manifest = json.loads((out / stage.MANIFEST).read_text())
    assert manifest["resumed_from_step"] == int(m.group(2)) >= 2 and manifest["steps"] == 6
    assert manifest["metrics_torn_lines_dropped"] == 1
    steps = [ln["step"] for ln in metric_lines(out) if "loss" in ln]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    # an uninterrupted run of the same config ends with the same adapter
    stage.run(load_config(cfg_yaml, [f"run_dir={clean}"]))
    diff = max_diff(adapter_weights(out / "adapter"), adapter_weights(clean / "round-0" / "train" / "adapter"))
    assert diff < 1e-5, f"resumed adapter differs from the uninterrupted one by {diff}"
    clean_losses = [ln["loss"] for ln in metric_lines(clean / "round-0" / "train") if "loss" in ln]
    killed_losses = [ln["loss"] for ln in metric_lines(out) if "loss" in ln]
    assert killed_losses == pytest.approx(clean_losses, abs=1e-4)


def test_kill_during_checkpoint_write_resumes_from_last_complete_one(round0, tmp_path):
    # A kill can leave the newest checkpoint half-written (Trainer writes trainer_state.json last):
    # resume from the newest complete one.
    run_dir = tmp_path / "run"
    shutil.copytree(round0.run_dir / "round-0", run_dir / "round-0",
                    ignore=shutil.ignore_patterns("merged", "adapter", stage.MANIFEST))
    out = run_dir / "round-0" / "train"
    # simulate the kill: checkpoint-2's adapter written, the rest (optimizer ... trainer_state.json) not yet
    for f in (out / "checkpoint-2").iterdir():
        if not f.name.startswith("adapter"):
            f.unlink()
    cfg = make_cfg(run_dir, round0.model, "train.learning_rate=1e-2")
    adapter = stage.run(cfg)
    manifest = json.loads((out / stage.MANIFEST).read_text())
    assert manifest["resumed_from_step"] == 1 and manifest["steps"] == 2
    assert [ln["step"] for ln in metric_lines(out) if "loss" in ln] == [1, 2]
    assert max_diff(adapter_weights(adapter), adapter_weights(round0.adapter)) < 1e-5


# ---------------------------------------------------------------- 6. bad pairs files fail before training

def _fails(cfg, *needles):
    with pytest.raises(UserError) as e:
        stage.run(cfg)
    for n in needles:
        assert str(n) in str(e.value), (n, str(e.value))
    assert not (cfg.round_dir() / "train").exists(), "failed after starting to train"
    return str(e.value)


def test_missing_pairs_file(tmp_path, tiny_model):
    cfg = make_cfg(tmp_path, tiny_model)
    _fails(cfg, "round-0/pairs.parquet", "rlaif judge")


def test_pairs_file_missing_column(tmp_path, tiny_model):
    path = tmp_path / "round-0" / "pairs.parquet"
    path.parent.mkdir(parents=True)
    pairs_df().drop("rejected").write_parquet(path)
    _fails(make_cfg(tmp_path, tiny_model), str(path), "rejected")


def test_empty_pairs_file(tmp_path, tiny_model):
    write_parquet(tmp_path / "round-0" / "pairs.parquet", pl.DataFrame(schema=PAIRS_SCHEMA), PAIRS_SCHEMA)
    _fails(make_cfg(tmp_path, tiny_model), "pairs.parquet", "no pairs to train on")


def test_zero_byte_pairs_file(tmp_path, tiny_model):
    # A 0-byte or corrupt pairs.parquet is a UserError naming the file, not a raw polars error.
    path = tmp_path / "round-0" / "pairs.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    _fails(make_cfg(tmp_path, tiny_model), str(path))


def test_only_identical_pairs(tmp_path, tiny_model):
    write_pairs(tmp_path, 0, pairs_df(3, chosen=lambda i: f"Same {i}.", rejected=lambda i: f"  Same {i}.\n"))
    _fails(make_cfg(tmp_path, tiny_model), "identical chosen and rejected")


def test_all_pairs_over_max_length(tmp_path, tiny_model):
    write_pairs(tmp_path, 0, pairs_df(3, chosen=lambda i: "word " * 40, rejected=lambda i: "other " * 40))
    _fails(make_cfg(tmp_path, tiny_model, "train.max_length=32", "train.overlong=drop"),
           "all 3 pairs are longer than train.max_length=32")


def test_tokenizer_without_chat_template(tmp_path, tiny_model):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    assert not tokenizer(model).chat_template
    write_pairs(tmp_path, 0)
    _fails(make_cfg(tmp_path, model), str(model), "no chat template")


# ---------------------------------------------------------------- 7. prompt ids == generate's

def test_prompt_ids_match_generate_render(fresh_trainer, round0, demo_model):
    from rlaif.generate.stage import render

    trainer, tok = fresh_trainer
    assert tokenizer(round0.model).get_vocab() == tok.get_vocab()
    ds = trainer.train_dataset
    assert len(ds) == 6
    end = tok.convert_tokens_to_ids("<|im_end|>")
    special = set(tok.all_special_ids)
    for i in range(len(ds)):
        row = ds[i]
        assert row["prompt_ids"] == render(tok, row["prompt"]), i
        ids = row["prompt_ids"]
        assert not (ids[0] in special and ids[1] == ids[0]), f"doubled special token at the start: {ids[:4]}"
        for key in ("chosen_ids", "rejected_ids"):
            tail = row[key][-2:]
            assert end in tail and tok.decode(row[key][row[key].index(end, len(row[key]) - 2) + 1:]).strip() == ""
        assert tok.decode(row["chosen_ids"]).startswith(row["chosen"][0]["content"])


def test_prompt_ids_match_render_with_system_and_multi_turn(tmp_path, tiny_model, demo_model):
    from rlaif.generate.stage import render

    chats = [
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "Count to 3."}],
    ]
    write_pairs(tmp_path, 0, pairs_df(2, messages=lambda i: chats[i]))
    cfg = make_cfg(tmp_path, tiny_model)
    tok = tokenizer(demo_model)
    trainer, _ = trainer_for(cfg, base=str(tiny_model), tok=tok)
    for i in range(2):
        assert trainer.train_dataset[i]["prompt_ids"] == render(tok, chats[i])


# ---------------------------------------------------------------- 8. NaN guard

def test_metrics_callback_stops_on_nan_and_appends_finite(tmp_path):
    path = tmp_path / "train-metrics.jsonl"
    cb = stage.metrics_callback(path, 0)
    cb.on_train_begin(None, SimpleNamespace(global_step=0), None)
    cb.on_log(None, SimpleNamespace(global_step=2), None, logs={"loss": 0.69, "grad_norm": 1.0})
    with pytest.raises(stage.TrainingDiverged, match="step 3") as e:
        cb.on_log(None, SimpleNamespace(global_step=3), None, logs={"loss": float("nan")})
    assert "loss" in str(e.value) and isinstance(e.value, UserError)
    with pytest.raises(stage.TrainingDiverged, match="grad_norm.*step 4"):
        cb.on_log(None, SimpleNamespace(global_step=4), None, logs={"loss": 0.5, "grad_norm": float("inf")})
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert lines == [{"step": 2, "loss": 0.69, "grad_norm": 1.0}]


def test_diverging_run_stops_before_checkpointing_the_nan_step(tmp_path, tiny_model):
    write_pairs(tmp_path, 0)
    cfg = make_cfg(tmp_path, tiny_model, "train.learning_rate=1e30")  # step 1 is fine; step 2 overflows
    with pytest.raises(stage.TrainingDiverged, match="at step 2"):
        stage.run(cfg)
    out = tmp_path / "round-0" / "train"
    assert [ln["step"] for ln in metric_lines(out)] == [1] and math.isfinite(metric_lines(out)[0]["loss"])
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    assert not (out / stage.MANIFEST).exists() and not (out / "adapter").exists()


def test_metrics_callback_drops_lines_past_the_resume_step(tmp_path):
    path = tmp_path / "train-metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    cb = stage.metrics_callback(path, 2)
    cb.on_train_begin(None, SimpleNamespace(global_step=2), None)
    cb.on_log(None, SimpleNamespace(global_step=3), None, logs={"loss": 0.5})
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 3]


def test_a_torn_last_metrics_line_is_dropped_and_counted_a_bad_middle_one_named(tmp_path):
    path = tmp_path / "train-metrics.jsonl"
    good = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3))
    for torn in (b'{"step": 4, "lo', b'{"step": 4, "loss": 0.5\xe2\x82', b"\x00\x00\x00"):  # cut mid-write
        path.write_bytes(good.encode() + torn)
        assert stage.read_metrics(path) == ([{"step": s, "loss": 1.0} for s in (1, 2, 3)], 1)
        cb = stage.metrics_callback(path, 2)
        cb.on_train_begin(None, SimpleNamespace(global_step=2), None)
        assert cb.torn_lines_dropped == 1
        assert path.read_text() == good.rsplit('{"step": 3', 1)[0]  # steps 1-2 kept, whole lines only
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"train-metrics.jsonl: line 2: not a metrics line"):
        stage.read_metrics(path)


# ---------------------------------------------------------------- 9. safety

def test_no_trust_remote_code_in_source():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "rlaif").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert hits == []


def test_adapter_and_checkpoints_are_safetensors(round0):
    pickled = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
    adapter_files = [f.name for f in round0.adapter.iterdir()]
    assert "adapter_model.safetensors" in adapter_files
    assert [f for f in adapter_files if f.endswith(pickled) and f != "training_args.bin"] == []
    for ckpt in round0.train.glob("checkpoint-*"):
        names = [f.name for f in ckpt.iterdir()]
        assert "adapter_model.safetensors" in names
        assert not {"adapter_model.bin", "pytorch_model.bin"} & set(names)


def test_exo_pair_and_mpo_weights_reach_the_trainer_and_train(tmp_path, tiny_model):
    """exo_pair raised when the trainer was built (TRL refuses label_smoothing 0, which rlaif could not
    set); now label_smoothing and loss_weights reach DPOTrainer and a combined loss trains (issue 18, item 10)."""
    write_pairs(tmp_path, 0)
    cfg = make_cfg(tmp_path, tiny_model, "train.loss_type=exo_pair,sft", "train.label_smoothing=1e-3",
                   "train.loss_weights=[1.0, 0.5]")
    trainer, _ = trainer_for(cfg)
    assert (trainer.loss_types, trainer.loss_weights, trainer.label_smoothing) == (["exo_pair", "sft"], [1.0, 0.5], 1e-3)
    assert trainer.args.gradient_checkpointing is False  # CPU: the default is off
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
