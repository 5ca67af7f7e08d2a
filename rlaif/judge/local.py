"""Local judge: the judge model in-process (transformers), verdict from next-token probabilities.

No text is parsed: after the chat template's assistant prefix, the probabilities of the answer
labels ("A"/"B", or the digits 1-9) are read off the logits, so every call yields a verdict.
"""
from __future__ import annotations

import time

from rlaif.config import JudgeConfig
from rlaif.judge.backends import Call, Reply
from rlaif.models import default_dtype, left_pad

PAIR_LABELS = ["A", "B"]
SCORE_LABELS = [str(i) for i in range(1, 10)]


class LocalJudge:
    def __init__(self, cfg: JudgeConfig, model: str, on_retry=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=default_dtype()).to(self.device).eval()
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.label_ids = {lab: self._label_id(lab) for lab in PAIR_LABELS + SCORE_LABELS}

    def _label_id(self, label: str) -> int:
        ids = self.tok.encode(label, add_special_tokens=False)
        return ids[0]  # single-character labels are one token in every tokenizer we target

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self._ids(messages))

    def _ids(self, messages) -> list[int]:
        enc = self.tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])

    def _forward(self, calls: list[Call]):
        import torch

        seqs = [self._ids(c.messages) for c in calls]
        ids, mask = left_pad(seqs, self.pad)
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1).cpu(), [len(s) for s in seqs]

    def run(self, calls: list[Call], on_reply, admit=lambda c: True) -> None:
        bs = self.cfg.batch_size
        for i in range(0, len(calls), bs):
            batch = [c for c in calls[i:i + bs] if admit(c)]
            if not batch:
                continue
            t0 = time.monotonic()
            logp, lengths = self._forward(batch)
            dt = (time.monotonic() - t0) / len(batch)
            for row, call, n_in in zip(logp, batch, lengths):
                labels = PAIR_LABELS if call.kind == "pairwise" else SCORE_LABELS
                top = {lab: float(row[self.label_ids[lab]]) for lab in labels}
                best = max(top, key=top.get)
                on_reply(call, Reply(text=best, top=top, finish_reason="stop", input_tokens=n_in,
                                     output_tokens=1, latency_s=dt))
