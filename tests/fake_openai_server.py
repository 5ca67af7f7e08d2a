"""A scripted OpenAI-compatible judge server for tests (standard library only).

    python tests/fake_openai_server.py --port 0 [--api-key K] [--seed 0] [--latency 0.0] [--policy hash]
                                       [--reasoning [--reasoning-tokens 40]]

Prints ``PORT <n>`` as its first stdout line, then serves until killed. It speaks enough of the
chat-completions API for the real ``openai`` client: it reads the fenced data blocks of rlaif's judge
templates (``<<<BEGIN_DATA id=X>>>`` ... ``<<<END_DATA id=X>>>``, ids conversation/A/B or
conversation/R), answers as a scripted judge (see POLICIES), and injects faults on demand.
A constrained request (OpenAI's response_format json_schema with an enum, or vLLM's structured_outputs
choice: rlaif/judge/constrain.py) gets one of its labels, as JSON or bare, whatever the prompt asks.
It answers in the form the prompt's answer format asks for (a rationale first with "First explain
your judgement", the five-way [[A>B]] scale, Yes/No for a checklist question), and with
`logprobs: true` it returns logprobs for every reply token, as the API does: the verdict's
distribution is at the verdict's own token, and an explained reply's first token is a word that
looks like another verdict (tests/judge_replies.py).
A prompt with an ``original`` block is a critique (ids conversation/original) or a revision
(conversation/original/critique) of rlaif's pairs.source=revise: it gets text (see revise_text).

Endpoints
  GET  /health               200 {"status": "ok"}
  GET  /v1/models            the MODELS, owned_by $FAKE_OPENAI_OWNED_BY (default "rlaif-tests"; "vllm" makes it
                             look like vLLM's server, which alone takes `structured_outputs` in a chat body)
  POST /v1/chat/completions  the judge (Bearer auth when --api-key or $FAKE_OPENAI_API_KEY is set)
  POST /_control             JSON, every key optional:
         {"policy": "hash"|"longer"|"first"|"quality"|"flip:P",
          "latency_s": float,            # sleep before every chat reply
          "faults": [fault, ...],        # REPLACES the FIFO queue; each next chat request takes one
          "add_faults": [fault, ...],    # appends to the queue
          "storm": {fault..., "rate": p} | null,   # each chat request (with no queued fault) gets
                                                   # the fault with probability p while set
          "seed": int,                   # reseed the flip and storm generators
          "rate_limit": {"requests": n, "window_s": s} | null,   # a real limiter: 429 at once,
                                         # with Retry-After, when n requests were let through in the
                                         # last s seconds; counted in faults as "rate_limit"
          "reasoning": bool,             # behave like a reasoning model (see below)
          "reasoning_tokens": int,       # hidden reasoning tokens billed per reasoning reply
          "reset": true}                 # clear /_stats
       replies with the resulting settings.
  GET  /_stats               {"requests", "ok", "by_body", "ok_by_body", "max_in_flight", "in_flight",
                              "unauthorized", "faults": {type: count},
                              "request_times": [time.time() at receipt of each chat request],
                              "request_tokens": [its prompt characters // 3 + max_tokens, same order],
                              "request_params": [its body without messages, same order]}

Reasoning mode (--reasoning, or control "reasoning": true) answers as OpenAI's reasoning models do
(GPT-5 family, o1/o3/o4): HTTP 400 invalid_request_error for `max_tokens` (code unsupported_parameter,
"Use 'max_completion_tokens' instead"), for a `temperature` other than 1 (unsupported_value, "Only
the default (1) value is supported.") and for `logprobs`/`top_logprobs` (unsupported_parameter),
each counted in faults under its code. A reply bills `reasoning_tokens` hidden tokens inside
usage.completion_tokens (completion_tokens_details.reasoning_tokens); they count against
max_completion_tokens, so a cap that leaves no room after them returns empty content with
finish_reason "length" (counted in faults as "reasoning_cut_off", not in "ok").

Faults: {"type": "429", "retry_after": s (optional; float ok), "retry_after_ms": ms (optional)},
{"type": "quota"}, {"type": "500"}, {"type": "503"}, {"type": "hang", "seconds": s},
{"type": "drip", "seconds": s, "chunks": n (optional; default one byte per chunk)},
{"type": "drop"},
{"type": "malformed", "content_type": str (optional; default application/json)},
{"type": "empty_choices"}, {"type": "text", "content": str}, {"type": "length", "content": str},
{"type": "400", "message": str, "code": str, "param": str} (an invalid_request_error, as scripted).

"requests" counts every chat request received (401s included); "ok" counts 200 replies that carry a
policy verdict or a critique/revision text (plain, "hang" and "drip" replies) and were written in full to a client that was still
connected. by_body/ok_by_body key on sha256(json.dumps(messages, sort_keys=True)).

Nothing is written to stdout after the PORT line; errors go to stderr, never with request headers,
bodies or the API key.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from judge_replies import _plain, api_logprobs, reply_plan  # noqa: E402
from judge_replies import content as plan_text  # noqa: E402

MODEL = "fake-judge"
# What GET /v1/models lists (rlaif check / preflight look the configured judge model up there): every
# name the tests configure, as a real server lists what it serves. fake_batch_server lists the same.
MODELS = [MODEL, "fake-judge-2", "m", "gpt-4.1-mini", "gpt-5-mini", "openai/gpt-5-mini", "o3", "o4-mini"]
BLOCK = re.compile(r"<<<BEGIN_DATA id=([A-Za-z0-9_]+)>>>\n(.*?)\n<<<END_DATA id=\1>>>", re.DOTALL)
GOOD = re.compile(r"\bGOOD\b")
# owned_by in GET /v1/models: $FAKE_OPENAI_OWNED_BY=vllm makes the server look like vLLM's (whose model
# cards say "vllm"), and only then does it take vLLM's `structured_outputs` body field; OpenAI's API
# refuses an unknown argument with a 400.
OWNED_BY = os.environ.get("FAKE_OPENAI_OWNED_BY") or "rlaif-tests"
FAULT_TYPES = {"429", "quota", "500", "503", "hang", "drip", "drop", "malformed", "empty_choices", "text", "length",
               "400"}


class BadControl(ValueError):
    pass


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def body_key(messages) -> str:
    return sha(json.dumps(messages, sort_keys=True))


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def check_policy(policy: str) -> str:
    if policy in ("hash", "longer", "first", "quality"):
        return policy
    if policy.startswith("flip:"):
        try:
            p = float(policy[5:])
        except ValueError:
            p = -1.0
        if 0.0 <= p <= 1.0:
            return policy
    raise BadControl(f"unknown policy {policy!r}")


def check_fault(fault) -> dict:
    if not isinstance(fault, dict) or str(fault.get("type")) not in FAULT_TYPES:
        raise BadControl(f"unknown fault {fault!r}; types: {sorted(FAULT_TYPES)}")
    return {**fault, "type": str(fault["type"])}


class State:
    """Settings and counters shared by the handler threads; everything under one lock."""

    def __init__(self, api_key: str | None, policy: str, seed: int, latency: float, reasoning: bool = False,
                 reasoning_tokens: int = 40):
        self.lock = threading.Lock()
        self.api_key = api_key
        self.reasoning = reasoning
        self.reasoning_tokens = reasoning_tokens
        self.policy = check_policy(policy)
        self.latency = latency
        self.faults: deque[dict] = deque()
        self.storm: dict | None = None
        self.rate_limit: dict | None = None
        self.let_through: deque[float] = deque()  # receipt times the rate limit let through
        self.reseed(seed)
        self.reset_stats()

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.flip_rng = random.Random(seed)
        self.storm_rng = random.Random(seed + 7919)

    def reset_stats(self) -> None:
        self.requests = 0
        self.ok = 0
        self.unauthorized = 0
        self.by_body: Counter[str] = Counter()
        self.ok_by_body: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.request_times: list[float] = []
        self.request_tokens: list[int] = []
        self.request_params: list[dict] = []

    def settings(self) -> dict:
        return {"policy": self.policy, "latency_s": self.latency, "faults": list(self.faults),
                "storm": self.storm, "seed": self.seed, "rate_limit": self.rate_limit,
                "reasoning": self.reasoning, "reasoning_tokens": self.reasoning_tokens}

    def control(self, cmd: dict) -> dict:
        if not isinstance(cmd, dict):
            raise BadControl("control body must be a JSON object")
        unknown = set(cmd) - {"policy", "latency_s", "faults", "add_faults", "storm", "seed", "rate_limit", "reset",
                              "reasoning", "reasoning_tokens"}
        if unknown:
            raise BadControl(f"unknown control keys {sorted(unknown)}")
        if cmd.get("reset"):  # let replies already sent finish their accounting (ok counts after sending):
            deadline = time.monotonic() + 2.0  # a client that got its reply may reset before the handler counted it
            while self.in_flight and time.monotonic() < deadline:
                time.sleep(0.002)
        with self.lock:
            if "policy" in cmd:
                self.policy = check_policy(str(cmd["policy"]))
            if "latency_s" in cmd:
                self.latency = max(0.0, float(cmd["latency_s"]))
            if "faults" in cmd:
                self.faults = deque(check_fault(f) for f in (cmd["faults"] or []))
            if "add_faults" in cmd:
                self.faults.extend(check_fault(f) for f in (cmd["add_faults"] or []))
            if "storm" in cmd:
                storm = cmd["storm"]
                if storm is not None:
                    storm = check_fault(storm)
                    rate = float(storm.get("rate", 1.0))
                    if not 0.0 <= rate <= 1.0:
                        raise BadControl("storm rate must be within [0, 1]")
                    storm["rate"] = rate
                self.storm = storm
            if "seed" in cmd:
                self.reseed(int(cmd["seed"]))
            if "reasoning" in cmd:
                self.reasoning = bool(cmd["reasoning"])
            if "reasoning_tokens" in cmd:
                if int(cmd["reasoning_tokens"]) < 0:
                    raise BadControl("reasoning_tokens must be >= 0")
                self.reasoning_tokens = int(cmd["reasoning_tokens"])
            if "rate_limit" in cmd:
                rl = cmd["rate_limit"]
                if rl is not None:
                    rl = {"requests": int(rl["requests"]), "window_s": float(rl["window_s"])}
                    if rl["requests"] < 1 or rl["window_s"] <= 0:
                        raise BadControl("rate_limit needs requests >= 1 and window_s > 0")
                self.rate_limit = rl
                self.let_through.clear()
            if cmd.get("reset"):
                in_flight = self.in_flight
                self.reset_stats()
                self.in_flight = in_flight
            return self.settings()

    def stats(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "ok": self.ok, "by_body": dict(self.by_body),
                    "ok_by_body": dict(self.ok_by_body), "max_in_flight": self.max_in_flight,
                    "in_flight": self.in_flight, "unauthorized": self.unauthorized,
                    "faults": dict(self.fault_counts), "request_times": list(self.request_times),
                    "request_tokens": list(self.request_tokens), "request_params": list(self.request_params)}

    def received(self, key: str | None, tokens: int = 0, params: dict | None = None) -> None:
        with self.lock:
            self.requests += 1
            self.request_times.append(time.time())
            self.request_tokens.append(tokens)
            self.request_params.append(params or {})
            if key is not None:
                self.by_body[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def rate_limited(self) -> float | None:
        """Seconds until the rate limit has room, when it is set and full; else None, and the
        request counts against it."""
        with self.lock:
            if self.rate_limit is None:
                return None
            now, window = time.monotonic(), self.rate_limit["window_s"]
            while self.let_through and self.let_through[0] <= now - window:
                self.let_through.popleft()
            if len(self.let_through) >= self.rate_limit["requests"]:
                self.fault_counts["rate_limit"] += 1
                return self.let_through[0] + window - now
            self.let_through.append(now)
            return None

    def take_fault(self) -> dict | None:
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            if fault is None and self.storm is not None and self.storm_rng.random() < self.storm["rate"]:
                fault = dict(self.storm)
            if fault is not None:
                self.fault_counts[fault["type"]] += 1
            return fault

    def flip(self, p: float) -> bool:
        with self.lock:
            return self.flip_rng.random() < p


# ----------------------------------------------------------------------------- the scripted judge

def hash_pairwise(a: str, b: str) -> str:
    ha, hb = sha(a), sha(b)
    return "tie" if ha == hb else ("A" if ha < hb else "B")


def hash_score(r: str) -> int:
    return 1 + int(sha(r), 16) % 9


def asks(prompt: str) -> dict:
    """What the judge prompt asks for, read from the answer format rlaif's templates write
    (rlaif/judge/templates.py ANSWER and EXPLAIN): a rationale first, the five-way scale, yes/no."""
    return {"explain": "First explain your judgement" in prompt, "graded": "A>>B" in prompt,
            "checklist": "Yes or No" in prompt or "`Answer: Yes`" in prompt}


def judge(state: State, blocks: dict[str, str], checklist: bool = False) -> tuple[str, str]:
    """(kind, verdict): 'pairwise' with A/B/tie, 'score' with a digit, or 'checklist' with Yes/No."""
    with state.lock:
        policy = state.policy
    if checklist and "R" in blocks:
        r = blocks["R"]
        yes = {"longer": len(r) > 40, "first": True, "quality": bool(GOOD.search(r))}.get(policy, int(sha(r), 16) % 2 == 0)
        if policy.startswith("flip:") and state.flip(float(policy[5:])):
            yes = not yes
        return "checklist", "Yes" if yes else "No"
    if "A" in blocks and "B" in blocks:
        a, b = blocks["A"], blocks["B"]
        if policy == "longer":
            v = "tie" if len(a) == len(b) else ("A" if len(a) > len(b) else "B")
        elif policy == "first":
            v = "A"
        elif policy == "quality" and bool(GOOD.search(a)) != bool(GOOD.search(b)):
            v = "A" if GOOD.search(a) else "B"
        else:
            v = hash_pairwise(a, b)
            if policy.startswith("flip:") and state.flip(float(policy[5:])):
                v = {"A": "B", "B": "A"}.get(v, v)
        return "pairwise", v
    r = blocks["R"]
    if policy == "longer":
        s = min(9, 1 + len(r) // 40)
    elif policy == "first":
        s = 5
    elif policy == "quality":
        s = 7 + int(sha(r), 16) % 3 if GOOD.search(r) else 1 + int(sha(r), 16) % 4
    else:
        s = hash_score(r)
        if policy.startswith("flip:") and state.flip(float(policy[5:])):
            s = 10 - s
    return "score", str(s)


def allowed_labels(req: dict) -> tuple[list[str] | None, str | None]:
    """(labels, how) a constrained request allows: vLLM's structured_outputs {"choice": [...]} ("choice")
    or OpenAI's response_format json_schema with an enum under properties.verdict ("json"); else (None, None)."""
    so = req.get("structured_outputs")
    if isinstance(so, dict) and so.get("choice"):
        return [str(c) for c in so["choice"]], "choice"
    rf = req.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        props = ((rf.get("json_schema") or {}).get("schema") or {}).get("properties") or {}
        enum = (props.get("verdict") or {}).get("enum")
        if enum:
            return [str(e) for e in enum], "json"
    return None, None


