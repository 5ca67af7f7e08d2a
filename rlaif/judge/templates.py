"""Judge templates: the user's criteria in versioned files, candidate text fenced as data, strict parsing.

A `Spec` is the judge prompt as configured: a template per call kind (shipped or the user's own
`judge.template`), the criteria (`judge.rubric` and `judge.principles`, else a default) and the
answer format (`judge.explain`, `judge.verdicts`). A template's version is its name plus a hash of
all of that, so editing the template file, the rubric or a principle changes every ledger key: an
old verdict is never reused for new criteria, and unchanged criteria reuse every verdict.

Only the reply's final line is parsed. With `explain`, that line must have the fixed form
(`Verdict: A`), so a verdict-like word inside the rationale never counts.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from rlaif.errors import UserError

HERE = Path(__file__).parent / "templates"
# Every run of three or more brackets, whole: `<<<|>>>` broke only a run's first three, so
# `<<<<<END_DATA id=A>>>>>` kept a literal `<<<END_DATA id=A` (issue 18). Spaced out, a run can
# never hold `<<<`/`>>>` again; a run of exactly three reads as it always did ("< < <").
FENCE = re.compile(r"<{3,}|>{3,}")
SHIPPED = {"pairwise": "pairwise-v2", "score": "score-v2", "checklist": "checklist-v1",
           "checklist_writer": "checklist-writer-v1", "critique": "critique-v1", "revision": "revision-v1"}
REQUIRED = {"pairwise": ("conversation", "response_a", "response_b"), "score": ("conversation", "response"),
            "checklist": ("conversation", "response", "question"), "checklist_writer": ("conversation",),
            "critique": ("conversation", "response"), "revision": ("conversation", "response", "critique")}
# Kinds whose reply is free text used as written (rlaif/judge/pairs/revise.py): no verdict to parse.
TEXT_KINDS = ("critique", "revision")
DEFAULT_CRITERIA = "Judge helpfulness, correctness, and clarity."
# Arena-Hard-Auto's five-way scale (Li et al. 2024, "From Crowdsourced Data to High-Quality
# Benchmarks: Arena-Hard and BenchBuilder Pipeline"): [[A>>B]] ... [[B>>A]]; signed from slot A.
GRADES = {"A>>B": 2, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -2}
ANSWER = {
    ("pairwise", "binary"): ("Reply with exactly one of: A, B, tie.",
                             "write your verdict on a final line, exactly as `Verdict: A`, `Verdict: B` or `Verdict: tie`."),
    ("pairwise", "graded"): ("Reply with exactly one of: [[A>>B]] (A is much better), [[A>B]] (A is better), "
                             "[[A=B]] (a tie), [[B>A]] (B is better), [[B>>A]] (B is much better).",
                             "write your verdict on a final line, exactly as `Verdict: [[X]]` where X is one of "
                             "A>>B (A is much better), A>B, A=B (a tie), B>A, B>>A (B is much better)."),
    ("score", None): ("Reply with the score only: a single digit from 1 to 9.",
                      "write your score on a final line, exactly as `Score: N` with N a digit from 1 to 9."),
    ("checklist", None): ("Answer with Yes or No only.", "write your answer on a final line, exactly as "
                                                          "`Answer: Yes` or `Answer: No`."),
    ("checklist_writer", None): ("", ""),
    ("critique", None): ("", ""),
    ("revision", None): ("", ""),
}
EXPLAIN = "First explain your judgement in at most three short sentences. Then "


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    digest: str  # sha256 of the file it came from


LONG_RUN = re.compile(r"<{4,}|>{4,}")


def fence_tag(chat, *texts) -> str:
    """'' for ordinary text; '+fence2' when a fenced text holds a run of 4+ brackets, the only text the
    issue-18 fence renders differently. Added to such a call's ledger key, a verdict judged under the old,
    closable fence is never reused, while every other key (and its paid verdict) stays as it was."""
    every = [m.get("content") or "" for m in chat or ()] + [t or "" for t in texts]
    return "+fence2" if any(LONG_RUN.search(t) for t in every) else ""


def fence(text: str) -> str:
    """Break fence markers inside data so a candidate cannot close its block and speak as the template:
    every run of 3+ '<' or '>' is spaced out. Text without such a run is unchanged (so are its prompts)."""
    return FENCE.sub(lambda m: " ".join(m.group(0)), text)


def conversation(messages) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


# ------------------------------------------------------------------ the judged turn (issue 23, item 2)
# A chat with an assistant turn before its final user turn is multi-turn: its earlier turns are context and
# only the assistant's reply to the final user turn is judged (MT-Bench's multi-turn judge prompt shows
# turn 1 and asks to focus on the answer to the second question: Zheng et al. 2023, arXiv 2306.05685).
# The conversation field then holds two fenced sub-blocks, `history` and `final_user_turn` (and
# `judged_response` when the chat ends with the judged reply, as the meta-judge's does); their markers
# cannot be forged, since fence() breaks every `<<<` in data.
# A single-turn chat renders exactly as before, so its ledger key and paid verdict stay valid.
TURN_TAG = "+turns1"  # the multi-turn rendering's version, added to such calls' keys only (see turn_tag)


def split_turns(chat) -> tuple[list, dict, list] | None:
    """(history, final user turn, what follows it) for a multi-turn chat; None for a single-turn one."""
    chat = list(chat or ())
    last = max((i for i, m in enumerate(chat) if m.get("role") == "user"), default=None)
    if last is None or not any(m.get("role") == "assistant" for m in chat[:last]):
        return None
    return chat[:last], chat[last], chat[last + 1:]


def fit_history(history: list, max_tokens: int) -> tuple[list, int]:
    """(the turns kept, how many were dropped): whole turns from the oldest until the history fits
    max_tokens, estimated as characters / 3 like every judge input (rlaif/judge/candidates.py). System
    turns are kept: they frame the whole conversation."""
    kept = list(history)
    dropped = 0
    while len(conversation(kept)) / 3 > max_tokens:
        i = next((i for i, m in enumerate(kept) if m.get("role") != "system"), None)
        if i is None:
            break
        del kept[i]
        dropped += 1
    return kept, dropped


def _block(name: str, messages) -> str:
    return f"<<<BEGIN_DATA id={name}>>>\n{fence(conversation(messages))}\n<<<END_DATA id={name}>>>"


def turns_field(history: list, final: dict, after: list, max_tokens: int) -> str:
    """The conversation field of a multi-turn chat: the history (oldest turns dropped to fit, with a
    marker that counts them), then the final user turn, then the judged reply if the chat holds it."""
    kept, dropped = fit_history(history, max_tokens)
    parts = [f"[{dropped} earlier turn{'s' if dropped != 1 else ''} omitted]"] if dropped else []
    parts += [_block("history", kept)] if kept else []
    parts += [_block("final_user_turn", [final])] + ([_block("judged_response", after)] if after else [])
    return "\n".join(parts)


def judged_note(kind: str, after: list) -> str:
    """What a multi-turn call judges, in words: said outside the data, before the template's own text."""
    head = ("This conversation has several turns. Its earlier turns (data block `history`) are context only: "
            "the assistant turns there are not judged. ")
    if after:
        return head + ("The judged response is the assistant's reply to the final user turn (data block "
                       "`final_user_turn`), shown after it (data block `judged_response`).")
    if kind == "checklist_writer":
        return head + ("Write the checklist for the assistant's reply to the final user turn (data block "
                       "`final_user_turn`) only.")
    what = {"pairwise": "The two responses judged are each", "critique": "The response reviewed is",
            "revision": "The response to revise is"}.get(kind, "The response judged is")
    return head + f"{what} the assistant's reply to the final user turn (data block `final_user_turn`) only."


