"""OpenAI-compatible judge backend: AsyncOpenAI, `concurrency` workers, tenacity retries.

Retries (exponential backoff with jitter, honouring Retry-After) on 429, 5xx, timeouts,
connection errors and unreadable replies; the client's own retries are off so they never
multiply. A Retry-After longer than `max_backoff_s` pauses every worker instead of failing the
item. A 429 `insufficient_quota` is final: the run stops at once. The API key is read from the
environment variable the config names, and never appears in a message or a log line (server
error text is scrubbed of it too). `judge.rpm`/`judge.tpm` are kept by one RateGovernor shared by
all workers: every HTTP attempt, retries included (the server counts them), waits for its slot.

Two request styles (`request_body`): chat (max_tokens, temperature 0, logprobs) and reasoning
(max_completion_tokens, no temperature, no logprobs, reasoning_effort). OpenAI's reasoning
models (GPT-5 family, o1/o3/o4) refuse each chat parameter with HTTP 400 unsupported_parameter /
unsupported_value, and bill their hidden reasoning inside usage.completion_tokens
(completion_tokens_details.reasoning_tokens), which also counts against max_completion_tokens
(platform.openai.com/docs/guides/reasoning; many clients hit the 400s, e.g. IBM/chuk-llm#3 and
marimo-team/marimo#6082). judge.api_style=auto picks the style by model name and otherwise
switches the run to the other style once, on the first such 400.

Verdict calls carry the constraint judge.constrain resolves to (rlaif/judge/constrain.py): OpenAI's
response_format json_schema, or vLLM's structured_outputs choice (through the client's extra_body); a
400 refusing it stops the stage with one line. Free-text calls are sent as they always were.
"""
from __future__ import annotations

import asyncio
import os
import re
import sys
import time

from rlaif.config import JudgeConfig
from rlaif.errors import QuotaExceeded, UserError
from rlaif.judge.backends import Call, Reply
from rlaif.judge.backends.governor import RateGovernor

# The families OpenAI documents as reasoning models: o1, o3, o4 (with -mini, -pro, dated
# snapshots) and gpt-5 (gpt-5, gpt-5-mini, gpt-5.1, ...). Matched after any "provider/" prefix
# (OpenRouter, LiteLLM). An unknown name starts as chat and relies on auto's one switch.
REASONING_MODEL = re.compile(r"(o[134]|gpt-5)([-.:_].*)?$", re.IGNORECASE)
# The parameters each style sends that the other does not: a refusal naming one of these is
# fixed by switching style; any other refused parameter or value is not.
STYLE_PARAMS = {"chat": {"max_tokens", "temperature", "logprobs", "top_logprobs"},
                "reasoning": {"max_completion_tokens", "reasoning_effort"}}
OTHER = {"chat": "reasoning", "reasoning": "chat"}
# Body fields of other servers (vLLM's structured outputs): sent through the client's extra_body.
EXTRA_BODY = ("structured_outputs",)


def is_reasoning_model(model: str) -> bool:
    return bool(REASONING_MODEL.match(model.rsplit("/", 1)[-1]))


def start_style(cfg: JudgeConfig, model: str) -> str:
    """The style the first request is sent in: the configured one, or auto's guess from the name."""
    if cfg.api_style != "auto":
        return cfg.api_style
    return "reasoning" if is_reasoning_model(model) else "chat"


def request_body(style: str, call: Call, cfg: JudgeConfig, model: str) -> dict:
    """The chat-completions body for one call in one style (live calls and Batch API lines alike), with the
    verdict constraint judge.constrain resolved to (rlaif/judge/constrain.py; cached, so free per call)."""
    from rlaif.judge.constrain import request_fields, resolve

    body = {"model": model, "messages": list(call.messages), **request_fields(resolve(cfg), call.labels)}
    if style == "chat":  # temperature 0 and every reply token's top logprobs: p_a and expected scores
        return {**body, "max_tokens": call.max_tokens, "temperature": 0, "logprobs": True, "top_logprobs": 10}
    body["max_completion_tokens"] = cfg.max_completion_tokens  # hidden reasoning + the visible verdict
    if cfg.reasoning_effort:
        body["reasoning_effort"] = cfg.reasoning_effort
    return body


class Retryable(Exception):
    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class _Resend(Exception):
    """The request was refused for its style and the style has changed since: send it again."""


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


