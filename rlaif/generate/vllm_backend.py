"""vLLM backend (GPU; also the community CPU build): `LLM.generate` with `n`, per-prompt seeds,
prefix caching, tensor parallelism and a LoRA adapter for later rounds.

vLLM spawns worker processes: the CLI entry point keeps the `if __name__ == "__main__"` guard.
"""
from __future__ import annotations

from rlaif.config import GenerateConfig
from rlaif.generate.backends import Sample


class VLLMBackend:
    def __init__(self, model: str, cfg: GenerateConfig, seed: int) -> None:
        from vllm import LLM

        self.cfg = cfg
        kwargs = dict(
            model=model, tokenizer=model, seed=seed, dtype=cfg.dtype,
            tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=True,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
        )
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.adapter:
            kwargs.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=1)
        self.llm = LLM(**kwargs)
        self.lora = None
        if cfg.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("policy", 1, cfg.adapter)

    def generate(self, prompts: list[list[int]], seed: int) -> list[list[Sample]]:
        from vllm import SamplingParams

        c = self.cfg
        # A seed per request makes each prompt's samples independent of batching and sharding.
        params = [SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k or -1,
                                 max_tokens=c.max_tokens, seed=seed + i) for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                 lora_request=self.lora, use_tqdm=False)
        return [[Sample(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                 for o in out.outputs] for out in outs]
