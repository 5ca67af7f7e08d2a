"""The judge backend contract, one method (the shape of simonw/llm's `Model.execute`):

    backend = load_judge(cfg.judge, model, ledger=..., on_retry=...)
    backend.run(calls, on_reply)

`calls` is an iterator the stage owns: a backend pulls the next call only when it can send it,
and the stage stops yielding when a budget is reached, so budgets live in one place (the stage's
Runner), never inside a backend. `on_reply(call, reply)` gets every reply as soon as it lands;
the stage writes it to the ledger at once. A backend never reads or writes verdicts itself.

Which backend answers: the `BACKENDS` dict of "module:Class" strings, imported only when chosen
(lm-evaluation-harness's model map), so `rlaif --help` imports none of them. One module each:
    openai_chat.py   judge.backend=openai: live chat completions (and reasoning models), any compatible endpoint
    openai_batch.py  judge.mode_api=batch: the same calls through the OpenAI Batch API, at the batch price
    governor.py      the live path's rate governor (rpm, tpm, shared by its workers, adapting down on 429s)
    local.py         judge.backend=local: a causal LM in-process, verdicts off the label logits
    vllm_judge.py    judge.backend=vllm: the local judge's calls in vLLM's offline engine (LoRA adapters included)
    reward_model.py  judge.backend=reward_model: a sequence-classification model's scalar reward
    verifier.py      judge.backend=verifier: judge.checks run on each candidate (code tests in the sandbox), no model
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

BACKENDS = {
    "openai": "rlaif.judge.backends.openai_chat:OpenAIJudge",  # live chat completions, any compatible endpoint
    "openai-batch": "rlaif.judge.backends.openai_batch:BatchJudge",  # the OpenAI Batch API (judge.mode_api=batch)
    "local": "rlaif.judge.backends.local:LocalJudge",  # a causal LM in-process, verdicts off the logits
    "vllm": "rlaif.judge.backends.vllm_judge:VLLMJudge",  # the same judge in vLLM's offline engine, one queue
    "reward_model": "rlaif.judge.backends.reward_model:RewardModelJudge",  # a sequence-classification reward model
    "verifier": "rlaif.judge.backends.verifier:VerifierJudge",  # checks, code tests in the sandbox: no model
}

KINDS = ("pairwise", "score", "checklist", "reward", "verify", "checklist_writer", "critique", "revision")


@dataclass(frozen=True)
class Call:
    key: str
    prompt_id: str
    kind: str  # pairwise | score | checklist (one item, one candidate) | reward (reward model score)
    #            | checklist_writer, critique, revision (free text replies)
    a_id: str
    b_id: str | None
    order: str | None  # ab: a_id in slot A; ba: b_id in slot A
    messages: tuple  # the judge's chat messages (rendered template); empty for kind "reward"
    est_input_tokens: int = 0
    labels: tuple = ()  # the answer labels a logit-reading backend chooses among, in slot terms
    chat: tuple = ()  # the conversation judged (reward models apply their own chat template to it)
    response: str | None = None  # the candidate's text (kind reward)
    item: str | None = None  # checklist item id, e.g. "0" (kind checklist)
    max_tokens: int = 8  # reply token cap for this call
    version: str | None = None  # its template version when not the session spec's (a principle's spec)
    # free-text calls only: sample instead of greedy (Meta-Rewarding's several judgments of one response,
    # rlaif/judge/pairs/meta.py); the seed makes a call's sample reproducible where the backend allows
    temperature: float = 0.0
    seed: int | None = None
    # kind "verify" (judge.backend=verifier): the prompt row's check data as JSON, {"tests": [...], "reference": ...}
    data: str | None = None


@dataclass
class Reply:
    text: str | None = None
    # every reply token in order with {alternative: logprob} (API logprobs), or one position holding
    # the label a local judge chose with every label's log-likelihood; the stage reads the verdict's
    # own token (templates.verdict_top), never the first token of a rationale
    top: list[tuple[str, dict[str, float]]] | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None  # set when no reply was obtained (not stored as a verdict)
    score: float | None = None  # a reward model's scalar reward
    extra: dict = field(default_factory=dict)  # backend notes for the ledger's request record


class Backend(Protocol):
    def run(self, calls: Iterator[Call], on_reply: Callable[[Call, Reply], None]) -> None: ...


def backend_name(cfg) -> str:
    """The BACKENDS entry a JudgeConfig selects."""
    if cfg.backend == "openai" and cfg.mode_api == "batch":
        return "openai-batch"
    return cfg.backend


def load_judge(cfg, model: str, **kwargs) -> Backend:
    module, cls = BACKENDS[backend_name(cfg)].split(":")
    return getattr(importlib.import_module(module), cls)(cfg=cfg, model=model, **kwargs)
