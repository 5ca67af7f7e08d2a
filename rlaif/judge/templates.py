"""Judge templates: versioned files, candidate text fenced as data, strict verdict parsing.

A template's version is its name plus a hash of its file, so editing a template changes every
ledger key: an old verdict is never reused for a new prompt wording.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

HERE = Path(__file__).parent / "templates"
FENCE = re.compile(r"<<<|>>>")


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: str
    user: str


@lru_cache
def load(name: str) -> Template:
    path = HERE / f"{name}.yaml"
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    return Template(name, f"{name}@{hashlib.sha256(raw).hexdigest()[:10]}", data["system"], data["user"])


def template_for(kind: str) -> Template:
    return load("pairwise-v1" if kind == "pairwise" else "score-v1")


def fence(text: str) -> str:
    """Break fence markers inside data so a candidate cannot close its block and speak as the template."""
    return FENCE.sub(lambda m: " ".join(m.group(0)), text)


def conversation(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def render(kind: str, messages: list[dict], first: str, second: str | None = None) -> list[dict]:
    """Chat messages for one judge call; `first`/`second` are the texts in slots A/B (or R)."""
    t = template_for(kind)
    fields = {"conversation": fence(conversation(messages))}
    if kind == "pairwise":
        fields.update(response_a=fence(first), response_b=fence(second or ""))
    else:
        fields["response"] = fence(first)
    # One pass over the template only: braces inside candidate text are never expanded.
    user = re.sub(r"\{(" + "|".join(fields) + r")\}", lambda m: fields[m.group(1)], t.user)
    return [{"role": "system", "content": t.system}, {"role": "user", "content": user}]


PAIRWISE = re.compile(r"^\s*(?:verdict\s*[:=]\s*)?\**\s*\[?(A|B|tie)\]?\s*\**\s*[.!]?\s*$", re.IGNORECASE)
SCORE = re.compile(r"^\s*(?:score\s*[:=]\s*)?\**\s*([1-9])\s*\**\s*(?:/\s*9)?\s*[.!]?\s*$", re.IGNORECASE)


def parse_pairwise(text: str | None) -> str | None:
    """'A' | 'B' | 'tie' from the reply's last non-empty line, else None (the reply is invalid).

    Only the final structured verdict counts: "A or B" or a reply that trails off is invalid."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    m = PAIRWISE.match(lines[-1]) if lines else None
    if not m:
        return None
    v = m.group(1)
    return "tie" if v.lower() == "tie" else v.upper()


def parse_score(text: str | None) -> int | None:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    m = SCORE.match(lines[-1]) if lines else None
    return int(m.group(1)) if m else None


def label_probs(top: dict[str, float], labels: list[str]) -> dict[str, float] | None:
    """Normalised probabilities of the answer labels among the first token's top logprobs."""
    mass = {lab: 0.0 for lab in labels}
    for tok, lp in top.items():
        t = tok.strip()
        for lab in labels:
            if t.lower() == lab.lower():
                mass[lab] += math.exp(lp)
    total = sum(mass.values())
    return {k: v / total for k, v in mass.items()} if total > 0 else None


def p_first_slot(top: dict[str, float]) -> float | None:
    probs = label_probs(top, ["A", "B"])
    return probs["A"] if probs else None


def expected_score(top: dict[str, float]) -> float | None:
    """Logprob-weighted rubric score: E[s] over the digit tokens 1..9 (G-Eval style, Liu et al. 2023)."""
    probs = label_probs(top, [str(i) for i in range(1, 10)])
    return sum(int(k) * v for k, v in probs.items()) if probs else None
