"""Sending judge calls: the ledger first, the budget, the backend, and one ledger row per reply.

The Runner owns what every backend shares: a key with a stored reply is never sent again; calls
are handed to the backend through an iterator that stops when judge.max_calls or
judge.max_cost_usd would be passed; each reply becomes a ledger row (`interpret`) in its own
transaction as soon as it lands. The caps are ledger-wide: each admission is checked against the
ledger's spend and every call in flight at that moment, this session's, another session's (a
separate revise.critic) or another process's, in-flight calls at their estimated price
(Ledger.reserve, rlaif/judge/ledger.py), never against a total read when the session opened.

What an admission counts a call at (issue 21): a live call at its worst case (the whole reply cap,
or max_completion_tokens for a reasoning model). Live calls are admitted one at a time while
replies land, so each reservation is replaced by the billed cost seconds later and the worst case
costs almost nothing. A Batch API call is admitted with its whole batch before anything is billed,
and a submitted batch's items cannot be stopped one by one, so the worst case would admit a
fraction of what the budget pays for and the rest would cost another 24-hour window. A batch call
is therefore admitted at its EXPECTED cost (`_expected`): the mean output tokens of this judge's
earlier replies on the same template version when the ledger holds at least MIN_MEASURED of them,
the reply cap otherwise; the basis is printed once and kept in `admission` (judge-report.json).
The hard cap still holds on what the ledger records: once recorded spend plus what is in flight
reaches judge.max_cost_usd, nothing more is admitted. A batch may overshoot by its estimate's error.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
import time

from rlaif.judge import templates as T
from rlaif.judge.backends import Call, Reply, load_judge
from rlaif.judge.ledger import Ledger, owner_id

# Replies of one judge on one template version needed before their mean output tokens stand for the
# next calls' (a batch's admission); below it the reply cap. 20: a mean of 20 short verdicts is
# within a few tokens; a reasoning judge's spread is wider, but its cap (max_completion_tokens) is
# what makes the worst case unusable there.
MIN_MEASURED = 20
# Live calls are read from the plan, checked against the ledger and rendered this many at a time: memory
# holds one chunk and the calls in flight, not the round (issue 22, item 5). One done_keys query per chunk.
CHUNK = 2048


class Runner:
    """Sends the calls the ledger does not have yet, within the budget, and records each reply."""

    def __init__(self, cfg, ledger: Ledger, model: str, spec: T.Spec, identity: dict, judge_id: str) -> None:
        from rlaif.errors import UserError

        self.cfg, self.j, self.ledger, self.model, self.spec, self.identity, self.judge_id = \
            cfg, cfg.judge, ledger, model, spec, identity, judge_id
        self.live_price = self.j.prices.get(model, (0.0, 0.0)) if self.j.backend == "openai" else (0.0, 0.0)
        self.batch = self.j.backend == "openai" and self.j.mode_api == "batch"
        # The Batch API bills at a discount (OpenAI: 50%); budgets and the ledger use what is billed.
        self.price = tuple(p * self.j.batch_discount for p in self.live_price) if self.batch else self.live_price
        if self.j.backend == "openai" and self.j.max_cost_usd is not None and model not in self.j.prices:
            raise UserError(f"judge.prices: no price for {model!r}, so judge.max_cost_usd cannot be enforced")
        self.owner = owner_id()  # this Runner's reservations in the ledger
        # how the caps are named in a stop message (revise.critic_session renames an inherited one)
        self.cap_names = {"max_calls": "judge.max_calls", "max_cost_usd": "judge.max_cost_usd"}
        if self.capped:
            ledger.sweep()  # calls in flight of a process that was killed are no longer in flight
        self.backend = None
        self.adapter: str | None = None  # judge.model=policy after round 0: the adapter the judge loads
        self.stopped: str | None = None
        self.last_error: str | None = None
        self.stats = {"calls_made": 0, "retries": 0, "errors": 0, "invalid": 0, "tokens": 0, "seconds": 0.0}
        self.bar = None
        self.submit_only = False  # rlaif judge --submit-only: the batch backend submits and returns
        self.deferred = 0  # calls in batches submitted and not collected yet (submit-only)
        self.admission: dict[str, dict] = {}  # template version -> the batch admission basis (_expected)
        self.left: dict | None = None  # calls of the phase not admitted when a cap stopped it, and their cost
        self._committed: set[str] = set()  # keys in batches already uploaded or submitted
        self._held: set[str] = set()  # of those, keys whose cost a batch holds in the ledger already
        self._flight: set[str] = set()  # keys handed to the backend and not answered yet
        self._skipped = 0  # calls of the current execute found in the ledger (or repeated): not sent
        self._shown = 0.0  # when the progress line's figures were last refreshed
        self.worker = False  # a client process of judge.processes (rlaif/judge/workers.py): sends its share itself

    def _cap_tokens(self, call: Call) -> int:
        # the style that will answer: under api_style=auto the backend knows it (by model name, or
        # after a switch); a reasoning reply may use all of max_completion_tokens
        style = getattr(self.backend, "style", None) or self.j.api_style
        if style == "auto" and self.j.backend == "openai":
            from rlaif.judge.backends.openai_chat import start_style

            style = start_style(self.j, self.model)
        return self.j.max_completion_tokens if style == "reasoning" else call.max_tokens

    def _estimate(self, call: Call) -> float:
        """A call's worst case: its input estimate and the whole reply cap."""
        return (call.est_input_tokens * self.price[0] + self._cap_tokens(call) * self.price[1]) / 1e6

    def _expected(self, call: Call) -> float:
        """A batch call's expected cost (see the module docstring); the basis is chosen once per
        template version, from the ledger as it stands then, and stated once."""
        version = call.version or spec_version(self.spec, call.kind)
        b = self.admission.get(version)
        if b is None:
            cap = self._cap_tokens(call)
            n, mean = self.ledger.output_stats(self.judge_id, version)
            measured = n >= MIN_MEASURED
            b = self.admission[version] = {
                "basis": "measured" if measured else "cap", "expected_output_tokens": round(mean, 2) if measured
                else cap, "measured_replies": n, "reply_cap": cap, "admitted_calls": 0, "expected_cost_usd": 0.0}
            why = (f"mean of {n} earlier replies of this judge" if measured else
                   f"the reply cap: {n} earlier replies of this judge, {MIN_MEASURED} needed to measure")
            print(f"judge: batch admission ({version}): {b['expected_output_tokens']:g} output tokens expected "
                  f"per call ({why})", file=sys.stderr)
        return (call.est_input_tokens * self.price[0] + b["expected_output_tokens"] * self.price[1]) / 1e6

    def _admission_cost(self, call: Call) -> float:
        return self._expected(call) if self.batch else self._estimate(call)

    @property
    def capped(self) -> bool:
        return self.j.max_calls is not None or self.j.max_cost_usd is not None

    @property
    def calls(self) -> int:
        """Paid calls in the whole ledger, whoever made them (the caps count them all)."""
        return self.ledger.spent()[0]

    @property
    def cost(self) -> float:
        """Dollars spent over the whole ledger, whoever spent them."""
        return self.ledger.spent()[1]

    def admit(self, call: Call) -> bool:
        if call.key in self._committed:  # in a batch already sent: paid for whatever the cap says now
            if self.capped and call.key not in self._held:
                self.ledger.reserve(call.key, self.owner, self._admission_cost(call), None, None, force=True)
            return True
        if self.stopped:
            return False
        if not self.capped:
            return True
        est = self._admission_cost(call)
        over = self.ledger.reserve(call.key, self.owner, est, self.j.max_calls, self.j.max_cost_usd)
        if over and self.ledger.sweep():  # room held by a killed process's calls: try once more
            over = self.ledger.reserve(call.key, self.owner, est, self.j.max_calls, self.j.max_cost_usd)
        if over:
            self.stopped = f"{self.cap_names[over]}={getattr(self.j, over):g} reached"
        elif self.batch:
            b = self.admission[call.version or spec_version(self.spec, call.kind)]
            b["admitted_calls"] += 1
            b["expected_cost_usd"] += est
        return not over

    def _admitted(self, todo):
        """The iterator a backend pulls from: it ends where the budget does. A batch backend pulls
        every call at once, so a batch larger than the budget is cut here: only what fits is sent."""
        for call in todo:
            if not self.admit(call):  # the calls not sent, counted and priced for the stop message, one at a time
                n, cost = 1, self._admission_cost(call)
                for c in todo:
                    n, cost = n + 1, cost + self._admission_cost(c)
                self.left = {"calls": n, "cost_usd": cost, "basis": "expected" if self.batch else "at most"}
                return
            self._flight.add(call.key)
            yield call

    def execute(self, calls, desc: str, total: int | None = None) -> None:
        """Send the calls (a list or any iterable: a plan made lazily) the ledger has no reply for.
        Live backends take them in chunks of CHUNK, so only a chunk's rendered messages and the
        calls in flight are held, whatever the number of calls (issue 22, item 5); a batch backend
        takes them all at once (its chunks are planned over every key)."""
        from tqdm.auto import tqdm

        if self.stopped:
            return
        self.bar = None
        if self.batch:
            calls = list(calls)
        total = len(calls) if total is None and hasattr(calls, "__len__") else total
        pending = self._batch_todo(calls) if self.batch else self._live_todo(calls)
        first = next(pending, None)
        if first is None or self.stopped:
            return
        todo = itertools.chain([first], pending)
        if self.backend is None:  # built only when something is left to send: a rerun loads no model
            extra = ({"owner": self.owner if self.capped else None, "submit_only": self.submit_only}
                     if self.batch else {})  # the batch backend holds a submitted batch's budget past this process
            if self.adapter:  # judge.model=policy: the round's LoRA adapter on the model
                extra["adapter"] = self.adapter
            if self.j.backend == "verifier":  # where candidate code runs (the run's top-level sandbox section)
                extra["sandbox"] = self.cfg.sandbox
            self.backend = load_judge(self.j, self.model, ledger=self.ledger, on_retry=self._retry, **extra)
        self.bar = tqdm(total=total, initial=self._skipped, desc=desc, unit="call")
        self.t0 = t0 = time.monotonic()
        try:
            self._send(todo)
        finally:
            if self.capped:  # calls admitted but never answered (an error, a quota stop) hold no room
                self.ledger.release(self.owner)
            self.stats["seconds"] += time.monotonic() - t0
            self._show(final=True)
            self.bar.close()

    def close(self) -> None:
        """Release the backend's engine (vLLM judge, vLLM reward model); the ledger is the session's.
        The backend object stays: reports read its stats (rate governor, batches) after the session."""
        if self.backend is not None and hasattr(self.backend, "close"):
            self.backend.close()

    def _send(self, todo) -> None:
        if self.j.processes > 1 and self.j.backend == "openai" and not self.batch and not self.worker:
            from rlaif.judge.workers import spread

            return spread(self, todo)  # several client processes, one ledger (rlaif/judge/workers.py)
        self.backend.run(self._admitted(todo), self._on_reply)
        self.deferred = getattr(self.backend, "outstanding", 0)
        if self.deferred and not self.stopped:  # the next phase needs these results: it waits for a rerun
            self.stopped = "submit-only: batches submitted, not collected yet"

    def _live_todo(self, calls):
        """The calls without a stored reply, chunk by chunk; a key already in flight (the same
        texts twice in one prompt) is not sent a second time."""
        self._skipped = 0
        it = iter(calls)
        while chunk := list(itertools.islice(it, CHUNK)):
            unique = {c.key: c for c in chunk if c.key not in self._flight}
            done = self.ledger.done_keys(list(unique))
            self._skipped += len(chunk) - len(unique) + len(done)
            if self.bar is not None and (len(done) or len(chunk) > len(unique)):
                self.bar.update(len(chunk) - len(unique) + len(done))
            del chunk
            for key, call in unique.items():
                if key not in done:
                    yield call

    def _batch_todo(self, calls: list[Call]):
        unique = list({c.key: c for c in calls}.values())
        done = self.ledger.done_keys([c.key for c in unique])
        self._skipped = len(calls) - len(unique) + len(done)
        todo = [c for c in unique if c.key not in done]
        # calls in batches already sent go first: admitted whatever the cap says now
        self._committed = {k for ch in self.ledger.open_chunks() if ch["status"] != "planned" for k in ch["keys"]}
        self._held = self.ledger.held_keys([c.key for c in todo])
        todo.sort(key=lambda c: c.key not in self._committed)
        yield from todo

    def _retry(self) -> None:
        self.stats["retries"] += 1

    def _on_reply(self, call: Call, reply: Reply) -> None:
        live = reply.extra.get("live") or not self.batch
        row = interpret(call, reply, self.spec, self.live_price if live else self.price)
        row.update(judge_model=self.model, judge_id=self.judge_id)
        if self.batch:  # which API answered, for the audit: the price differs
            row["request"]["api"] = "live" if live else "batch"
        self.ledger.record(row, self.owner if self.capped else None)  # its reservation ends with it
        self._flight.discard(call.key)
        if row["status"] == "done":
            self.stats["calls_made"] += 1
            self.stats["invalid"] += row["verdict"] == "invalid"
            self.stats["tokens"] += row["input_tokens"] + row["output_tokens"]
        else:
            self.stats["errors"] += 1
            self.last_error = row["error"]
        self.bar.update(1)  # failed calls are shown apart from judged ones: a wall of errors is not progress
        self._show()

    def _show(self, final: bool = False) -> None:
        now = time.monotonic()
        if now - self._shown < 0.5 and not final:  # the figures read the ledger: twice a second is enough for a person
            return
        self._shown, s = now, self.stats
        rate = s["calls_made"] / max(s["seconds"] + (0 if final else now - self.t0), 1e-9)
        self.bar.set_postfix_str(f"judged {s['calls_made']} ({s['invalid']} invalid), failed {s['errors']}, "
                                 f"{rate:.1f}/s, {s['retries']} retries, {s['tokens']} tok, ${self.cost:.4f}")


