"""Verifier judge: each candidate scored by checks that can be run, no model (issue 24, item 1).

    judge:
      backend: verifier
      checks:
        solves: {tests: true}          # the prompt's `tests` run against the candidate's code
        answer: {reference: numeric}   # its last number equals the prompt's `reference`
    sandbox: {mode: strict, concurrency: 4}

Answers kind "verify" calls: Call.response is the candidate, Call.chat its conversation, Call.data
the prompt's {"tests": [...], "reference": ...} as JSON. The score is the mean over judge.checks of
evaluate.checks.score_one (one definition of the kinds, shared with evaluate): a tests check
scores the share of tests passed, any other 1 or 0. The reply's text, stored in the ledger's raw
column, holds every check's score and detail (each test's status, wall time and stderr tail), so
a rerun reads outcomes back and executes nothing. The stage makes best-vs-worst pairs from the
scores, as for a reward model.

Executions run in parallel up to sandbox.concurrency: one call per worker thread, its tests one
after another, each in its own sandbox process (rlaif/sandbox.py; candidate code never runs in this
process). Calls are pulled from the iterator only when a worker is free (the contract in
backends/__init__.py); replies go to on_reply from the calling thread.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from rlaif.config import JudgeConfig, SandboxConfig
from rlaif.errors import UserError
from rlaif.evaluate.checks import RUNNABLE, kinds, predicate, score_one
from rlaif.judge.backends import Call, Reply


class VerifierJudge:
    def __init__(self, cfg: JudgeConfig, model: str | None = None, *, ledger=None, on_retry=None,
                 sandbox: SandboxConfig | None = None, **_) -> None:
        self.cfg, self.checks = cfg, dict(cfg.checks)
        if not self.checks:
            raise UserError("judge.checks: judge.backend=verifier needs at least one check, "
                            "e.g. checks: {solves: {tests: true}}")
        self.sandbox = sandbox or SandboxConfig()
        for name, spec in self.checks.items():  # a user function that cannot load fails before any call
            if not set(kinds(spec)) & RUNNABLE:
                try:
                    predicate(spec)
                except ValueError as e:
                    raise UserError(f"judge.checks.{name}: {e}") from None
        self.note = "no code executed (no tests check)"
        if any(kinds(s) == ["tests"] for s in self.checks.values()):
            self.note = self._isolation()
        self.stats = {"calls": 0, "refused": 0, "executions": 0, "passed": 0, "statuses": {}, "isolation": self.note}

    def _isolation(self) -> str:
        """One line for the ledger and the reports: where candidate code runs. sandbox.mode strict
        where no network namespace can be made: isolation() raises UserError, before any call."""
        if self.sandbox.command:
            return f"sandbox: external command {self.sandbox.command[0]}"
        from rlaif.sandbox import isolation

        iso = isolation(self.sandbox.mode)  # probed once per process
        return f"sandbox: {iso['note']} (network: {iso['network']}; user: {iso['user']})"

    def close(self) -> None:
        """Nothing held between calls: every execution's process and folder are gone when it returns."""

    def _verify(self, call: Call) -> Reply:
        t0 = time.monotonic()
        try:
            data = json.loads(call.data) if call.data else {}
        except ValueError:
            return Reply(error=f"call {call.key}: data is not JSON")
        chat = [dict(m) for m in call.chat]
        out = {}
        for name, spec in self.checks.items():
            try:  # concurrency 1: the call is already one of sandbox.concurrency workers
                score, detail = score_one(spec, chat, call.response, data or {}, self.sandbox,
                                          name=f"judge.checks.{name}", pid=call.prompt_id, concurrency=1)
            except UserError:
                raise  # the user's check function or config: one line that stops the stage, as in evaluate
            except Exception as e:  # the host failed (not the candidate: its failures are outcomes)
                return Reply(error=f"judge.checks.{name}: {type(e).__name__}: {e}", latency_s=time.monotonic() - t0)
            out[name] = {"score": score, "detail": detail}
        mean = sum(c["score"] for c in out.values()) / len(out)
        return Reply(text=json.dumps({"checks": out}, sort_keys=True), score=mean, input_tokens=0,
                     output_tokens=0, latency_s=time.monotonic() - t0, finish_reason="stop",
                     extra={"note": self.note})

    def _count(self, reply: Reply) -> None:
        self.stats["calls"] += 1
        if reply.text is None:
            return
        for c in json.loads(reply.text)["checks"].values():
            for t in c["detail"].get("tests", []):
                self.stats["executions"] += 1
                self.stats["passed"] += t["status"] == "pass"
                self.stats["statuses"][t["status"]] = self.stats["statuses"].get(t["status"], 0) + 1

    def run(self, calls, on_reply) -> None:
        workers = self.sandbox.concurrency
        live: dict = {}

        def land(block: bool) -> None:
            done, _ = wait(live, return_when=FIRST_COMPLETED, timeout=None if block else 0)
            for f in done:
                call = live.pop(f)
                reply = f.result()
                self._count(reply)
                on_reply(call, reply)

        with ThreadPoolExecutor(workers, thread_name_prefix="verifier") as pool:
            try:
                for call in calls:
                    if call.kind != "verify" or call.response is None:
                        self.stats["refused"] += 1
                        on_reply(call, Reply(error=f"judge.backend=verifier answers verify calls (a candidate "
                                                   f"and its prompt's data), got a {call.kind!r} call"))
                        continue
                    live[pool.submit(self._verify, call)] = call
                    while len(live) >= workers:  # pull the next call only when a worker is free
                        land(block=True)
                    land(block=False)
                while live:
                    land(block=True)
            finally:
                for f in live:
                    f.cancel()
