"""A scripted judge's reply as the real API returns it: text plus per-token logprobs for every token
(standard library only; shared by fake_openai_server.py, fake_batch_server.py and judges.py).

OpenAI's chat completions with `logprobs: true` give `choices[0].logprobs.content[i]` for every
reply token (`token`, `logprob`, `bytes`, `top_logprobs`), not for the first token alone
(platform.openai.com/docs/api-reference/chat/object). So a double that explains first must say
where its verdict is: here the rationale's first token is the kind of word a reader of the first
position mistakes for a verdict (issue 18: "B is shorter, but A ..." read as B; "2 small slips
aside ... Score: 8" read as 2; "The response is brief. Answer: Yes" read as P(yes) 0.18), and only
the verdict's own token carries the verdict's distribution.

    plan = reply_plan("checklist", "Yes", explain=True)
    text = content(plan)            # "The response is brief.\\nAnswer: Yes"
    api = api_logprobs(plan, 5)     # {"content": [{token, logprob, bytes, top_logprobs}, ...]}
"""
from __future__ import annotations

import math
import re

# A BPE-like split (close to tiktoken's on ASCII): a word with its leading space, one digit,
# a run of punctuation with its leading space, a newline, any other single whitespace character.
TOKEN = re.compile(r"\n| ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]+|\s")
FILLER = ["The", "Response", "Both", "Neither", "**", "I"]  # non-label tokens to pad top_logprobs
PREFIX = {"pairwise": "Verdict:", "score": "Score:", "checklist": "Answer:"}
GRADE_OF = {"A": "A>B", "B": "B>A", "tie": "A=B"}  # a binary verdict as the graded scale's mild form
# In a multi-token graded verdict each token has its own alternatives: no one position holds them all.
PART_ALTS = {"A": [("A", 0.8), ("B", 0.15)], "B": [("B", 0.8), ("A", 0.15)], ">": [(">", 0.6), (">>", 0.3), ("=", 0.08)],
             ">>": [(">>", 0.6), (">", 0.35)], "=": [("=", 0.7), (">", 0.2)]}

Plan = list[tuple[str, list[tuple[str, float]]]]  # each token with its alternatives, the chosen one first


def tokens(text: str) -> list[str]:
    out = TOKEN.findall(text)
    assert "".join(out) == text  # every character in exactly one token, as a real tokenizer
    return out


def top_candidates(kind: str, verdict: str) -> list[tuple[str, float]]:
    """(token, probability) at the verdict's position, most likely first, consistent with the verdict."""
    if kind == "pairwise":
        if verdict == "tie":
            cands = [("tie", 0.6), ("A", 0.2), ("B", 0.15)]
        else:
            loser = "B" if verdict == "A" else "A"
            cands = [(verdict, 0.8), (loser, 0.14), ("tie", 0.04)]
    elif kind == "checklist":
        cands = [(verdict, 0.88), ({"Yes": "No", "No": "Yes"}[verdict], 0.1)]
    else:
        s = int(verdict)
        probs = {s: 0.6, s - 1: 0.15, s + 1: 0.15, s - 2: 0.04, s + 2: 0.04}
        cands = sorted(((str(d), p) for d, p in probs.items() if 1 <= d <= 9), key=lambda t: -t[1])
    return _pad(cands)


def _pad(cands: list[tuple[str, float]]) -> list[tuple[str, float]]:
    base = max(1e-4, min(1.0 - sum(p for _, p in cands), cands[-1][1]))  # below every label, within the mass left
    seen = {t.strip() for t, _ in cands}
    return cands + [(tok, base * 0.5 ** (i + 2)) for i, tok in enumerate(FILLER) if tok not in seen]


def _plain(tok: str, p: float) -> list[tuple[str, float]]:
    return _pad([(tok, p)])


def rationale(kind: str, verdict: str) -> tuple[str, list[tuple[str, float]]]:
    """A short rationale and its first token's alternatives: a word that looks like another verdict."""
    if kind == "pairwise":
        win = verdict if verdict in ("A", "B", "tie") else {1: "A", 0: "tie", -1: "B"}[_sign(verdict)]
        if win == "tie":
            return "Both answer the question equally well.", _pad([("Both", 0.7), ("A", 0.12), ("B", 0.1)])
        lose = "B" if win == "A" else "A"
        return f"{lose} is shorter, but {win} answers the question.", _pad([(lose, 0.7), (win, 0.1)])
    if kind == "score":
        d = "2" if int(verdict) >= 5 else "8"
        return f"{d} small slips aside, the answer is sound.", top_candidates("score", d)
    other = {"Yes": "No", "No": "Yes"}[verdict]
    return "The response is brief.", _pad([("The", 0.7), (other, 0.15), (verdict, 0.032)])


def _sign(graded: str) -> int:
    return 1 if graded.startswith("[[A>") else -1 if graded.startswith("[[B>") else 0


def _lead(alts: list[tuple[str, float]], lead: str) -> list[tuple[str, float]]:
    return [(lead + t, p) for t, p in alts]


def reply_plan(kind: str, verdict: str, explain: bool = False, graded: bool = False, why: str | None = None,
               alts: list[tuple[str, float]] | None = None) -> Plan:
    """The reply's tokens with their alternatives. `verdict`: A/B/tie, a digit, Yes/No; with
    graded a pairwise verdict is written on the five-way scale ([[A>B]] for A, [[A=B]] for tie).
    `why` replaces the scripted rationale (its first token then has no label alternatives);
    `alts` the verdict token's alternatives (default top_candidates)."""
    if kind == "pairwise" and graded and not verdict.startswith("[["):
        verdict = f"[[{GRADE_OF[verdict]}]]"
    plan: Plan = []
    lead = ""
    if explain:
        text, first = rationale(kind, verdict) if why is None else (why, _plain(tokens(why)[0], 0.9))
        toks = tokens(text)
        plan.append((toks[0], first))
        plan += [(t, _plain(t, 0.9)) for t in toks[1:]]
        plan.append(("\n", _plain("\n", 0.95)))
        plan += [(t, _plain(t, 0.99)) for t in tokens(PREFIX[kind])]
        lead = " "
    vt = tokens(lead + verdict)
    if len(vt) == 1:
        plan.append((vt[0], _lead(alts or top_candidates(kind, verdict), lead)))
    else:  # graded: "[[", "A", ">", "B", "]]"
        plan += [(t, _pad(PART_ALTS.get(t.strip(), [(t, 0.97)]))) for t in vt]
    return plan


def content(plan: Plan) -> str:
    return "".join(t for t, _ in plan)


def api_logprobs(plan: Plan, n: int) -> dict:
    """`choices[0].logprobs` as the API sends it: every token, `n` alternatives each."""
    def entry(tok: str, p: float) -> dict:
        return {"token": tok, "logprob": math.log(p), "bytes": list(tok.encode("utf-8"))}

    return {"content": [{**entry(tok, alts[0][1]), "top_logprobs": [entry(t, p) for t, p in alts[:max(0, n)]]}
                        for tok, alts in plan], "refusal": None}


def positions(plan: Plan) -> list[tuple[str, dict[str, float]]]:
    """The plan as rlaif's Reply.top: each token with {alternative: logprob}."""
    return [(tok, {t: math.log(p) for t, p in alts}) for tok, alts in plan]
