"""rlaif.train.memory: the memory plan from config.json alone, against configs/gpu-8b.yaml's worked example
and against the measured peak of one real DPO step (issue 21, item 2)."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ASSETS, ROOT
from rlaif.config import load_config
from rlaif.train import memory

LLAMA8B = ASSETS / "llama-3.1-8b"  # Llama-3.1-8B-Instruct's own config.json values


def gpu8b(*extra):
    return load_config(ROOT / "configs/gpu-8b.yaml", [f"model={LLAMA8B}", *extra])


def test_llama_8b_gives_the_gpu_8b_yaml_breakdown():
    d = memory.read_dims(LLAMA8B)
    assert d["params"] == 8_030_261_248  # Llama-3.1-8B's published parameter count
    t = memory.train_memory(d, memory.settings(gpu8b(), cuda=True), logits="full")
    gb = {k: round(t[k] / 1e9, 1) for k in ("weights", "lora_and_optimizer", "activations", "logprob_head")}
    # the comment: weights 16.1, LoRA 41.9M params 0.75, activations 4.3 + 5.0, logits 16.8; sum ~43 GB
    assert gb == {"weights": 16.1, "lora_and_optimizer": 0.8, "activations": 9.3, "logprob_head": 16.8}, gb
    assert round(t["lora_params"] / 1e6, 1) == 41.9 and t["tokens_per_micro_batch"] == 16_384
    assert round(memory.peak(t) / 1e9) == 43
    # TRL 1.16 scores tokens through its tiled head: the logits term shrinks to one tile + hidden states
    fused = memory.train_memory(d, memory.settings(gpu8b(), cuda=True), logits="fused")
    assert fused["logprob_head"] < 1e9 and fused["activations"] == t["activations"]
    q = memory.train_memory(d, memory.settings(gpu8b("train.load_in_4bit=true"), cuda=True), logits="full")
    assert 5.0e9 < q["weights"] < 6.0e9  # NF4 linear layers, bf16 embeddings and head: the comment's ~5.5 GB


def test_without_checkpointing_8b_does_not_fit_80gb_and_the_fix_is_named():
    cfg = gpu8b("train.gradient_checkpointing=false")
    d, s = memory.read_dims(LLAMA8B), memory.settings(cfg, cuda=True)
    t = memory.train_memory(d, s)
    assert round(t["activations"] / 1e9) == 159  # the comment's "159 GB"
    room = 80e9 * memory.HEADROOM
    assert memory.need(t, s) > room
    fixes = {o["set"]: o for o in memory.suggestions(d, s, room, "fused")}
    assert fixes["train.gradient_checkpointing=true"]["fits"], fixes
    keep = "train.batch_size=1 train.gradient_accumulation_steps=32 (still 32 pairs per step)"
    assert keep in fixes  # pairs per optimizer step stay 4 x 8
    plan = memory.plan_memory(cfg)
    text = "\n".join(plan["lines"])
    assert "80 GB (H100/A100): does NOT fit" in text and "train.gradient_checkpointing=true" in text, text


def test_plan_lines_for_the_gpu_config_without_a_gpu_and_vllm_room():
    plan = memory.plan_memory(gpu8b())
    text, data = "\n".join(plan["lines"]), plan["data"]
    print(text)
    assert "no GPU visible here: figures for a CUDA GPU" in text and "weights not loaded" in text
    assert data["fits"] == {"80 GB (H100/A100)": True, "141 GB (H200)": True}
    v80, v141 = data["vllm"]["80 GB (H100/A100)"], data["vllm"]["141 GB (H200)"]
    assert v80["kv_bytes_per_token"] == 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 kv heads of 128, bf16
    assert v80["max_num_seqs"] == 1024 and v80["max_model_len"] == 4096  # vLLM's H100/H200 default; the config's
    assert 80 <= v80["full_length_seqs"] < 120 and 180 <= v141["full_length_seqs"] < 220, (v80, v141)
    # the model's own context (131,072 tokens) when max_model_len is not set: only a few sequences fit
    long = memory.plan_memory(gpu8b("generate.max_model_len=null"))["data"]["vllm"]["80 GB (H100/A100)"]
    assert long["max_model_len"] == 131072 and long["full_length_seqs"] == v80["kv_tokens"] // 131072


def test_trainer_and_lora_args_win_when_present():
    t = gpu8b().train
    cfg = SimpleNamespace(train=SimpleNamespace(**{**dict(t), "trainer_args": {
        "per_device_train_batch_size": 1, "gradient_checkpointing": False, "optim": "adamw_8bit"},
        "lora_args": {"r": 64, "target_modules": ["q_proj", "v_proj"]}}))
    s = memory.settings(cfg, cuda=True)
    assert (s["batch_size"], s["gradient_checkpointing"], s["lora_r"]) == (1, False, 64)
    d = memory.read_dims(LLAMA8B)
    assert memory.lora_params(d, 64, ["q_proj", "v_proj"]) == 32 * 64 * ((4096 + 4096) + (4096 + 1024))
    base = memory.train_memory(d, memory.settings(gpu8b(), cuda=True))
    assert memory.train_memory(d, s)["activations"] != base["activations"]


def test_a_missing_model_folder_is_one_line(tmp_path):
    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"model={tmp_path / 'nowhere'}"])
    plan = memory.plan_memory(cfg)
    assert plan["lines"] == [f"memory: not estimated: {tmp_path / 'nowhere'}/config.json not found"]
    assert plan["data"]["estimated"] is False
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"n_embd": 768, "n_layer": 12}))
    lines = memory.plan_memory(load_config(ROOT / "configs/quickstart.yaml", [f"model={tmp_path / 'gpt2'}"]))["lines"]
    assert len(lines) == 1 and "not estimated" in lines[0] and "hidden_size" in lines[0], lines


def test_estimate_against_the_measured_peak_of_one_real_step(tiny_model, tmp_path):
    """One DPO step of rlaif's train path on the tiny model, in a fresh process (bench/memory.py): RSS growth
    from after imports to the peak. The tiny model's weights and activations are a few MB, so this checks the
    term that dominates it, the log-prob head (TRL's tiled head; on CPU ~8 fp32 arrays the size of a tile).
    Band 0.8-1.6: measured 1.06 here (2026-12-05); on the demo model RSS ran 0.98-1.44x the estimate
    (glibc keeps freed buffers; rlaif/train/memory.py has the figures). A head counted as one tile (CUDA's
    count) gives ~8x, full logits ~2.6x: both fail."""
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/memory.py"), "--model", str(tiny_model), "--batch-size",
                           "2", "--max-length", "256", "--ckpt", "off", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = json.loads(out.read_text())
    print(f"measured growth {r['growth'] / 2**20:.0f} MiB (baseline {r['baseline'] / 2**20:.0f} MiB), "
          f"estimate {r['estimate'] / 2**20:.0f} MiB, ratio {r['ratio']:.2f}")
    assert r["logits_model"] == "fused" and r["terms"]["tokens_per_micro_batch"] == 1024
    assert 0.8 <= r["ratio"] <= 1.6, r
