"""Generation backends: one small interface, looked up by name, imported only when chosen.

A backend takes already-tokenised prompts (the stage renders the chat template once, the same
way for every backend) and returns, per prompt, `n` samples.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from rlaif.config import GenerateConfig

BACKENDS = {
    "transformers": "rlaif.generate.hf:TransformersBackend",
    "vllm": "rlaif.generate.vllm_backend:VLLMBackend",
}


@dataclass(frozen=True)
class Sample:
    text: str
    num_tokens: int  # generated tokens, the stop token included
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_tokens)


class Backend(Protocol):
    def __init__(self, model: str, cfg: GenerateConfig, seed: int) -> None: ...

    def generate(self, prompts: list[list[int]], seed: int) -> list[list[Sample]]: ...


def load_backend(name: str, model: str, cfg: GenerateConfig, seed: int) -> Backend:
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, cfg, seed)
