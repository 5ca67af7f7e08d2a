"""Generation backends: one small interface, looked up by name, imported only when chosen.

A backend takes already-tokenised prompts (the stage renders the chat template once, the same
way for every backend), grouped into the stage's shards, and yields each prompt's `n` samples as
soon as that prompt is done, in whatever order prompts finish. The stage writes a shard once all
of its prompts have come back.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

if TYPE_CHECKING:  # pydantic stays out of the backends' runtime (bench/gpu_smoke.py runs without it)
    from rlaif.config import GenerateConfig

BACKENDS = {
    "transformers": "rlaif.generate.hf:TransformersBackend",
    "vllm": "rlaif.generate.vllm_backend:VLLMBackend",
}


@dataclass(frozen=True)
class Request:
    prompt_id: str
    token_ids: list[int]
    seed: int  # from (run seed, round, prompt_id): sample j of the prompt is drawn with seed + j


@dataclass(frozen=True)
class Sample:
    text: str
    num_tokens: int  # generated tokens, the stop token included
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_tokens)


@dataclass(frozen=True)
class Done:
    request: Request
    seed: int  # the seed the samples were drawn under (the backend says: per prompt or per shard)
    samples: list[Sample]


class Backend(Protocol):
    def __init__(self, model: str, cfg: GenerateConfig, seed: int) -> None: ...

    def generate(self, shards: list[list[Request]]) -> Iterator[Done]: ...


def load_backend(name: str, model: str, cfg: GenerateConfig, seed: int) -> Backend:
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, cfg, seed)
