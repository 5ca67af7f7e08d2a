"""Shared fixtures: the real demo model (cached under ~/.cache/rlaif) and a tiny random Llama
built in-process with the demo model's tokenizer (seconds), both cached per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    from rlaif.models import demo_model_path

    return demo_model_path()


@pytest.fixture(scope="session")
def tiny_model(demo_model, tmp_path_factory) -> Path:
    """A 2-layer random Llama (~3M params) speaking the SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(demo_model)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def rlaif_cli(*args: str, python: str = sys.executable, env: dict | None = None, timeout: float = 600,
              **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a fresh process, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([python, "-m", "rlaif", *args], capture_output=True, text=True, cwd=ROOT,
                          env=full_env, timeout=timeout, **kw)
