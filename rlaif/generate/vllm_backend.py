"""vLLM backend (GPU; also the community CPU build): one engine queue for all of a run's prompts,
`n` samples per prompt, a seed per prompt, prefix caching, tensor parallelism, a LoRA adapter.

vLLM's maintainers: put every prompt into one call to maximise throughput (vllm-project/vllm#1315);
a call per shard waits for its longest sequence while the engine drains. So the backend keeps one
queue topped up to WINDOW_SEQS sequences (bounded memory for a run of any size) and hands each
prompt back the moment it finishes, which lets the stage write a shard as soon as its prompts are
done. It is what `LLM.generate` does inside (vllm/entrypoints/common/offline.py, `_run_engine`):
`LLM.enqueue` adds requests, `llm_engine.step()` returns the ones that finished.

vLLM spawns worker processes: the CLI entry point keeps the `if __name__ == "__main__"` guard.
"""
from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Iterator

from rlaif.generate.backends import Done, Request, Sample

if TYPE_CHECKING:
    from rlaif.config import GenerateConfig

# Sequences (prompts x n) in the engine at once. vLLM schedules max_num_seqs of them per step (256
# by default) and queues the rest; the window only bounds what waits in host memory. Rows do not
# depend on it (a seed per request), so it is not in the fingerprint; RLAIF_VLLM_WINDOW_SEQS sets it.
WINDOW_SEQS = 4096


def engine_args(model: str, cfg: GenerateConfig, seed: int) -> dict:
    """`vllm.LLM` keyword arguments for these settings (the bench builds its engine with them too)."""
    kwargs = dict(model=model, tokenizer=model, seed=seed, dtype=cfg.dtype,
                  tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=True,
                  gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager)
    if cfg.max_model_len:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.adapter:
        kwargs.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=1)
    kwargs.update(cfg.engine_args)  # generate.engine_args: checked against EngineArgs when the config loaded
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # The model runner rewinds a seeded request's generator when it drops a sampled token (a prompt
        # part-way through a chunked prefill) with set_offset, which CPU generators lack: "CPU Generator
        # does not use offset" kills the engine (vllm/v1/worker/gpu_model_runner.py, _bookkeeping_sync;
        # the same bug in RBLN-SW/vllm-rbln#1025). Whole prefills drop nothing; vLLM then raises its
        # token budget to at least max_model_len.
        kwargs["enable_chunked_prefill"] = False
    return kwargs


class VLLMBackend:
    def __init__(self, model: str, cfg: GenerateConfig, seed: int, llm=None) -> None:
        """`llm`: an engine already built with engine_args (bench/generate_vllm.py shares one across sides)."""
        self.owned = llm is None  # an engine built here is released here (close); a shared one is its owner's
        if llm is None:
            from vllm import LLM

            llm = LLM(**engine_args(model, cfg, seed))
        self.llm, self.cfg = llm, cfg
        self.window = int(os.environ.get("RLAIF_VLLM_WINDOW_SEQS", WINDOW_SEQS))
        self.stats = {"window_seqs": self.window, "peak_engine_requests": 0,
                      # what the engine schedules per step, as built (generate.engine_args.max_num_seqs reaches it)
                      "max_num_seqs": getattr(getattr(getattr(llm.llm_engine, "vllm_config", None),
                                                      "scheduler_config", None), "max_num_seqs", None)}
        self.lora = None
        if cfg.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("policy", 1, cfg.adapter)

    def close(self) -> None:
        """An engine built here is shut down when sampling ends (rlaif.models.shutdown_engine): a vLLM judge
        loading next asks for judge.gpu_memory_utilization of the card, which this engine would still hold."""
        if not self.owned or self.llm is None:
            return
        from rlaif.models import shutdown_engine

        llm, self.llm = self.llm, None
        shutdown_engine(llm)

    def _params(self, seed: int):
        from vllm import SamplingParams

        c = self.cfg
        # vLLM draws child j of an n-sample request with seed + j (vllm/v1/engine/parallel_sampling.py)
        return SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k or -1,
                              max_tokens=c.max_tokens, seed=seed, **c.sampling_args)

    def generate(self, shards: list[list[Request]]) -> Iterator[Done]:
        queue = deque(r for shard in shards for r in shard)
        engine, in_flight = self.llm.llm_engine, {}
        while queue or in_flight:
            while queue and (not in_flight or (len(in_flight) + 1) * self.cfg.n <= self.window):
                req = queue.popleft()
                (rid,) = self.llm.enqueue([{"prompt_token_ids": req.token_ids}], [self._params(req.seed)],
                                          lora_request=self.lora, use_tqdm=False)
                # enqueue returns the engine's id, LLM's counter plus a random suffix
                # (vllm/v1/engine/input_processor.py, assign_request_id); outputs carry the counter alone
                in_flight[rid.split("-", 1)[0]] = req
            # what the engine itself holds (one request per sequence): the worker record keeps the peak
            self.stats["peak_engine_requests"] = max(self.stats["peak_engine_requests"],
                                                     engine.get_num_unfinished_requests())
            for out in engine.step():
                if out.finished:
                    req = in_flight.pop(out.request_id)
                    yield Done(req, req.seed, [Sample(o.text, len(o.token_ids), "length" if o.finish_reason ==
                                                      "length" else "stop") for o in out.outputs])
