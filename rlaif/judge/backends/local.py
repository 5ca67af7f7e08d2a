"""Local judge: the judge model in-process (transformers), verdicts read off the logits.

No text is parsed for plain verdicts: after the chat template's assistant prefix, the
log-likelihood of each answer label the call allows ("A"/"B", the digits 1-9, "Yes"/"No", or the
graded "[[A>>B]]" ... "[[B>>A]]") is computed, and the reply is the likeliest label, so every
call yields a verdict. Single-token labels need one forward pass per batch; multi-token labels
are scored by teacher forcing each label after the prompt (one sequence per label).
With judge.explain (or a checklist writer call) the model generates text greedily instead, and
the stage parses its final line like any API reply.
"""
from __future__ import annotations

import itertools
import time

from rlaif.judge.backends import Call, Reply
from rlaif.models import default_dtype, left_pad


class LocalJudge:
    def __init__(self, cfg, model: str, adapter: str | None = None, **_) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=default_dtype())
        if adapter:  # judge.model=policy: the round's policy is the model plus its LoRA adapter
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter)
        self.model = self.model.to(self.device).eval()
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def _ids(self, messages) -> list[int]:
        enc = self.tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])

    def _label_ids(self, label: str) -> list[int]:
        return self.tok.encode(label, add_special_tokens=False)

    def _logits_last(self, seqs: list[list[int]]):
        import torch

        ids, mask = left_pad(seqs, self.pad)
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        return torch.log_softmax(out.float(), dim=-1).cpu()

    def _label_scores(self, batch: list[Call], prompts: list[list[int]]) -> list[dict[str, float]]:
        """{label: log-likelihood of the label as the reply} for each call."""
        labels = [{lab: self._label_ids(lab) for lab in c.labels} for c in batch]
        if all(len(ids) == 1 for lab in labels for ids in lab.values()):
            logp = self._logits_last(prompts)[:, -1]
            return [{lab: float(row[ids[0]]) for lab, ids in lab_ids.items()} for row, lab_ids in zip(logp, labels)]
        seqs, where = [], []
        for i, (p, lab_ids) in enumerate(zip(prompts, labels)):
            for lab, ids in lab_ids.items():
                seqs.append(p + ids)
                where.append((i, lab, len(ids)))
        logp = self._logits_last(seqs)
        out: list[dict[str, float]] = [{} for _ in batch]
        for row, seq, (i, lab, n) in zip(logp, seqs, where):
            # left padded: the label's tokens are the last n positions, predicted one position earlier
            tgt = seq[-n:]
            out[i][lab] = float(sum(row[-n - 1 + t, tok] for t, tok in enumerate(tgt)))
        return out

    def _generate(self, batch: list[Call], prompts: list[list[int]]) -> list[tuple[str, str]]:
        import torch

        if any(c.temperature > 0 for c in batch):  # sampled calls: one at a time, each under its own seed
            return [self._sample(c, p) for c, p in zip(batch, prompts)]
        ids, mask = left_pad(prompts, self.pad)
        n = max(c.max_tokens for c in batch)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=n, do_sample=False, pad_token_id=self.pad)
        return [self._text(row) for row in out[:, ids.shape[1]:].cpu().tolist()]

    def _sample(self, call: Call, prompt: list[int]) -> tuple[str, str]:
        import torch

        ids = torch.tensor([prompt], device=self.device)
        torch.manual_seed(call.seed or 0)  # the global generator, seeded per call: reproducible per call
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=call.temperature, top_p=1.0, top_k=0,
                                      max_new_tokens=call.max_tokens, pad_token_id=self.pad)
        return self._text(out[0, ids.shape[1]:].cpu().tolist())

    def _text(self, row: list[int]) -> tuple[str, str]:
        stop = self.tok.eos_token_id in row
        row = row[:row.index(self.tok.eos_token_id)] if stop else row
        return self.tok.decode(row, skip_special_tokens=True), "stop" if stop else "length"

    def run(self, calls, on_reply) -> None:
        it = iter(calls)
        while batch := list(itertools.islice(it, self.cfg.batch_size)):
            # a batch may mix label calls (one forward, P(label)) with text calls (explained verdicts,
            # critiques, checklist writing): each part goes its own way, so a label call next to a
            # critique still gets its label probabilities
            is_text = [self.cfg.explain or not c.labels for c in batch]
            text = [c for c, t in zip(batch, is_text) if t]
            labels = [c for c, t in zip(batch, is_text) if not t]
            for part, fn in ((text, self._reply_text), (labels, self._reply_labels)):
                if part:
                    t0 = time.monotonic()
                    prompts = [self._ids(c.messages) for c in part]
                    fn(part, prompts, t0, on_reply)

    def _reply_text(self, batch, prompts, t0: float, on_reply) -> None:
        texts = self._generate(batch, prompts)
        dt = (time.monotonic() - t0) / len(batch)
        for call, p, (text, fin) in zip(batch, prompts, texts):
            on_reply(call, Reply(text=text, finish_reason=fin, input_tokens=len(p),
                                 output_tokens=len(self.tok.encode(text, add_special_tokens=False)), latency_s=dt))

    def _reply_labels(self, batch, prompts, t0: float, on_reply) -> None:
        scores = self._label_scores(batch, prompts)
        dt = (time.monotonic() - t0) / len(batch)
        for call, p, top in zip(batch, prompts, scores):
            label = max(top, key=top.get)  # the reply is one label: one position, every label its alternative
            on_reply(call, Reply(text=label, top=[(label, top)], finish_reason="stop",
                                 input_tokens=len(p), output_tokens=1, latency_s=dt))
