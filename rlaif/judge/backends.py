"""Judge backends behind one small contract: `run(calls, on_reply)` sends each call and hands
every reply to `on_reply` as soon as it lands (the stage writes it to the ledger at once)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

BACKENDS = {
    "openai": "rlaif.judge.openai_backend:OpenAIJudge",
    "local": "rlaif.judge.local:LocalJudge",
}


@dataclass(frozen=True)
class Call:
    key: str
    prompt_id: str
    kind: str  # pairwise | score
    a_id: str
    b_id: str | None
    order: str | None  # ab: a_id in slot A; ba: b_id in slot A
    messages: tuple  # the judge's chat messages (rendered template)
    est_input_tokens: int = 0


@dataclass
class Reply:
    text: str | None = None
    top: dict[str, float] | None = None  # first reply token's top logprobs
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None  # set when no reply was obtained (not stored as a verdict)
    extra: dict = field(default_factory=dict)


def load_judge(name: str, **kwargs):
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