def request_meta(call: Call, reply: Reply) -> dict:
    """What was sent, for audit: the exact messages are identified by their hash, not stored twice."""
    body = json.dumps(list(call.messages) or [list(call.chat), call.response], sort_keys=True).encode()
    meta = {"kind": call.kind, "order": call.order, "messages_sha256": hashlib.sha256(body).hexdigest()}
    meta.update({k: v for k, v in reply.extra.items() if k in ("api_style", "reasoning_tokens", "note")})
    return meta


def interpret(call: Call, reply: Reply, spec: T.Spec, price: tuple[float, float]) -> dict:
    """A reply becomes a ledger row. Verdicts name candidates: 'a' means a_id won, whatever its slot."""
    row = {"key": call.key, "prompt_id": call.prompt_id, "kind": call.kind, "a_id": call.a_id, "b_id": call.b_id,
           "order": call.order, "item": call.item, "template_version": call.version or spec_version(spec, call.kind),
           "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens, "latency_s": reply.latency_s,
           "attempts": reply.attempts, "raw": reply.text, "request": request_meta(call, reply),
           "cost_usd": (reply.input_tokens * price[0] + reply.output_tokens * price[1]) / 1e6}
    if reply.error:  # no reply at all: not final, a rerun tries again
        return {**row, "status": "error", "error": reply.error, "cost_usd": 0.0}
    done = {**row, "status": "done"}
    if call.kind in ("reward", "verify"):  # a reward model's reward; the verifier's share of checks passed
        ok = reply.score is not None and math.isfinite(reply.score)
        return {**done, "verdict": "score", "score_a": reply.score} if ok else \
            {**done, "verdict": "invalid", "error": f"no finite {'reward' if call.kind == 'reward' else 'score'}"}
    if call.kind in T.TEXT_KINDS:
        return {**done, **text_verdict(reply)}
    cut = reply.finish_reason in ("length", "empty")
    if cut:
        why = {"length": "reply cut off (finish_reason=length)", "empty": "empty choices"}[reply.finish_reason]
        return {**done, "verdict": "invalid", "error": why}
    if call.kind == "checklist_writer":
        items = T.parse_checklist_items(reply.text)
        return {**done, "verdict": "items", "rationale": json.dumps(items)} if items else \
            {**done, "verdict": "invalid", "error": "no '- ' checklist lines"}
    graded = spec.verdicts == "graded" and call.kind == "pairwise"
    value, rationale = T.parse(call.kind, reply.text, spec.explain, graded)
    done["rationale"] = rationale or None
    if value is None:
        return {**done, "verdict": "invalid", "error": f"unparseable {call.kind} reply"}
    # probabilities only from the verdict's own token, never the first one of a rationale (issue 18)
    top = T.verdict_top(call.kind, reply.text, reply.top, spec.explain, graded)
    if call.kind == "score":
        score = (T.expected_score(top) if top else None) or value
        return {**done, "verdict": "score", "score_a": score}
    if call.kind == "checklist":
        p = T.p_yes(top) if top else None
        return {**done, "verdict": value, "score_a": p if p is not None else float(value == "yes")}
    return {**done, **pairwise_verdict(call, top, value, graded)}


