"""Input tokens of judge calls for `rlaif plan`: the real templates rendered on real texts, counted
with the judge's own tokenizer where it is known (a local or reward model: its chat template too),
else tiktoken where installed, else ~4 characters a token (OpenAI's rule of thumb for English)."""
from __future__ import annotations

import random
from pathlib import Path

import polars as pl

# OpenAI's cookbook, "How to count tokens with tiktoken": each chat message costs ~3 tokens beyond its
# text, and every reply is primed with 3 more.
PER_MESSAGE, PER_REPLY = 3, 3
CHARS_PER_TOKEN = 4


class TokenCounter:
    def __init__(self, cfg) -> None:
        self.tok, self.enc = None, None
        j = cfg.judge
        if j.backend in ("local", "vllm", "reward_model"):
            folder = self._folder(cfg.model if j.model in (None, "policy") else j.model)
            if folder:
                from transformers import AutoTokenizer

                self.tok = AutoTokenizer.from_pretrained(folder)
                self.name = f"the judge's tokenizer ({Path(folder).name}, with its chat template)"
                return
        try:
            import tiktoken

            try:
                self.enc = tiktoken.encoding_for_model(j.model or "")
            except KeyError:
                self.enc = tiktoken.get_encoding("o200k_base")
            self.name = f"tiktoken {self.enc.name} (+{PER_MESSAGE} a message)"
        except ImportError:
            self.name = f"~{CHARS_PER_TOKEN} characters a token (tiktoken not installed; +{PER_MESSAGE} a message)"

    @staticmethod
    def _folder(name: str) -> str | None:
        from rlaif.models import demo_dir

        if name == "demo":
            return str(demo_dir()) if (demo_dir() / "tokenizer_config.json").exists() else None
        return name if Path(name).is_dir() else None

    def messages(self, msgs: list[dict]) -> int:
        if self.tok is not None:
            enc = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
            return len(enc["input_ids"])
        text = sum(self.text(m["content"]) for m in msgs)
        return text + PER_MESSAGE * len(msgs) + PER_REPLY

    def text(self, s: str) -> int:
        if self.tok is not None:
            return len(self.tok(s, add_special_tokens=False)["input_ids"])
        if self.enc is not None:
            return len(self.enc.encode(s, disallowed_special=()))
        return max(1, round(len(s) / CHARS_PER_TOKEN))


def _rendered(spec, kind: str, row: dict, other: str, item: str, critique: str) -> list[dict]:
    chat = row["messages"]
    if kind == "pairwise_turns":  # evaluation's per-turn call: both conversations, this row's history in each
        from rlaif.judge.templates import turn_spec, turns_text

        turn = sum(m["role"] == "user" for m in chat)
        asked = [m for m in chat if m["role"] != "assistant"]
        a, b = ([*chat, {"role": "assistant", "content": text}] for text in (row["response"], other))
        return turn_spec(spec, turn).render("pairwise", asked, turns_text(a), turns_text(b))
    if kind == "pairwise":
        return spec.render("pairwise", chat, row["response"], other)
    if kind == "checklist":
        return spec.render("checklist", chat, row["response"], question=item)
    if kind == "checklist_writer":
        return spec.render("checklist_writer", chat)
    if kind == "revision":
        return spec.render("revision", chat, row["response"], critique)
    return spec.render(kind if kind in ("score", "critique") else "score", chat, row["response"])


def input_tokens(cfg, kind: str, accepted: pl.DataFrame, counter: TokenCounter, sample: int,
                 critique_tokens: float = 0) -> float:
    """Mean input tokens of `kind` calls over a seeded sample of the round's candidates; a revision call
    carries its critique, stood in for by a text of `critique_tokens` tokens (measured, else the cap)."""
    from rlaif.judge.templates import build_spec

    spec = build_spec(cfg.judge)
    rows = accepted.to_dicts()
    if not rows:
        return 0.0
    rng = random.Random(cfg.seed)
    picks = rng.sample(rows, min(sample, len(rows)))
    items = [it.item for it in cfg.judge.items()] or ["?"]
    critique = "word " * round(critique_tokens)
    counts = []
    for i, row in enumerate(picks):
        if kind == "reward":
            counts.append(counter.messages(list(row["messages"]) + [{"role": "assistant", "content": row["response"]}]))
            continue
        other = picks[(i + 1) % len(picks)]["response"]
        counts.append(counter.messages(_rendered(spec, kind, row, other, items[i % len(items)], critique)))
    return sum(counts) / len(counts)