# ------------------------------------------------------------------ per-turn comparison (issue 23, item 4)
# Evaluation of played conversations compares the policy's and the SFT model's answers at user turn j, each in
# its OWN conversation (their earlier answers differ): MT-Bench's pair-v2-multi-turn shows both assistants'
# whole conversations and tells the judge which turn to compare (Zheng et al. 2023, arXiv 2306.05685). A
# per-turn spec (turn_spec) renders pairwise calls with pairwise-turns-v1.yaml; the two texts of such a call
# are the conversations themselves (turns_text), so the ledger keys them whole: never the key of a
# single-conversation call, and the same key on a rerun.
TURNS_TEMPLATE = "pairwise-turns-v1"


def turns_text(messages) -> str:
    """One assistant's conversation through the judged turn (its answer last), as a per-turn call's text."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def turn_spec(spec: Spec, turn: int) -> Spec:
    """The spec whose pairwise calls compare two conversations at user turn `turn`: the shipped per-turn
    template (a judge.template of the user's is for single conversations), the same criteria and labels."""
    t = _read_template(HERE / f"{TURNS_TEMPLATE}.yaml", "template")
    return replace(spec, templates={**spec.templates, "pairwise": Template(TURNS_TEMPLATE, t["system"], t["user"],
                                                                           t["digest"])}, judged_turn=turn)


def played_field(text: str, max_tokens: int) -> str:
    """A conversation block's body: every message with its role and user turn number, fenced as data; the
    turns before the judged user turn cut from the oldest to max_tokens (fit_history), the cut counted."""
    chat = json.loads(text) if text else []
    last = max((i for i, m in enumerate(chat) if m["role"] == "user"), default=0)
    cut = fit_history(chat[:last], max_tokens)[1]  # the oldest non-system messages before the judged user turn
    head = [f"system: {fence(m['content'])}" for m in chat if m["role"] == "system"]
    head += [f"[{cut} earlier turn{'s' if cut != 1 else ''} omitted]"] if cut else []
    body, n, skipped = [], 0, 0
    for i, m in enumerate(chat):
        n += m["role"] == "user"
        if m["role"] == "system":
            continue
        if i < last and skipped < cut:  # one of the turns fit_history dropped
            skipped += 1
            continue
        body.append(f"{m['role']} (turn {n}): {fence(m['content'])}")
    return "\n\n".join(head + body)


def _read_template(path: Path, key: str) -> dict:
    try:
        raw = path.read_bytes()
    except OSError:
        raise UserError(f"{key}: template file {path} not found") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise UserError(f"{key}: {path}: not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict) or not isinstance(data.get("system"), str) or not isinstance(data.get("user"), str):
        raise UserError(f"{key}: {path}: a template needs two text fields, system and user")
    return {**data, "digest": hashlib.sha256(raw).hexdigest()}


def _fields(t: dict) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", t["system"] + t["user"]))


def user_template(path: str) -> tuple[str, Template]:
    """judge.template: (kind, Template). The kind is what its placeholders say it judges."""
    t = _read_template(Path(path), "judge.template")
    f = _fields(t)
    kind = ("pairwise" if {"response_a", "response_b"} & f else "checklist" if "question" in f
            else "revision" if "critique" in f else "score" if "response" in f else None)
    if kind is None:
        raise UserError(f"judge.template: {path}: no response placeholder: use {{response_a}} and {{response_b}} "
                        "(pairwise), {response} (score) or {response} and {question} (checklist)")
    missing = [p for p in REQUIRED[kind] if p not in f]
    if missing:
        raise UserError(f"judge.template: {path}: a {kind} template needs the placeholder(s) "
                        + ", ".join("{" + m + "}" for m in missing))
    return kind, Template(Path(path).stem, t["system"], t["user"], t["digest"])


def shipped(kind: str) -> Template:
    t = _read_template(HERE / f"{SHIPPED[kind]}.yaml", "template")
    return Template(SHIPPED[kind], t["system"], t["user"], t["digest"])


def read_rubric(value: str | None) -> tuple[str | None, str]:
    """judge.rubric: (text, where it came from). A value that names a file is read from it."""
    if value is None:
        return None, ""
    looks_like_path = "\n" not in value and (value.endswith((".md", ".txt", ".markdown")) or Path(value).is_file())
    if looks_like_path:
        path = Path(value)
        if not path.is_file():
            raise UserError(f"judge.rubric: file {path} not found (give inline text, or a path to a .txt/.md file)")
        text, where = path.read_text(encoding="utf-8", errors="replace"), str(path)
    else:
        text, where = value, "inline"
    if not text.strip():
        raise UserError(f"judge.rubric: {'file ' + where if where != 'inline' else 'inline text'} is empty")
    return text.strip(), where


def criteria_text(rubric: str | None, principles: list[str]) -> str:
    if not rubric and not principles:
        return DEFAULT_CRITERIA
    parts = []
    if rubric:
        parts.append("What makes a response better (the user's rubric):\n" + rubric)
    if principles:
        parts.append("Principles, in order:\n" + "\n".join(f"{i}. {p.strip()}" for i, p in enumerate(principles, 1)))
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Spec:
    """The judge prompt as configured; `version(kind)` goes into every ledger key."""
    templates: dict  # kind -> Template
    criteria: str
    explain: bool
    verdicts: str  # binary | graded
    rubric_source: str  # "inline", a file path, or "" (no rubric)
    principles: tuple = ()
    max_history_tokens: int = 2048  # judge.max_history_tokens: not in version(); turn_tag() keys what it changes
    judged_turn: int = 0  # > 0: a per-turn spec (turn_spec): pairwise compares two conversations at this user turn

    @property
    def rubric_id(self) -> dict:
        """What report.md and judge-report.json name: a hash of the criteria and their first line."""
        first = next((ln.strip() for ln in self.criteria.splitlines() if ln.strip()), "")
        if self.rubric_source:
            first = next((ln.strip(" #") for ln in self.criteria.splitlines()[1:] if ln.strip()), first)
        return {"sha256": hashlib.sha256(self.criteria.encode()).hexdigest()[:12], "first_line": first[:120],
                "source": self.rubric_source or ("principles" if self.principles else "default"),
                "principles": len(self.principles)}

    def answer_format(self, kind: str) -> str:
        short, final = ANSWER[(kind, self.verdicts if kind == "pairwise" else None)]
        return EXPLAIN + final if self.explain and final else short

    def version(self, kind: str) -> str:
        t = self.templates[kind]
        body = [t.digest, self.criteria, self.answer_format(kind)]
        if self.judged_turn and kind == "pairwise":  # the turn asked about, and the history budget that cuts both
            body += [self.judged_turn, self.max_history_tokens]
        return f"{t.name}@{hashlib.sha256(repr(body).encode()).hexdigest()[:10]}"

    def render(self, kind: str, chat, first: str = "", second: str | None = None,
               question: str | None = None) -> list[dict]:
        """Chat messages for one judge call; `first`/`second` are the texts in slots A/B (or R)."""
        t = self.templates[kind]
        per_turn = bool(self.judged_turn) and kind == "pairwise"
        turns = None if per_turn else split_turns(chat)
        convo = fence(conversation(chat)) if turns is None else turns_field(*turns, self.max_history_tokens)
        fields = {"conversation": convo, "criteria": self.criteria, "answer_format": self.answer_format(kind)}
        if per_turn:  # first/second: each assistant's whole conversation (turns_text), in slots A and B
            fields.update(conversation_a=played_field(first, self.max_history_tokens),
                          conversation_b=played_field(second or "", self.max_history_tokens), turn=str(self.judged_turn))
        elif kind == "pairwise":
            fields.update(response_a=fence(first), response_b=fence(second or ""))
        elif kind in ("score", "checklist", "critique", "revision"):
            fields["response"] = fence(first)
        if kind == "checklist":
            fields["question"] = fence(question or "")
        if kind == "revision":  # the critic's own critique: model text, so fenced as data too
            fields["critique"] = fence(second or "")
        # One pass over the template only: braces inside candidate text are never expanded.
        pat = re.compile(r"\{(" + "|".join(fields) + r")\}")
        system, user = (pat.sub(lambda m: fields[m.group(1)], s) for s in (t.system, t.user))
        # A user's template may leave the criteria or the answer format out; they are always said.
        if "{criteria}" not in t.system + t.user:
            system += "\n" + self.criteria
        if "{answer_format}" not in t.system + t.user and fields["answer_format"]:
            user += "\n\n" + fields["answer_format"]
        if turns is not None:
            user = judged_note(kind, turns[2]) + "\n\n" + user
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def turn_tag(self, chat) -> str:
        """'' for a single-turn chat (rendered as always, so its key and paid verdict stand); TURN_TAG for a
        multi-turn one, plus how many turns were cut when the history is over max_history_tokens. Beside
        fence_tag in a call's key: a verdict on the old one-blob rendering is never reused."""
        turns = split_turns(chat)
        if turns is None:
            return ""
        dropped = fit_history(turns[0], self.max_history_tokens)[1]
        return TURN_TAG + (f"-cut{dropped}" if dropped else "")

    def labels(self, kind: str) -> tuple:
        """The answers a logit-reading backend chooses among (its reply is one of these)."""
        if kind == "pairwise":
            return tuple(f"[[{g}]]" for g in GRADES) if self.verdicts == "graded" else ("A", "B")
        return tuple(str(i) for i in range(1, 10)) if kind == "score" else ("Yes", "No")


def kind_template(path: str, kind: str, key: str) -> Template:
    """A user's template file for one named kind (revise.critique_template, revise.revision_template)."""
    t = _read_template(Path(path), key)
    missing = [p for p in REQUIRED[kind] if p not in _fields(t)]
    if missing:
        raise UserError(f"{key}: {path}: a {kind} template needs the placeholder(s) "
                        + ", ".join("{" + m + "}" for m in missing))
    return Template(Path(path).stem, t["system"], t["user"], t["digest"])


def principle_spec(spec: Spec, principle: str) -> Spec:
    """The spec with one principle as its whole criteria: a pair's critique, revision and confirmation
    are all under that principle alone (Bai et al. 2022, arXiv 2212.08073, sec. 3.1). The principle
    is in the template version, so in every such call's ledger key."""
    return replace(spec, criteria=f"The principle: {principle.strip()}", rubric_source="", principles=(principle,))


def build_spec(cfg) -> Spec:
    """Spec from a JudgeConfig; every bad input is one line naming the key and the file."""
    rubric, source = read_rubric(cfg.rubric)
    principles = [p for p in cfg.principles]
    for i, p in enumerate(principles):
        if not p.strip():
            raise UserError(f"judge.principles[{i}]: empty principle")
    templates = {k: shipped(k) for k in SHIPPED}
    if cfg.template:
        kind, t = user_template(cfg.template)
        templates[kind] = t
    return Spec(templates, criteria_text(rubric, principles), cfg.explain, cfg.verdicts, source, tuple(principles),
                cfg.max_history_tokens)


# ------------------------------------------------------------------ parsing the final line

VERDICT_PREFIX = r"^\s*\**\s*{word}\s*[:=]\s*\**\s*"
PAIR = r"\[?(A|B|tie)\]?"
GRADED = r"\[\[\s*(A\s*>>\s*B|A\s*>\s*B|A\s*=\s*B|B\s*>\s*A|B\s*>>\s*A)\s*\]\]"
SCORE = r"([1-9])\s*\**\s*(?:/\s*9)?"
YESNO = r"(yes|no)"
TAIL = r"\s*\**\s*[.!]?\s*$"
WORD = {"pairwise": "verdict", "score": "score", "checklist": "answer"}


def _final(text: str | None) -> tuple[str | None, int, str]:
    """(last non-empty line, its offset in text, the lines before it as the rationale)."""
    lines, at = [], 0
    for piece in (text or "").splitlines(keepends=True):
        if piece.strip():
            lines.append((piece.splitlines()[0], at))
        at += len(piece)
    if not lines:
        return None, 0, ""
    return lines[-1][0], lines[-1][1], "\n".join(ln for ln, _ in lines[:-1]).strip()


# A reply constrained by OpenAI structured outputs (rlaif/judge/constrain.py json_schema): the whole reply is
# one JSON object holding the label. Read only without explain (explained replies are never constrained).
JSON_VERDICT = re.compile(r'\s*\{\s*"verdict"\s*:\s*"((?:[^"\\]|\\.)*)"\s*\}\s*')


def _verdict_line(text: str | None, explain: bool) -> tuple[str | None, int | None, str]:
    """What the verdict is read from: (line, its offset in text or None when no offset maps it, rationale).
    The reply's last non-empty line, or the label inside a structured-output reply {"verdict": "..."}."""
    m = None if explain else JSON_VERDICT.fullmatch(text or "")
    if m is None:
        return _final(text)
    try:
        label = json.loads(f'"{m.group(1)}"')
    except ValueError:
        return None, None, ""
    return label, m.start(1) if label == m.group(1) else None, ""  # an escaped label: no offsets to map


def _match(kind: str, line: str | None, explain: bool, graded: bool):
    body = {"pairwise": GRADED if graded else PAIR, "score": SCORE, "checklist": YESNO}[kind]
    prefix = VERDICT_PREFIX.format(word=WORD[kind])
    pat = prefix + body if explain else f"(?:{prefix})?" + r"\**\s*" + body
    return re.match(pat + TAIL, line or "", re.IGNORECASE)


def parse(kind: str, text: str | None, explain: bool = False, graded: bool = False):
    """(value, rationale) from the reply's last non-empty line; value None means invalid.

    pairwise -> "A" | "B" | "tie" (binary) or a GRADES key (graded); score -> 1..9; checklist ->
    "yes" | "no". With explain the line must carry its prefix ("Verdict:", "Score:", "Answer:");
    without, the prefix is optional, and a structured-output reply {"verdict": "A"} is read as its label.
    "A or B", or a reply that trails off, is invalid."""
    line, _, rationale = _verdict_line(text, explain)
    m = _match(kind, line, explain, graded)
    if not m:
        return None, rationale
    v = m.group(1)
    if kind == "score":
        return int(v), rationale
    if kind == "checklist":
        return v.lower(), rationale
    if graded:
        return re.sub(r"\s+", "", v).upper(), rationale
    return ("tie" if v.lower() == "tie" else v.upper()), rationale


def parse_checklist_items(text: str | None) -> list[str]:
    """A checklist writer's reply: its '- ' lines, at most 8."""
    items = [ln.strip()[2:].strip() for ln in (text or "").splitlines() if ln.strip().startswith(("- ", "* "))]
    return [i for i in items if i][:8]


def verdict_span(kind: str, text: str | None, explain: bool = False, graded: bool = False) -> tuple[int, int] | None:
    """Where the parsed verdict stands in the reply: (start, end) character offsets, or None when
    the reply has no valid verdict. Graded: the whole "[[A>B]]", which is what a label names."""
    line, at, _ = _verdict_line(text, explain)
    m = _match(kind, line, explain, graded)
    if not m or at is None:
        return None
    start, end = m.span(1)
    if graded:
        start, end = line.rindex("[[", 0, start), line.index("]]", end) + 2
    return at + start, at + end


def _token_spans(raw: bytes, tokens: list[str]):
    """Each token's (start, end) byte offsets in the reply, or None where the tokens do not spell it.
    A token may come without the leading space the text has (SentencePiece-style detokenisers). Tokens
    after the whole text is spelled are the stop token the text leaves out (vLLM lists `<|im_end|>` in
    logprobs.content, not in message.content): empty spans at the end."""
    pos, out = 0, []
    for tok in tokens:
        if pos == len(raw) and raw:
            out.append((pos, pos))
            continue
        b = tok.encode("utf-8", "surrogateescape")
        if not raw.startswith(b, pos):
            while pos < len(raw) and raw[pos:pos + 1].isspace():
                pos += 1
            b = b.strip()
            if not b or not raw.startswith(b, pos):
                return None
        out.append((pos, pos + len(b)))
        pos += len(b)
    return out


def verdict_top(kind: str, text: str | None, positions, explain: bool = False,
                graded: bool = False) -> dict[str, float] | None:
    """The alternatives {token: logprob} at the reply's verdict token, or None.

    `positions` is Reply.top: every reply token in order with its alternatives (OpenAI chat
    completions return logprobs for the whole reply: choices[0].logprobs.content[i].top_logprobs;
    a local judge gives one position, its label, scored against the other labels). With a rationale
    first, the first token is not the verdict (issue 18: "The response is brief.\nAnswer: Yes" read
    there gave P(yes) 0.18). Only the one token that holds the whole parsed verdict counts: a verdict
    spread over several tokens ("[[", "A", ">", "B", "]]"), a token with more in it ("Yes."), or tokens
    that do not spell the reply give None, never another position's numbers."""
    span = verdict_span(kind, text, explain, graded) if positions else None
    if span is None:
        return None
    try:  # offsets in bytes: a token may hold part of a character (kept as surrogate escapes)
        lo = len(text[:span[0]].encode("utf-8", "surrogateescape"))
        hi = lo + len(text[span[0]:span[1]].encode("utf-8", "surrogateescape"))
        spans = _token_spans(text.encode("utf-8", "surrogateescape"), [tok for tok, _ in positions])
    except UnicodeEncodeError:  # a lone surrogate in the text itself: nothing can be aligned
        return None
    for (start, end), (tok, alts) in zip(spans or (), positions):
        if end <= lo:
            continue
        whole = start <= lo and end >= hi and tok.strip().lower() == text[span[0]:span[1]].lower()
        return dict(alts) if whole else None
    return None


def label_probs(top: dict[str, float], labels) -> dict[str, float] | None:
    """Normalised probabilities of the answer labels among one position's top logprobs (the verdict's:
    see verdict_top)."""
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


def expected_grade(top: dict[str, float]) -> float | None:
    """E[grade] (slot A's view) when the backend scored every graded label (local judge)."""
    probs = label_probs(top, [f"[[{g}]]" for g in GRADES])
    return sum(GRADES[k[2:-2]] * v for k, v in probs.items()) if probs else None


def p_yes(top: dict[str, float]) -> float | None:
    probs = label_probs(top, ["Yes", "No"])
    return probs["Yes"] if probs else None


def expected_score(top: dict[str, float]) -> float | None:
    """Logprob-weighted rubric score: E[s] over the digit tokens 1..9 (G-Eval style, Liu et al. 2023)."""
    probs = label_probs(top, [str(i) for i in range(1, 10)])
    return sum(int(k) * v for k, v in probs.items()) if probs else None
