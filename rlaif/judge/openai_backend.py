"""OpenAI-compatible judge backend: AsyncOpenAI, bounded concurrency, tenacity retries.

Retries (exponential backoff with jitter, honouring Retry-After) on 429, 5xx, timeouts,
connection errors and unreadable replies; the client's own retries are off so they never
multiply. A Retry-After longer than `max_backoff_s` pauses every worker instead of failing the
item. A 429 `insufficient_quota` is final: the run stops at once. The API key is read from the
environment variable the config names, and never appears in a message or a log line.
`judge.rpm`/`judge.tpm` are kept by one RateGovernor shared by all workers: every HTTP attempt,
retries included (the server counts them), waits for its slot; any other 429 lowers the rate.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

from rlaif.config import JudgeConfig
from rlaif.errors import QuotaExceeded, UserError
from rlaif.judge.backends import Call, Reply
from rlaif.judge.governor import RateGovernor


class Retryable(Exception):
    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


def _retry_after(exc) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name in ("retry-after-ms", "retry-after"):
        raw = headers.get(name)
        try:
            if raw is not None:
                return float(raw) / (1000 if name.endswith("ms") else 1)
        except ValueError:
            pass
    return None


def _is_quota(exc) -> bool:
    body = getattr(exc, "body", None)
    code = getattr(exc, "code", None) or (body.get("code") if isinstance(body, dict) else None)
    typ = body.get("type") if isinstance(body, dict) else None
    return "insufficient_quota" in (code, typ)


class OpenAIJudge:
    def __init__(self, cfg: JudgeConfig, model: str, on_retry=None) -> None:
        import openai

        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise UserError(f"judge.backend=openai: environment variable {cfg.api_key_env} is not set "
                            "(judge.api_key_env names it; the key itself never goes in a config)")
        self.cfg, self.model, self.openai = cfg, model, openai
        self._key = key  # held in memory only; repr-free: never formatted into any message
        self.on_retry = on_retry or (lambda: None)
        self.pause_until = 0.0  # shared by all workers: the server asked everyone to back off
        self.governor = RateGovernor.from_config(cfg)  # shared by all workers; free when no limit is set

    async def _once(self, call: Call) -> Reply:
        """One attempt; a Retry-After beyond max_backoff_s pauses all workers and does not use up an attempt."""
        while True:
            await asyncio.sleep(max(0.0, self.pause_until - time.monotonic()))
            try:
                return await self._send(call)
            except Retryable as e:
                if e.retry_after is None or e.retry_after <= self.cfg.max_backoff_s:
                    raise
                if self.pause_until < time.monotonic():
                    print(f"judge: server asked to wait {e.retry_after:g}s (Retry-After); pausing", file=sys.stderr)
                self.pause_until = max(self.pause_until, time.monotonic() + e.retry_after)

    async def _send(self, call: Call) -> Reply:
        ticket = await self.governor.acquire(call.est_input_tokens + self.cfg.max_tokens)
        try:
            return await self._attempt(call, ticket)
        finally:  # the server had the request by now, if ever: its window can be dated from here
            self.governor.release(ticket)

    async def _attempt(self, call: Call, ticket) -> Reply:
        o = self.openai
        t0 = time.monotonic()
        try:  # wait_for: a server dripping bytes resets httpx's read timeout; this deadline it cannot
            resp = await asyncio.wait_for(self.client.chat.completions.create(
                model=self.model, messages=list(call.messages), max_tokens=self.cfg.max_tokens, temperature=0,
                logprobs=True, top_logprobs=10), timeout=self.cfg.timeout_s)
        except o.RateLimitError as e:
            if _is_quota(e):
                raise QuotaExceeded("judge: the API reports insufficient_quota (out of credit); no retry can help. "
                                    "Finished calls are in the ledger; rerun after topping up") from None
            self.governor.on_429(ticket)
            raise Retryable("HTTP 429", _retry_after(e)) from None
        except (o.APITimeoutError, asyncio.TimeoutError):
            raise Retryable(f"timeout after {self.cfg.timeout_s:g}s") from None
        except o.APIConnectionError as e:
            raise Retryable(f"connection error: {type(e).__name__}") from None
        except o.InternalServerError as e:
            raise Retryable(f"HTTP {e.status_code}", _retry_after(e)) from None
        except o.AuthenticationError:
            raise UserError(f"judge: authentication failed (HTTP 401) at {self.cfg.base_url or 'the OpenAI API'}; "
                            f"check the key in ${self.cfg.api_key_env}") from None
        except (o.APIResponseValidationError, ValueError) as e:  # 200 with a body that is not JSON
            raise Retryable(f"unreadable reply: {type(e).__name__}") from None
        except o.APIStatusError as e:
            msg = _server_message(e)
            if e.status_code in (403, 404):  # wrong endpoint or model: every call would fail the same way
                raise UserError(f"judge: HTTP {e.status_code} from {self.cfg.base_url or 'the OpenAI API'}: {msg}; "
                                "check judge.base_url (it usually ends in /v1) and judge.model") from None
            return Reply(error=f"HTTP {e.status_code}: {msg}")  # e.g. 400 context too long: this call only
        if not hasattr(resp, "choices"):  # the client hands back a str for a non-JSON 200 body
            raise Retryable("unreadable reply: not a chat completion")
        return _reply(resp, time.monotonic() - t0)

    async def one(self, call: Call) -> Reply:
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

        backoff = wait_random_exponential(multiplier=0.5, max=self.cfg.max_backoff_s)

        def wait(state) -> float:  # the server's Retry-After when it gives one, else jittered backoff
            ra = getattr(state.outcome.exception(), "retry_after", None)
            return ra if ra is not None else backoff(state)

        attempts = 0
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(self.cfg.max_retries + 1), wait=wait,
                                               retry=retry_if_exception_type(Retryable), reraise=True,
                                               before_sleep=lambda s: self.on_retry()):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    reply = await self._once(call)
            reply.attempts = attempts
            return reply
        except Retryable as e:
            return Reply(error=f"gave up after {attempts} attempts: {e}", attempts=attempts)

    async def _run(self, calls: list[Call], on_reply, admit) -> None:
        # One client per event loop: httpx connection pools must not outlive their loop.
        self.client = self.openai.AsyncOpenAI(api_key=self._key, base_url=self.cfg.base_url, max_retries=0,
                                              timeout=self.cfg.timeout_s)
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def worker(call: Call) -> None:
            async with sem:
                if not admit(call):
                    return
                on_reply(call, await self.one(call))

        tasks = [asyncio.create_task(worker(c)) for c in calls]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.close()

    def run(self, calls: list[Call], on_reply, admit=lambda c: True) -> None:
        asyncio.run(self._run(calls, on_reply, admit))


def _server_message(e) -> str:
    body = getattr(e, "body", None)
    msg = body.get("message") if isinstance(body, dict) else None
    return str(msg or type(e).__name__)[:200]


def _reply(resp, latency: float) -> Reply:
    usage = getattr(resp, "usage", None)
    tokens = dict(input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                  output_tokens=getattr(usage, "completion_tokens", 0) or 0, latency_s=latency)
    if not resp.choices:
        return Reply(text=None, finish_reason="empty", **tokens, extra={"note": "empty choices"})
    ch = resp.choices[0]
    top = None
    content = getattr(getattr(ch, "logprobs", None), "content", None)
    if content:
        top = {t.token: t.logprob for t in (content[0].top_logprobs or [])} or {content[0].token: content[0].logprob}
    return Reply(text=ch.message.content, top=top, finish_reason=ch.finish_reason, **tokens)
