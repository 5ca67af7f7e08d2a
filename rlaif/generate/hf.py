"""transformers backend: batched `model.generate` with left padding; CPU or GPU.

The stage hands prompts sorted by length, so consecutive batches carry little padding.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from rlaif.generate.backends import Done, Request, Sample
from rlaif.models import default_dtype, left_pad
from rlaif.passthrough import transformers_sampling

if TYPE_CHECKING:  # pydantic stays out of the backends' runtime (bench/gpu_smoke.py runs without it)
    from rlaif.config import GenerateConfig


class TransformersBackend:
    def __init__(self, model: str, cfg: GenerateConfig, seed: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        net = AutoModelForCausalLM.from_pretrained(model, dtype=default_dtype(cfg.dtype))
        if cfg.adapter:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, cfg.adapter)
        self.model = net.to(self.device).eval()
        eos = {self.tokenizer.eos_token_id}
        gen_eos = net.generation_config.eos_token_id
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = sorted(e for e in eos if e is not None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

        sample = cfg.temperature > 0
        # transformers refuses num_return_sequences > 1 when greedy; the n answers would be equal anyway.
        self.returns = cfg.n if sample else 1
        self.gen_config = GenerationConfig(
            max_new_tokens=cfg.max_tokens, do_sample=sample, num_return_sequences=self.returns,
            temperature=cfg.temperature if sample else None, top_p=cfg.top_p if sample else None,
            # top_k must be explicit: None would be filled with transformers' default of 50.
            top_k=cfg.top_k if sample else None, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
            **transformers_sampling(cfg.sampling_args),  # generate.sampling_args under GenerationConfig's names
        )
        self.stops = self.gen_config.stop_strings or []
        if isinstance(self.stops, str):
            self.stops = [self.stops]

    def close(self) -> None:
        """Free the model before this process loads another (evaluate's judge after its answers)."""
        from rlaif.models import release_gpu

        self.model = None
        release_gpu()

    def _batch(self, prompts: list[list[int]]) -> list[list[Sample]]:
        import torch

        ids, mask = left_pad(prompts, self.pad_id)
        width = ids.shape[1]
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=self.gen_config,
                                      tokenizer=self.tokenizer if self.stops else None)  # stop_strings need it
        gen = out[:, width:].tolist()
        eos = set(self.eos_ids)
        samples = []
        for row in gen:
            stop = next((k for k, t in enumerate(row) if t in eos), None)
            body = row if stop is None else row[:stop]
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:  # as vLLM returns it: the text before the stop string, which is not included
                text = text[:cut]
            finish = "stop" if stop is not None or cut >= 0 else "length"
            samples.append(Sample(text, len(body) + (stop is not None), finish))
        r, copies = self.returns, self.cfg.n // self.returns
        return [samples[i * r:(i + 1) * r] * copies for i in range(len(prompts))]

    def generate(self, shards: list[list[Request]]) -> Iterator[Done]:
        """One shard at a time, in batches of batch_size, seeded per shard. model.generate draws every
        row of a batch from the one global torch RNG, so a prompt's samples depend on its batch-mates:
        a per-prompt generator would mean batch size 1 or a sampling loop of our own. The shard's seed
        is its first prompt's, so a resumed shard samples the same tokens; rows depend on shard_size
        (it is in the fingerprint). The vllm backend seeds per prompt and does not."""
        import torch

        bs = self.cfg.batch_size
        for shard in shards:
            seed = shard[0].seed
            torch.manual_seed(seed)
            for i in range(0, len(shard), bs):
                batch = shard[i:i + bs]
                for req, samples in zip(batch, self._batch([r.token_ids for r in batch])):
                    yield Done(req, seed, samples)