def constrained_plan(kind: str, verdict: str, graded: bool, labels: list[str], how: str):
    """The scripted verdict as one of the allowed labels (the first one when the script's is not allowed:
    a constrained server cannot say "tie" where only A and B are allowed), alone (choice) or as the JSON
    object {"verdict": "<label>"} whose label is its own token, as OpenAI's tokenizer splits it."""
    plan = reply_plan(kind, verdict, False, graded)
    if plan_text(plan) not in labels:
        plan = reply_plan(kind, labels[0], False, graded)
    if how == "choice":
        return plan
    return [(t, _plain(t, 0.99)) for t in ('{"', "verdict", '":"')] + plan + [('"}', _plain('"}', 0.99))]


def verdict_completion(state: State, req: dict, blocks: dict[str, str], prompt: str, reasoning: int | None) -> dict:
    """The scripted verdict in the form the prompt asks for, with logprobs for every reply token
    when asked (tests/judge_replies.py): the verdict's distribution sits at the verdict's token.
    A constrained request (allowed_labels) gets one of its labels, whatever the prompt asks."""
    a = asks(prompt)
    kind, verdict = judge(state, blocks, a["checklist"])
    labels, how = allowed_labels(req)
    plan = (constrained_plan(kind, verdict, a["graded"], labels, how) if labels else
            reply_plan(kind, verdict, a["explain"], a["graded"]))
    if reasoning is not None:
        return reasoning_completion(req, plan_text(plan), reasoning)
    lp = api_logprobs(plan, int(req.get("top_logprobs") or 0)) if req.get("logprobs") else None
    return completion(req, plan_text(plan), logprobs=lp)


