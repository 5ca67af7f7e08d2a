"""An in-process judge that implements the real backend contract (rlaif.judge.backends), for
testing stage semantics — explained, graded and checklist verdicts — without a model or a server.

It reads the fenced blocks of the rendered judge prompt, as a real judge would, and answers by a
rule a test can predict (with logprobs for every reply token, as the API gives them:
tests/judge_replies.py): the response with more numbered-list lines wins (graded "much better"
when it has at least 3 more), the longer one breaks a tie. Every call it answers is counted in
ScriptedJudge.calls, so a test can prove that a rerun made none. As a critic (pairs.source=revise) it
asks for a numbered list and revises into one (see revise_text for the markers a test can use).

    monkeypatch.setitem(backends.BACKENDS, "local", "judges:ScriptedJudge")
"""
from __future__ import annotations

import itertools
import re

from judge_replies import content, positions, reply_plan
from rlaif.judge.backends import Reply

BLOCK = re.compile(r"<<<BEGIN_DATA id=(\w+)>>>\n(.*?)\n<<<END_DATA id=\1>>>", re.S)
NUMBERED = re.compile(r"(?m)^\s*\d+[.)]\s")


def blocks(call) -> dict[str, str]:
    return dict(BLOCK.findall(call.messages[-1]["content"]))


def listiness(text: str) -> tuple[int, int]:
    return len(NUMBERED.findall(text)), len(text)


class ScriptedJudge:
    calls: list = []  # every call answered, across instances (reset by the tests)

    def __init__(self, cfg, model, **_):
        self.cfg = cfg

    def _pairwise(self, b: dict) -> str:
        la, lb = listiness(b["A"]), listiness(b["B"])
        if la == lb:
            slot, gap = "tie", 0
        else:
            slot, gap = ("A", la[0] - lb[0]) if la > lb else ("B", lb[0] - la[0])
        if self.cfg.verdicts == "graded":
            strong = gap >= 3
            v = {"A": "A>>B" if strong else "A>B", "B": "B>>A" if strong else "B>A", "tie": "A=B"}[slot]
            return f"[[{v}]]"
        return slot

    def answer(self, call) -> Reply:
        b = blocks(call)
        if call.kind in ("critique", "revision"):
            text, finish = revise_text(b)
            return Reply(text=text, finish_reason=finish)
        if call.kind == "checklist_writer":  # a per-prompt checklist, as RLCF writes one per instruction
            return Reply(text="Here is the checklist:\n- Is the answer a numbered list?\n- Is it polite?",
                         finish_reason="stop")
        explain, graded = self.cfg.explain, self.cfg.verdicts == "graded"
        if call.kind == "pairwise":  # explained: a rationale that names slot A, whatever the verdict is
            plan = reply_plan("pairwise", self._pairwise(b), explain, graded, why="Response A opens well; A is shorter.")
        elif call.kind == "checklist":
            yes = bool(NUMBERED.search(b["R"])) if "numbered" in call.messages[-1]["content"] else len(b["R"]) < 80
            p = 0.9 if yes else 0.2  # P(yes) at the answer's token
            plan = reply_plan("checklist", "Yes" if yes else "No", explain, why="It reads as asked.",
                              alts=[("Yes", p), ("No", 1 - p)] if yes else [("No", 1 - p), ("Yes", p)])
        else:
            n = listiness(b["R"])[0]
            plan = reply_plan("score", str(min(9, 1 + 2 * n)), explain, why=f"It has {n} list items.")
        # logprobs for every reply token, as the API returns them, in explain mode too (issue 18)
        return Reply(text=content(plan), top=positions(plan), finish_reason="stop")

    def run(self, calls, on_reply) -> None:
        for call in itertools.islice(calls, None):
            ScriptedJudge.calls.append(call)
            reply = self.answer(call)
            reply.input_tokens, reply.output_tokens = 10, 2
            on_reply(call, reply)


def revise_text(b: dict) -> tuple[str, str]:
    """(text, finish_reason) of a critique or revision of b["original"]. Markers in the original:
    MUTE: an empty critique; UNCHANGED: the revision is the original; RAMBLE: the revision is cut off;
    WORSEN: the revision is the original's first half (the judge prefers the original in both orders);
    ECHO: the revision comes in the prompt's data markers, then the reply rambles on to its cap.
    Otherwise the revision is the original as a numbered list with one more step, so it wins."""
    orig = b["original"]
    if "critique" not in b:
        return ("" if "MUTE" in orig else "Make it a numbered list of steps."), "stop"
    if "UNCHANGED" in orig:
        return orig, "stop"
    if "WORSEN" in orig:
        return orig[: len(orig) // 2], "stop"
    revised = f"1. {orig}\n2. Check that it worked."
    if "ECHO" in orig:
        return f"<<<BEGIN_DATA id=original>>\n{revised}\n<<<END_DATA id=original>>\nThe response is", "length"
    return revised, "length" if "RAMBLE" in orig else "stop"


def write_candidates(run_dir, texts: dict, finish: str = "stop"):
    """round-0/candidates/part-00000.parquet + candidates.manifest.json, as the generate stage leaves
    them: texts = {prompt_id: [response, ...]}; candidate ids are PROMPT-cI."""
    import polars as pl

    from rlaif.io import CANDIDATES_SCHEMA, write_json, write_parquet

    rows = [{"prompt_id": pid, "candidate_id": f"{pid}-c{i}", "round": 0,
             "messages": [{"role": "user", "content": f"Question {pid}: how do I reset my password?"}],
             "response": t, "num_tokens": len(t) // 4 + 1, "finish_reason": finish, "model": "policy",
             "adapter": None, "seed": 0} for pid, ts in texts.items() for i, t in enumerate(ts)]
    df = pl.DataFrame(rows, schema=CANDIDATES_SCHEMA)
    rdir = run_dir / "round-0"
    write_parquet(rdir / "candidates" / "part-00000.parquet", df, CANDIDATES_SCHEMA)
    write_json(rdir / "candidates.manifest.json", {"stage": "generate", "round": 0, "rows": len(df)})
    return df


def listy(n: int, words: int = 6) -> str:
    """An answer as a numbered list of n steps (n=0: the same content as prose)."""
    steps = [f"Open settings and choose option {i} " + " ".join(["then"] * words) for i in range(1, max(n, 1) + 1)]
    return "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) if n else " ".join(steps) + "."
