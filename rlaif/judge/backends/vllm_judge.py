"""vLLM judge (judge.backend=vllm): the local judge's calls in vLLM's offline engine, the same replies.

    rlaif judge --config configs/quickstart.yaml judge.backend=vllm judge.engine_args='{max_model_len: 4096}'

A stage's calls go into the engine in large chunks (one `LLM.generate` per chunk, CHUNK calls), so
vLLM schedules them together (vllm-project/vllm#1315) while the Runner's iterator, which stops at
budgets, is still pulled lazily. Replies are LocalJudge's (rlaif/judge/backends/local.py):
- label calls: `max_tokens=1` with `logprob_token_ids=<the labels' next token ids>`: vLLM returns
  exactly those ids' log-probabilities at the first reply position, from the full-vocabulary
  log-softmax of the raw logits (vllm/v1/sample/sampler.py, gather_specific_token_logprobs), whatever
  their rank. `logprobs=K` would miss a label outside the top K; `allowed_token_ids` or guided choice
  would renormalise over the labels only. Single-token labels (A/B, 1-9, Yes/No) need one request;
  multi-token labels (graded "[[A>>B]]") one request per prefix of the labels' token trie ("", "[[",
  "[[A", ...), their log-probabilities summed along each label: LocalJudge's teacher forcing, and the
  prefixes share the prompt's cached blocks. Not `prompt_logprobs` over prompt + label: it skips the
  prefix cache, and with enable_lora (judge.model=policy) vLLM 0.32's CPU LoRA logits path fails on
  it ("einsum(): subscript b has size ..."), and `prompt_logprob_token_ids` needs the V2 model runner.
- explained verdicts and free-text calls: generated greedily (or sampled under the call's seed) up
  to call.max_tokens, with the finish reason.
judge.model=policy adds the round's LoRA adapter (enable_lora, a LoRARequest per request).
vLLM spawns worker processes: the CLI entry point keeps the `if __name__ == "__main__"` guard.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

from rlaif.errors import UserError
from rlaif.judge.backends import Call, Reply

# Calls per LLM.generate: one engine queue per chunk; RLAIF_VLLM_JUDGE_CHUNK sets it (replies land per chunk)
CHUNK = 1024
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32's MaxLoRARanks (vllm/config/lora.py)


def lora_rank(adapter: str) -> int:
    """The smallest max_lora_rank vLLM accepts that holds the adapter's rank (adapter_config.json's r)."""
    path = Path(adapter) / "adapter_config.json"
    try:
        r = int(json.loads(path.read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: cannot read the LoRA rank r ({e})") from None
    if r > LORA_RANKS[-1]:
        raise UserError(f"{path}: LoRA rank {r} is over vLLM's largest max_lora_rank {LORA_RANKS[-1]}")
    return next(k for k in LORA_RANKS if k >= r)


def engine_args(model: str, cfg, adapter: str | None = None) -> dict:
    """`vllm.LLM` keyword arguments for a judge (bench/judge_vllm.py builds its engine with them too)."""
    from vllm.platforms import current_platform

    kwargs = dict(model=model, tokenizer=model, seed=0, enable_prefix_caching=True,
                  gpu_memory_utilization=cfg.gpu_memory_utilization)
    if adapter:
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank(adapter))
    if current_platform.is_cpu():
        # LocalJudge's CPU precision (rlaif.models.default_dtype: bf16 runs ~10x slower on such CPUs);
        # eager: the default compile mode takes ~5 min to start there (FIELD-NOTES); whole prefills: a seeded
        # request loses its generator offset in a chunked prefill (rlaif/generate/vllm_backend.py, engine_args)
        kwargs.update(dtype="float32", enforce_eager=True, enable_chunked_prefill=False)
    kwargs.update(cfg.engine_args)  # judge.engine_args: checked against EngineArgs when the config loaded
    return kwargs


class VLLMJudge:
    def __init__(self, cfg, model: str, adapter: str | None = None, llm=None, **_) -> None:
        """`llm`: an engine already built with engine_args (the bench shares one)."""
        from transformers import AutoTokenizer

        self.cfg, self.owned = cfg, llm is None  # an engine built here is released here (close)
        self.tok = AutoTokenizer.from_pretrained(model)  # LocalJudge's tokenizer and chat template: the same ids
        if llm is None:
            from vllm import LLM

            llm = LLM(**engine_args(model, cfg, adapter))
        self.llm, self.lora = llm, None
        if adapter:  # judge.model=policy: the round's policy is the model plus its LoRA adapter
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("judge-policy", 1, str(adapter))
        self.chunk = int(os.environ.get("RLAIF_VLLM_JUDGE_CHUNK", CHUNK))

    def _ids(self, messages) -> list[int]:
        enc = self.tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])

    def close(self) -> None:
        """Shut an engine built here down and hand its GPU memory back (rlaif.models.shutdown_engine)."""
        if not self.owned or self.llm is None:
            return
        from rlaif.models import shutdown_engine

        llm, self.llm = self.llm, None
        shutdown_engine(llm)

    def _steps(self, call: Call) -> dict[tuple, list[int]]:
        """{label-token prefix: the token ids that follow it in some label}, the labels as a trie: each
        prefix is one engine request whose first reply position gives those ids' log-probabilities."""
        steps: dict[tuple, list[int]] = {}
        for ids in self._label_ids(call):
            for t, tok in enumerate(ids):
                nxt = steps.setdefault(tuple(ids[:t]), [])
                if tok not in nxt:
                    nxt.append(tok)
        return steps

    def _label_ids(self, call: Call) -> list[list[int]]:
        return [self.tok.encode(lab, add_special_tokens=False) for lab in call.labels]

    def _requests(self, call: Call, prompt: list[int]) -> list[tuple[list[int], object]]:
        """(token ids, SamplingParams) of each engine request one call needs."""
        from vllm import SamplingParams

        if self.cfg.explain or not call.labels:  # explained verdicts, checklist writing, critiques: text
            sampled = call.temperature > 0
            return [(prompt, SamplingParams(max_tokens=call.max_tokens, temperature=call.temperature,
                                            top_p=1.0, top_k=0, seed=(call.seed or 0) if sampled else None))]
        return [(prompt + list(prefix), SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                                       logprob_token_ids=nxt))
                for prefix, nxt in self._steps(call).items()]

    def _reply(self, call: Call, prompt: list[int], outs: list, dt: float) -> Reply:
        if self.cfg.explain or not call.labels:
            (o,) = outs[0].outputs
            return Reply(text=o.text, finish_reason="length" if o.finish_reason == "length" else "stop",
                         input_tokens=len(prompt), output_tokens=len(o.token_ids), latency_s=dt)
        # {prefix: {token id: Logprob}} at each request's first reply position
        at = {prefix: out.outputs[0].logprobs[0] for prefix, out in zip(self._steps(call), outs)}
        # a label's log-likelihood by the chain rule over its tokens: LocalJudge's teacher forcing
        top = {lab: float(sum(at[tuple(ids[:t])][tok].logprob for t, tok in enumerate(ids)))
               for lab, ids in zip(call.labels, self._label_ids(call))}
        label = max(top, key=top.get)  # the reply is one label: one position, every label its alternative
        return Reply(text=label, top=[(label, top)], finish_reason="stop", input_tokens=len(prompt),
                     output_tokens=1, latency_s=dt)

    def run(self, calls, on_reply) -> None:
        it = iter(calls)
        while chunk := list(itertools.islice(it, self.chunk)):
            t0 = time.monotonic()
            prompts = [self._ids(c.messages) for c in chunk]
            reqs = [self._requests(c, p) for c, p in zip(chunk, prompts)]
            flat = [r for rs in reqs for r in rs]
            # one queue: a label prefix's request reads its prompt's blocks from the prefix cache once computed
            # (16 graded calls of the demo model, CPU build, 2026-12-05: 83% of prompt tokens were cache hits,
            # the same as with the prompts sent first in a separate generate)
            outs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in flat], [sp for _, sp in flat],
                                     lora_request=self.lora, use_tqdm=False)
            dt = (time.monotonic() - t0) / len(chunk)
            at = 0
            for call, p, rs in zip(chunk, prompts, reqs):
                on_reply(call, self._reply(call, p, outs[at:at + len(rs)], dt))
                at += len(rs)