def completion(req: dict, content: str, *, finish: str = "stop", logprobs: dict | None = None,
               choices: bool = True) -> dict:
    prompt = "".join(text_of(m.get("content")) for m in req.get("messages") or [] if isinstance(m, dict))
    ptok, ctok = len(prompt) // 4, max(1, (len(content) + 3) // 4)
    choice = {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
              "logprobs": logprobs, "finish_reason": finish}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": str(req.get("model") or MODEL), "choices": [choice] if choices else [],
            "usage": {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok},
            "system_fingerprint": "fp_fake"}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def reasoning_refusal(req: dict) -> dict | None:
    """The 400 body a reasoning model gives for a chat-style parameter, or None (messages as OpenAI's)."""
    if "max_tokens" in req:
        return error_body("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                          "'max_completion_tokens' instead.", "invalid_request_error", "unsupported_parameter",
                          "max_tokens")
    if req.get("temperature") not in (None, 1, 1.0):
        return error_body(f"Unsupported value: 'temperature' does not support {req['temperature']!r} with this "
                          "model. Only the default (1) value is supported.", "invalid_request_error",
                          "unsupported_value", "temperature")
    for param in ("logprobs", "top_logprobs"):
        if req.get(param) not in (None, False):
            return error_body(f"Unsupported parameter: '{param}' is not supported with this model.",
                              "invalid_request_error", "unsupported_parameter", param)
    return None


