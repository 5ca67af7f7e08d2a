"""Throughput of `rlaif generate` against a bare hand-written `model.generate` loop, same work.

    .venv/bin/python bench/generate.py [--n 4 --max-tokens 64 --reps 3 --out cpu.json]   # CPU, ~2-4 min
    .venv-vllm/bin/python bench/generate.py --backend vllm --enforce-eager --prompts-count 72   # bench/generate_vllm.py

Useful tokens are counted the same way on both sides: generated tokens up to and including the
first EOS. rlaif's side runs the real stage (fresh run_dir per repetition) and reads tokens and
timing.generate_s from its manifest; model load is excluded on both sides. Repetitions are
interleaved, their order rotated each repetition, so drift in a shared machine's load hits all sides alike.
Sampling makes token counts differ between runs: tok/s is what is compared.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: the stage's bar would garble our table
import torch  # noqa: E402

from generate_common import TEMPERATURE, TOP_K, TOP_P, interleave, load_chats, parse_args, report, rlaif_run  # noqa: E402


class BareHF:
    """The baseline: the ~30-line batched loop anyone would write by hand."""

    def __init__(self, args) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.args, self.chats = args, load_chats(args)
        self.tok = AutoTokenizer.from_pretrained(args.model, padding_side="left")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32  # what rlaif's dtype=auto picks
        self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(self.device).eval()
        gen_eos = self.model.generation_config.eos_token_id
        self.eos = {self.tok.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else min(self.eos)
        self._generate(self.chats[:1], max_new_tokens=4)  # warm-up, untimed: first-call costs hit neither side

    def _generate(self, chats, max_new_tokens):
        enc = self.tok.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_dict=True,
                                           return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=TEMPERATURE,
                                      top_p=TOP_P, top_k=TOP_K, num_return_sequences=self.args.n,
                                      eos_token_id=sorted(self.eos), pad_token_id=self.pad)
        return out[:, enc["input_ids"].shape[1]:].tolist()

    def __call__(self, rep: int) -> dict:
        torch.manual_seed(rep)
        bs, tokens, t0 = self.args.batch_size, 0, time.perf_counter()
        for i in range(0, len(self.chats), bs):
            rows = self._generate(self.chats[i:i + bs], self.args.max_tokens)
            self.tok.batch_decode(rows, skip_special_tokens=True)  # rlaif decodes too; keep the work equal
            for row in rows:  # useful tokens: up to and including the first EOS
                tokens += next((k + 1 for k, t in enumerate(row) if t in self.eos), len(row))
        return {"tokens": tokens, "seconds": round(time.perf_counter() - t0, 3)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.backend == "vllm":
        import generate_vllm  # sibling file; vLLM is imported only there (it never imports this file)

        return generate_vllm.main(args)
    bare = BareHF(args)
    results = interleave({"bare model.generate": bare, "rlaif generate": lambda r: rlaif_run(args, r, "transformers")},
                         args.reps)
    ratio = report(args, results, "bare model.generate")["ratio_vs_baseline"]["rlaif generate"]
    print(f"\nrlaif / bare = {ratio:.3f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