def text_verdict(reply: Reply) -> dict:
    """A critique or revision (rlaif/judge/pairs/revise.py): verdict "text" with the text in `rationale`
    (stripped; `raw` keeps the reply as received), "cut_off" when the reply hit its cap (the text is
    kept: the stage decides what a cut-off text is worth), "invalid" when there is no text."""
    text = (reply.text or "").strip()
    if not text:
        return {"verdict": "invalid", "error": "empty choices" if reply.finish_reason == "empty" else "empty reply"}
    if reply.finish_reason == "length":
        return {"verdict": "cut_off", "rationale": text, "error": "reply cut off (finish_reason=length)"}
    return {"verdict": "text", "rationale": text}


def pairwise_verdict(call: Call, top: dict | None, value: str, graded: bool) -> dict:
    """Slot verdict -> candidate verdict (+ p_a, grade) from a_id's point of view; `top` is the
    verdict token's alternatives (T.verdict_top)."""
    sign = 1 if call.order == "ab" else -1
    if graded:
        g = (T.expected_grade(top) if top else None)
        g = float(T.GRADES[value]) if g is None else g
        slot = "A" if T.GRADES[value] > 0 else "B" if T.GRADES[value] < 0 else "tie"
        out = {"grade": sign * g}
    else:
        slot, out = value, {}
        p_first = T.p_first_slot(top) if top else None
        out["p_a"] = None if p_first is None else (p_first if sign > 0 else 1 - p_first)
    flip = {"A": "b", "B": "a", "tie": "tie"}
    out["verdict"] = slot.lower() if sign > 0 else flip[slot]
    return out


def spec_version(spec: T.Spec, kind: str) -> str:
    return kind if kind == "reward" else VERIFY_VERSION if kind == "verify" else spec.version(kind)


VERIFY_VERSION = "verify-v1"  # how the verifier's calls are keyed and scored (rlaif/judge/backends/verifier.py)