def _os_reason(e) -> str:
    """Why a connection failed, from the OS error under httpx's ("Connection refused", "Name or
    service not known"): the errno's text, which holds no URL and no credential."""
    import socket

    seen, cause = 0, e
    while cause is not None and seen < 10:
        if isinstance(cause, socket.gaierror) and cause.strerror:
            return cause.strerror  # a resolver error: its errno is an EAI_* code, not an os one
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return type(e.__cause__ or e).__name__


def _unsupported(e) -> bool:
    """A 400 saying a parameter, or its value, is not supported by this model: every call would get it."""
    return getattr(e, "status_code", None) == 400 and \
        getattr(e, "code", None) in ("unsupported_parameter", "unsupported_value")


def _style_fixes(e, style: str) -> bool:
    """Would the other style fix it? Yes when the refused parameter is one only this style sends."""
    param = getattr(e, "param", None)
    if getattr(e, "code", None) == "unsupported_value" and param == "reasoning_effort":
        return False  # a reasoning model refusing this effort level: chat style would not help
    return param in STYLE_PARAMS[style] if param else True


class OpenAIJudge:
    def __init__(self, cfg: JudgeConfig, model: str, ledger=None, on_retry=None, **_) -> None:
        import openai

        key = cfg.api_key()  # api_key_env null: a placeholder, never $OPENAI_API_KEY (issue 18, item 10)
        self.cfg, self.model, self.openai = cfg, model, openai
        self._key = key  # held in memory only; repr-free: never formatted into any message
        self.on_retry = on_retry or (lambda: None)
        self.pause_until = 0.0  # shared by all workers: the server asked everyone to back off
        self.governor = RateGovernor.from_config(cfg)  # shared by all workers; free when no limit is set
        self.style = start_style(cfg, model)
        from rlaif.judge.constrain import resolve

        self.constraint = resolve(cfg)  # the judge identity holds the same value (rlaif/judge/identity.py)
        self.style_reason = ("judge.api_style" if cfg.api_style != "auto" else
                             "model name" if self.style == "reasoning" else "default")
        self.settled = cfg.api_style != "auto"  # auto: the first call goes alone until the style is known
        self.switched: dict | None = None
        self.counts = {"refused_requests": 0, "possibly_billed_attempts": 0, "reasoning_tokens": 0,
                       "cut_off_replies": 0}
        self.hint: str | None = None

    @property
    def where(self) -> str:
        from rlaif.credentials import redact_url

        return redact_url(self.cfg.base_url) or "the OpenAI API"  # never a credential in a message

    def scrub(self, text: str) -> str:
        """Server text with the configured key removed (some proxies echo the request back)."""
        return text.replace(self._key, "[api key removed]")

    def stats(self) -> dict:
        out = {"api_style": self.style, "api_style_config": self.cfg.api_style, "chosen_by": self.style_reason,
               "switched": self.switched, "timeout_s": self.cfg.timeout_for(self.style),
               "constrain": self.constraint, **self.counts}
        if self.hint:
            out["hint"] = self.hint
        if self.governor.active:
            out["rate_governor"] = self.governor.stats()
        return out

    async def _once(self, call: Call) -> Reply:
        """One attempt; a Retry-After beyond max_backoff_s pauses all workers and does not use up an
        attempt, nor does a request refused for a style the run has since left."""
        while True:
            await asyncio.sleep(max(0.0, self.pause_until - time.monotonic()))
            try:
                return await self._send(call)
            except _Resend:
                continue
            except Retryable as e:
                if e.retry_after is None or e.retry_after <= self.cfg.max_backoff_s:
                    raise
                if self.pause_until < time.monotonic():
                    print(f"judge: server asked to wait {e.retry_after:g}s (Retry-After); pausing", file=sys.stderr)
                self.pause_until = max(self.pause_until, time.monotonic() + e.retry_after)

    async def _send(self, call: Call) -> Reply:
        style = self.style
        cap = call.max_tokens if style == "chat" else self.cfg.max_completion_tokens
        ticket = await self.governor.acquire(call.est_input_tokens + cap)
        try:
            return await self._attempt(call, style, ticket)
        finally:  # the server had the request by now, if ever: its window can be dated from here
            self.governor.release(ticket)

    async def _attempt(self, call: Call, style: str, ticket) -> Reply:
        o, timeout = self.openai, self.cfg.timeout_for(style)
        t0 = time.monotonic()
        body = request_body(style, call, self.cfg, self.model)
        extra = {k: body.pop(k) for k in EXTRA_BODY if k in body}  # fields the openai client has no argument for
        try:  # wait_for: a server dripping bytes resets httpx's read timeout; this deadline it cannot
            resp = await asyncio.wait_for(self.client.chat.completions.create(
                **body, extra_body=extra or None, timeout=timeout), timeout=timeout)
        except o.RateLimitError as e:
            if _is_quota(e):
                raise QuotaExceeded("judge: the API reports insufficient_quota (out of credit); no retry can help. "
                                    "Finished calls are in the ledger; rerun after topping up") from None
            self.governor.on_429(ticket)
            raise Retryable("HTTP 429", _retry_after(e)) from None
        except (o.APITimeoutError, asyncio.TimeoutError):
            # The server may still finish it, and a paid API bills what it finished after we left.
            self.counts["possibly_billed_attempts"] += 1
            raise Retryable(f"timeout after {timeout:g}s") from None
        except o.APIConnectionError as e:  # the host, never its credentials, and what to check
            raise Retryable(f"cannot connect to {self.where} ({_os_reason(e)}); check judge.base_url "
                            "and that the server is running and reachable from here") from None
        except o.InternalServerError as e:
            raise Retryable(f"HTTP {e.status_code}", _retry_after(e)) from None
        except o.AuthenticationError:
            raise UserError(f"judge: authentication failed (HTTP 401) at {self.where}; "
                            + (f"check the key in ${self.cfg.api_key_env}" if self.cfg.api_key_env else
                               "judge.api_key_env is null, so no key was sent; name the variable that holds it")) from None
        except (o.APIResponseValidationError, ValueError) as e:  # 200 with a body that is not JSON
            raise Retryable(f"unreadable reply: {type(e).__name__}") from None
        except o.APIStatusError as e:
            msg = self._message(e)
            if e.status_code in (403, 404):  # wrong endpoint or model: every call would fail the same way
                raise UserError(f"judge: HTTP {e.status_code} from {self.where}: {msg}; "
                                "check judge.base_url (it usually ends in /v1) and judge.model") from None
            if e.status_code == 400 and getattr(e, "param", None) in ("response_format", *EXTRA_BODY):
                raise UserError(f"judge: {self.where} refused the verdict constraint ({self.constraint}, from "
                                f"judge.constrain={self.cfg.constrain}): {msg}; set judge.constrain: off for this "
                                "model") from None
            if _unsupported(e):
                self._refused(style, msg, _style_fixes(e, style))
            return Reply(error=f"HTTP {e.status_code}: {msg}")  # e.g. 400 context too long: this call only
        if not hasattr(resp, "choices"):  # the client hands back a str for a non-JSON 200 body
            raise Retryable("unreadable reply: not a chat completion")
        self.settled = True
        return self._note(_reply(resp, time.monotonic() - t0, style))

    def _refused(self, style: str, msg: str, style_fixes: bool) -> None:
        """An unsupported-parameter 400: switch style once (auto) and resend, or stop the stage."""
        self.counts["refused_requests"] += 1  # refused before any work: nothing judged, nothing billed
        if style != self.style:
            raise _Resend()  # sent before another worker's switch: the new style may well work
        if style_fixes and self.cfg.api_style == "auto" and self.switched is None:
            self.style, self.style_reason = OTHER[style], "switched after HTTP 400"
            self.switched = {"from": style, "to": self.style, "why": msg}
            print(f"judge: {self.where} refused the {style} request style ({msg}); judge.api_style=auto "
                  f"switches this run to {self.style}", file=sys.stderr)
            raise _Resend()
        fix = ("check judge.reasoning_effort and the model's parameters" if not style_fixes else
               "neither request style is accepted" if self.switched else
               f"set judge.api_style=auto or {OTHER[style]}")
        raise UserError(f"judge: HTTP 400 from {self.where} for the {style} request style: {msg} ({fix})")

    def _note(self, reply: Reply) -> Reply:
        self.counts["reasoning_tokens"] += reply.extra.get("reasoning_tokens") or 0
        if reply.finish_reason == "length" and not reply.text and reply.extra["api_style"] == "reasoning":
            self.counts["cut_off_replies"] += 1
            if self.hint is None:
                self.hint = (f"reasoning used all of judge.max_completion_tokens={self.cfg.max_completion_tokens} "
                             "before any answer; raise judge.max_completion_tokens (or lower judge.reasoning_effort)")
                print(f"judge: {self.hint}", file=sys.stderr)
        return reply

    def _message(self, e) -> str:
        body = getattr(e, "body", None)
        msg = body.get("message") if isinstance(body, dict) else None
        return self.scrub(" ".join(str(msg or type(e).__name__).split()))[:300]  # scrubbed before cutting

    async def one(self, call: Call) -> Reply:
        """One call with retries: a Retryable error (429, 5xx, timeout) waits the server's
        Retry-After or a jittered exponential backoff, up to judge.max_retries more attempts."""
        try:  # the first attempt outside tenacity: most calls need no retry, and building the
            reply = await self._once(call)  # retrying machinery per call cost ~5% of calls/s (issue 22)
            reply.attempts = 1
            return reply
        except Retryable as e:
            if self.cfg.max_retries == 0:
                return Reply(error=f"gave up after 1 attempts: {e}", attempts=1)
            first = e
        from types import SimpleNamespace

        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

        backoff = wait_random_exponential(multiplier=0.5, max=self.cfg.max_backoff_s)

        def wait_after(error: BaseException, attempt: int) -> float:  # Retry-After when given, else backoff
            ra = getattr(error, "retry_after", None)
            return ra if ra is not None else backoff(SimpleNamespace(attempt_number=attempt))

        self.on_retry()
        await asyncio.sleep(wait_after(first, 1))
        attempts = 1
        try:  # attempts 2 .. max_retries + 1, tenacity's attempt n being the call's attempt n + 1
            async for attempt in AsyncRetrying(stop=stop_after_attempt(self.cfg.max_retries),
                                               wait=lambda s: wait_after(s.outcome.exception(), s.attempt_number + 1),
                                               retry=retry_if_exception_type(Retryable), reraise=True,
                                               before_sleep=lambda s: self.on_retry()):
                with attempt:
                    attempts = attempt.retry_state.attempt_number + 1
                    reply = await self._once(call)
            reply.attempts = attempts
            return reply
        except Retryable as e:
            return Reply(error=f"gave up after {attempts} attempts: {e}", attempts=attempts)

    async def _run(self, calls, on_reply) -> None:
        # One client per event loop: httpx connection pools must not outlive their loop.
        self.client = self.openai.AsyncOpenAI(**self.cfg.client_args(), max_retries=0,  # base_url's query split off
                                              timeout=self.cfg.timeout_for(self.style))
        it = iter(calls)
        try:
            if not self.settled:  # auto: one call alone first, so at most one request is refused
                first = next(it, None)
                if first is None:
                    return
                on_reply(first, await self.one(first))

            async def worker() -> None:
                for call in it:  # pulled only when this worker is free; the stage's iterator ends at a budget
                    on_reply(call, await self.one(call))

            tasks = [asyncio.create_task(worker()) for _ in range(self.cfg.concurrency)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.client.close()

    def run(self, calls, on_reply) -> None:
        asyncio.run(self._run(calls, on_reply))


def _reply(resp, latency: float, style: str = "chat") -> Reply:
    usage = getattr(resp, "usage", None)
    # completion_tokens already includes hidden reasoning tokens: it is what the API bills
    tokens = dict(input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                  output_tokens=getattr(usage, "completion_tokens", 0) or 0, latency_s=latency)
    extra = {"api_style": style}
    reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None)
    if reasoning is not None:
        extra["reasoning_tokens"] = reasoning
    if not resp.choices:
        return Reply(text=None, finish_reason="empty", **tokens, extra={**extra, "note": "empty choices"})
    ch = resp.choices[0]
    content = getattr(getattr(ch, "logprobs", None), "content", None)
    # every reply token with its alternatives: the stage reads the verdict's own position (issue 18)
    top = [_position(t) for t in content] if content else None
    return Reply(text=ch.message.content, top=top, finish_reason=ch.finish_reason, **tokens, extra=extra)


def _position(t) -> tuple[str, dict[str, float]]:
    """One reply token and {alternative: logprob}. Its text comes from its bytes when the API gives
    them: a token may hold part of a UTF-8 character (its `token` is then an escape, not the text)."""
    raw = getattr(t, "bytes", None)
    tok = bytes(raw).decode("utf-8", "surrogateescape") if raw else t.token
    alts = {a.token: a.logprob for a in (t.top_logprobs or [])}
    alts.setdefault(t.token, t.logprob)  # the chosen token, also when top_logprobs was cut short
    return tok, alts