def reasoning_completion(req: dict, content: str, reasoning: int) -> dict:
    """A reply that spent `reasoning` hidden tokens first: billed in completion_tokens, counted against
    max_completion_tokens; no room left after them -> empty content, finish_reason length."""
    cap = req.get("max_completion_tokens")
    visible = max(1, (len(content) + 3) // 4)
    finish = "stop"
    if cap is not None and reasoning + visible > int(cap):
        reasoning = min(reasoning, int(cap))
        room = int(cap) - reasoning
        content, visible, finish = content[:4 * room], room, "length"
    out = completion(req, content, finish=finish)
    usage = out["usage"]
    usage["completion_tokens"] = reasoning + visible
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage["completion_tokens_details"] = {"reasoning_tokens": reasoning, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0, "audio_tokens": 0}
    return out


def revise_text(blocks: dict[str, str]) -> str:
    """A critique or a revision, deterministic in the texts it was given. Markers in the original
    script the outcomes a test needs: MUTE -> an empty critique; UNCHANGED -> the revision is the
    original as given; RAMBLE -> a revision longer than any reply cap (cut off, finish_reason length)."""
    orig = blocks["original"]
    if "critique" not in blocks:
        return "" if "MUTE" in orig else f"Critique {sha(orig)[:8]}: lead with the answer, then give one reason."
    if "UNCHANGED" in orig:
        return orig
    tail = " and so on" * 2000 if "RAMBLE" in orig else ""
    return f"{orig} In short: revised after critique {sha(blocks['critique'])[:8]}.{tail}"


def text_completion(req: dict, content: str, reasoning: int | None) -> dict:
    """A text reply within the request's cap: cut to max_tokens (finish_reason length) when longer."""
    if reasoning is not None:
        return reasoning_completion(req, content, reasoning)
    cap = req.get("max_tokens")
    if cap is not None and (len(content) + 3) // 4 > int(cap):
        return completion(req, content[:4 * int(cap)], finish="length")
    return completion(req, content)


# ----------------------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-openai/1"
    sys_version = ""
    state: State  # set on the class by main()

    def log_message(self, format, *args):  # no access log: quiet stdout/stderr
        pass

    # -- plumbing

    def head(self, status: int, length: int, content_type: str = "application/json",
             extra: dict | None = None) -> bytes:
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Date: {self.date_time_string()}",
                 f"Server: {self.server_version}", f"Content-Type: {content_type}", f"Content-Length: {length}",
                 f"x-request-id: req_{uuid.uuid4().hex[:16]}"]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def peer_gone(self) -> bool:
        """True when the client has already closed its end (e.g. after its own timeout)."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            return bool(r) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             extra: dict | None = None) -> bool:
        """Write a whole reply; False when the client had gone or the write failed."""
        if self.peer_gone():
            self.close_connection = True
            return False
        try:
            self.wfile.write(self.head(status, len(body), content_type, extra) + body)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def send_json(self, status: int, obj, extra: dict | None = None) -> bool:
        return self.send(status, json.dumps(obj).encode(), extra=extra)

    def read_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw or b"null")

    def authorized(self) -> bool:
        key = self.state.api_key
        return (not key or self.headers.get("Authorization", "") == f"Bearer {key}") and self.url_credentials()

    def url_credentials(self) -> bool:
        """$FAKE_OPENAI_URL_AUTH=user:password requires the basic auth a base_url's userinfo gives;
        $FAKE_OPENAI_QUERY_KEY=K requires ?api-key=K (Azure style) on the request."""
        import base64
        from urllib.parse import parse_qs, urlsplit

        basic, qkey = os.environ.get("FAKE_OPENAI_URL_AUTH"), os.environ.get("FAKE_OPENAI_QUERY_KEY")
        if basic and self.headers.get("Authorization", "") != "Basic " + base64.b64encode(basic.encode()).decode():
            return False
        return not qkey or parse_qs(urlsplit(self.path).query).get("api-key") == [qkey]

    # -- routes

    def do_GET(self):
        try:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/health":
                self.send_json(200, {"status": "ok"})
            elif path == "/_stats":
                self.send_json(200, self.state.stats())
            elif path == "/v1/models":
                if not self.authorized():
                    with self.state.lock:
                        self.state.unauthorized += 1  # counted as a chat call's refusal is
                    self.send_json(401, error_body("Incorrect API key provided.", "invalid_request_error",
                                                   "invalid_api_key"))
                else:
                    self.send_json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": OWNED_BY} for m in MODELS]})
            else:
                self.send_json(404, error_body(f"Unknown path {path}", "invalid_request_error", "not_found"))
        except Exception:
            self.internal_error()

    def do_POST(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/_control":
                try:
                    self.send_json(200, self.state.control(self.read_json()))
                except (BadControl, ValueError, TypeError) as e:
                    self.send_json(400, error_body(str(e), "invalid_request_error", "bad_control"))
            elif path == "/v1/chat/completions":
                self.chat()
            else:
                self.read_json()
                self.send_json(404, error_body(f"Unknown path {path}", "invalid_request_error", "not_found"))
        except Exception:
            self.internal_error()

    def internal_error(self):
        print(f"fake_openai_server: error handling {self.command} {self.path.split('?', 1)[0]}:\n"
              f"{traceback.format_exc(limit=4)}", file=sys.stderr, flush=True)
        self.close_connection = True
        try:
            self.send_json(500, error_body("fake server bug (see its stderr)", "server_error", None))
        except Exception:
            pass

    def chat(self):
        st = self.state
        try:
            req = self.read_json()
        except ValueError:
            st.received(None)
            st.done()
            self.send_json(400, error_body("We could not parse the JSON body of your request.",
                                           "invalid_request_error", None))
            return
        messages = req.get("messages") if isinstance(req, dict) else None
        tokens = 0
        if isinstance(messages, list):
            chars = sum(len(text_of(m.get("content"))) for m in messages if isinstance(m, dict))
            tokens = chars // 3 + int(req.get("max_tokens") or req.get("max_completion_tokens") or 0)
        params = {k: v for k, v in req.items() if k != "messages"} if isinstance(req, dict) else {}
        st.received(body_key(messages) if messages is not None else None, tokens, params)
        try:
            self.chat_reply(req if isinstance(req, dict) else {}, messages)
        finally:
            st.done()

    def chat_reply(self, req: dict, messages):
        st = self.state
        if not self.authorized():
            with st.lock:
                st.unauthorized += 1
            self.send_json(401, error_body("Incorrect API key provided. You can find your API key at "
                                           "https://platform.openai.com/account/api-keys.",
                                           "invalid_request_error", "invalid_api_key"))
            return
        if not isinstance(messages, list) or not messages:
            self.send_json(400, error_body("'messages' is a required property", "invalid_request_error",
                                           None, "messages"))
            return
        wait = st.rate_limited()
        if wait is not None:
            self.send_json(429, error_body(f"Rate limit reached for {MODEL} on requests per min (RPM): "
                                           "Please try again later.", "requests", "rate_limit_exceeded",
                                           "requests"),
                           {"Retry-After": f"{max(wait, 0.001):.3f}", "x-ratelimit-remaining-requests": "0"})
            return
        with st.lock:
            latency, reasoning = st.latency, (st.reasoning_tokens if st.reasoning else None)
        refusal = reasoning_refusal(req) if reasoning is not None else None
        if refusal is None and "structured_outputs" in req and OWNED_BY != "vllm":
            refusal = error_body("Unrecognized request argument supplied: structured_outputs",
                                 "invalid_request_error", "unrecognized_argument", "structured_outputs")
        if refusal is not None:  # parameters are checked before any work, as the real API does
            with st.lock:
                st.fault_counts[refusal["error"]["code"]] += 1
            self.send_json(400, refusal)
            return
        if latency:
            time.sleep(latency)
        fault = st.take_fault()
        kind = fault["type"] if fault else None

        if kind == "429":
            extra = {}
            if fault.get("retry_after") is not None:
                ra = float(fault["retry_after"])
                extra["Retry-After"] = str(int(ra)) if ra.is_integer() else repr(ra)
            if fault.get("retry_after_ms") is not None:
                extra["retry-after-ms"] = str(fault["retry_after_ms"])
            extra["x-ratelimit-remaining-requests"] = "0"
            self.send_json(429, error_body(f"Rate limit reached for {MODEL} on requests per min (RPM): "
                                           "Limit 60, Used 60, Requested 1. Please try again later.",
                                           "requests", "rate_limit_exceeded", "requests"), extra)
            return
        if kind == "quota":
            self.send_json(429, error_body("You exceeded your current quota, please check your plan and billing "
                                           "details. For more information on this error, read the docs: "
                                           "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                                           "insufficient_quota", "insufficient_quota"))
            return
        if kind == "500":
            self.send_json(500, error_body("The server had an error while processing your request. Sorry about "
                                           "that!", "server_error", None))
            return
        if kind == "503":
            self.send_json(503, error_body("The engine is currently overloaded, please try again later.",
                                           "server_error", None))
            return
        if kind == "400":
            self.send_json(400, error_body(str(fault.get("message") or "Bad request"), "invalid_request_error",
                                           fault.get("code"), fault.get("param")))
            return
        if kind == "malformed":
            self.send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "message": <html>upstream error',
                      content_type=str(fault.get("content_type") or "application/json"))
            return
        if kind == "empty_choices":
            self.send_json(200, completion(req, "", choices=False))
            return
        if kind in ("text", "length"):
            self.send_json(200, completion(req, str(fault.get("content", "")),
                                           finish="stop" if kind == "text" else "length"))
            return

        user = [text_of(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        blocks = dict(BLOCK.findall(user[-1] if user else ""))
        known = lambda b: ("A" in b and "B" in b) or "R" in b or "original" in b  # noqa: E731
        if not known(blocks):
            allt = "\n".join(text_of(m.get("content")) for m in messages if isinstance(m, dict))
            blocks = dict(BLOCK.findall(allt))
        if not known(blocks):
            self.send_json(400, error_body("fake-judge: no <<<BEGIN_DATA id=A/B>>> or id=R blocks in the prompt",
                                           "invalid_request_error", "unrecognised_prompt", "messages"))
            return
        if "original" in blocks:  # a critique or revision: text, no logprobs
            reply = text_completion(req, revise_text(blocks), reasoning)
        else:
            allt = "\n".join(text_of(m.get("content")) for m in messages if isinstance(m, dict))
            reply = verdict_completion(st, req, blocks, allt, reasoning)
        if reasoning is not None and not reply["choices"][0]["message"]["content"]:  # reasoning used the whole cap
            with st.lock:
                st.fault_counts["reasoning_cut_off"] += 1
            self.send_json(200, reply)
            return
        body = json.dumps(reply).encode()

        if kind == "hang":
            time.sleep(float(fault.get("seconds", 30)))
        if kind == "drop":
            self.close_connection = True
            head = self.head(200, len(body))
            try:
                self.wfile.write(head + body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # FIN mid-body: the reply can never complete
            except OSError:
                pass
            return
        if kind == "drip":
            seconds = float(fault.get("seconds", 5))
            chunks = max(1, min(int(fault.get("chunks") or len(body)), len(body)))
            step = -(-len(body) // chunks)
            gap = seconds / chunks
            try:
                self.wfile.write(self.head(200, len(body)))
                self.wfile.flush()
                for i in range(0, len(body), step):
                    time.sleep(gap)
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
            except OSError:
                self.close_connection = True
                return
            sent = not self.peer_gone()
        else:
            sent = self.send(200, body)
        if sent:
            key = body_key(messages)
            with st.lock:
                st.ok += 1
                st.ok_by_body[key] += 1


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client hanging up is not our error
        print(f"fake_openai_server: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-key", default=None, help="require this Bearer key (default: $FAKE_OPENAI_API_KEY)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds slept before every chat reply")
    ap.add_argument("--policy", default="hash")
    ap.add_argument("--reasoning", action="store_true", help="answer as a reasoning model (see the docstring)")
    ap.add_argument("--reasoning-tokens", type=int, default=40, help="hidden reasoning tokens billed per reply")
    ap.add_argument("--model", default=None, help="ignored: lets rlaif's judge.serve start this server as `vllm serve`")
    ap.add_argument("--gpu-memory-utilization", default=None, help="ignored, as --model")
    args = ap.parse_args(argv)
    try:
        state = State(args.api_key or os.environ.get("FAKE_OPENAI_API_KEY") or None, args.policy, args.seed,
                      args.latency, args.reasoning, max(0, args.reasoning_tokens))
    except BadControl as e:
        ap.error(str(e))
    Handler.state = state
    httpd = Server((args.host, args.port), Handler)
    print(f"PORT {httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
