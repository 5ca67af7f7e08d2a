"""vLLM mode of bench/generate.py: rlaif's vllm backend (one engine queue for the whole round) against
one bare `LLM.generate` over all prompts, and the old behaviour (one `LLM.generate` per shard), at
shard sizes 4 and 64; same prompts, sampling and n.

    .venv-vllm/bin/python bench/generate.py --backend vllm --enforce-eager --prompts-count 72 --reps 2  # CPU build
    python bench/generate.py --backend vllm --model /path/to/model --n 8 --max-tokens 256 --prompts big.jsonl  # GPU

One engine, built with rlaif's own engine arguments, serves every side in this one process (two
engines would fight over GPU memory); its prefix cache is reset before each side so none reuses
another's prefill. rlaif's sides run the real stage (plan, rows, parquet writes, manifest) with that
engine handed to the backend; their seconds are the stage's sampling loop (timing.generate_s, which
holds the shard writes: they overlap the engine now). The old per-shard loop is kept here, below, as
it was in rlaif/generate/vllm_backend.py before issue 14.
"""
from __future__ import annotations

import time
from unittest import mock

import generate_common as bench  # sibling file: shared args, rlaif runner, interleaving and table

SHARDS = (4, 64)


def bare(llm, prompts: list[dict], args, seeded: bool) -> dict:
    """One call over every prompt: vllm-project/vllm#1315's advice. `seeded`: a seed per prompt, as rlaif
    sends (vLLM then draws each request from its own generator), else one SamplingParams for all."""
    from vllm import SamplingParams

    def params(i):
        return SamplingParams(n=args.n, temperature=bench.TEMPERATURE, top_p=bench.TOP_P, top_k=bench.TOP_K or -1,
                              max_tokens=args.max_tokens, seed=1000 + i if seeded else None)  # -1: off, as rlaif maps 0

    t0 = time.perf_counter()
    outs = llm.generate(prompts, [params(i) for i in range(len(prompts))] if seeded else params(0), use_tqdm=False)
    seconds = time.perf_counter() - t0
    # token_ids holds the stop token when a sample ends on EOS: the same count as rlaif's num_tokens
    return {"tokens": sum(len(o.token_ids) for out in outs for o in out.outputs), "seconds": round(seconds, 3)}


class OldPerShard:
    """The pre-issue-14 backend loop: `LLM.generate` once per shard, seeds from the shard's seed plus
    the prompt's index in it; each call drains the engine before the next starts."""

    def __init__(self, llm, cfg) -> None:
        self.llm, self.cfg = llm, cfg

    def generate(self, shards):
        from vllm import SamplingParams

        from rlaif.generate.backends import Done, Sample

        c = self.cfg
        for shard in shards:
            seed = shard[0].seed
            params = [SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k or -1,
                                     max_tokens=c.max_tokens, seed=seed + i) for i in range(len(shard))]
            outs = self.llm.generate([{"prompt_token_ids": r.token_ids} for r in shard], params, use_tqdm=False)
            for req, out in zip(shard, outs):
                yield Done(req, seed, [Sample(o.text, len(o.token_ids), "length" if o.finish_reason == "length"
                                              else "stop") for o in out.outputs])


def rlaif_side(llm, args, rep: int, shard: int, old: bool) -> dict:
    from rlaif.generate.vllm_backend import VLLMBackend

    def load(name, model, cfg, seed):
        return OldPerShard(llm, cfg) if old else VLLMBackend(model, cfg, seed, llm=llm)

    with mock.patch("rlaif.generate.backends.load_backend", load):
        r = bench.rlaif_run(args, rep, "vllm", shard=shard, extra=[f"generate.enforce_eager={args.enforce_eager}"])
    r.pop("seconds_with_writes")  # generate_s holds the shard writes already
    return r


def main(args) -> int:
    from vllm import LLM

    from rlaif.config import GenerateConfig
    from rlaif.generate.vllm_backend import engine_args

    g = GenerateConfig(backend="vllm", enforce_eager=args.enforce_eager, max_model_len=args.max_model_len)
    llm = LLM(**engine_args(args.model, g, 0))
    tok = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                            return_dict=True)["input_ids"]}
               for c in bench.load_chats(args)]
    sides = {"bare LLM.generate (one call)": lambda rep: bare(llm, prompts, args, False),
             "bare LLM.generate (one call, seed per prompt)": lambda rep: bare(llm, prompts, args, True)}
    for s in SHARDS:
        sides[f"rlaif vllm, shard_size {s}"] = lambda rep, s=s: rlaif_side(llm, args, rep, s, old=False)
        sides[f"old per-shard calls, shard_size {s}"] = lambda rep, s=s: rlaif_side(llm, args, rep, s, old=True)

    def fresh(fn):  # no side reuses another's prefill
        return lambda rep: (llm.reset_prefix_cache(), fn(rep))[1]

    bare(llm, prompts[:2], args, False)  # warm-up, untimed
    results = bench.interleave({k: fresh(f) for k, f in sides.items()}, args.reps, cpu=False)  # the engine runs in its own process
    out = bench.report(args, results, "bare LLM.generate (one call)")
    for s in SHARDS:
        print(f"rlaif (vllm) / bare at shard_size {s} = {out['ratio_vs_baseline'][f'rlaif vllm, shard_size {s}']:.3f} "
              f"(target >= 0.95); old per-shard: {out['ratio_vs_baseline'][f'old per-shard calls, shard_size {s}']:.3f}")
    return 0
