"""A scripted OpenAI Batch API server for tests (standard library only).

    python tests/fake_batch_server.py --port 0 [--seed 0] [--policy hash] [--max-requests N]
        [--max-bytes N] [--max-enqueued-tokens N]                     (key: $FAKE_OPENAI_API_KEY)

Prints ``PORT <n>`` first. Verdicts come from fake_openai_server's scripted judge, so a batch and
a live run give the same answers. Shapes follow the Batch API reference
(platform.openai.com/docs/api-reference/batch and /files).

Endpoints
  POST /v1/files                      multipart (purpose, file) -> file object
  GET  /v1/files/{id}/content         the file's bytes (input JSONL, or output/error JSONL)
  POST /v1/batches                    {input_file_id, endpoint, completion_window, metadata} -> batch
  GET  /v1/batches/{id}               the batch; each retrieve advances it one step:
                                      validating -> in_progress (x polls_in_progress) -> outcome
  GET  /v1/batches?limit=&after=      newest first, cursor pagination
  GET  /v1/models                     fake_openai_server's models (rlaif check's free request)
  POST /v1/chat/completions           live calls (for the fallback of expired items)
  POST /_control  {"outcome": "completed"|"expired"|"failed", "polls_in_progress": int,
                   "expire_share": float (share of items left unfinished by "expired"),
                   "item_error_share": float (share answered with HTTP 500 in the error file),
                   "hang": {"at": "upload"|"create"|"retrieve"|"content", "seconds": s} | null,
                   "max_requests" | "max_bytes" | "max_enqueued_tokens": int | null,
                   "reset": true}
       Limits are checked when a batch leaves "validating", as the real API does: over one, the
       batch is "failed" with errors {"object": "list", "data": [{code, message, line, param}]}.
       Enqueued tokens (the real limit is per model, over every batch queued and in progress):
       this batch's prompt tokens (characters / 4, as replies bill them) plus those of the batches
       in progress; over it -> code "token_limit_exceeded" ("Enqueued token limit reached for ...",
       the wording users report from api.openai.com; Azure uses the same code). Over max_requests or
       max_bytes -> code "invalid_request" (this fake's choice; the byte message is the real one).
       A hang at "upload"/"create" happens AFTER the file/batch is stored: the client dies not
       knowing the id, which is the case idempotent submission must survive.
  GET  /_stats  {"uploads", "batches_created", "retrieves", "downloads", "live_calls",
                 "submitted": {custom_id: times it entered a created batch}, "hung": {at: count},
                 "rejected": {code: batches failed at validation}, "max_enqueued_tokens": the most
                 prompt tokens queued at once (validated batches in progress), "models": GETs of /v1/models}
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_openai_server  # noqa: E402
from fake_openai_server import BLOCK, State, error_body, text_of, verdict_completion  # noqa: E402

MODELS = getattr(fake_openai_server, "MODELS", [fake_openai_server.MODEL])


def prompt_tokens(line: dict) -> int:
    """A request line's prompt tokens as the fake bills them (fake_openai_server.completion)."""
    msgs = (line.get("body") or {}).get("messages") or []
    return len("".join(text_of(m.get("content")) for m in msgs if isinstance(m, dict))) // 4


class Batches:
    def __init__(self, api_key: str | None, policy: str, seed: int, limits: dict | None = None) -> None:
        self.lock = threading.Lock()
        self.api_key = api_key
        self.judge_state = State(None, policy, seed, 0.0)
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.order: list[str] = []
        self.settings = {"outcome": "completed", "polls_in_progress": 1, "expire_share": 0.5,
                         "item_error_share": 0.0, "hang": None, "max_requests": None, "max_bytes": None,
                         "max_enqueued_tokens": None, **(limits or {})}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {"uploads": 0, "batches_created": 0, "retrieves": 0, "downloads": 0, "live_calls": 0,
                      "submitted": Counter(), "hung": Counter(), "rejected": Counter(), "max_enqueued_tokens": 0,
                      "models": 0}

    def validate(self, b: dict) -> None:
        """validating -> in_progress, or failed when the batch passes a limit (under the lock)."""
        s, f, now = self.settings, self.files[b["input_file_id"]], int(time.time())
        queued = b["_tokens"] + sum(x["_tokens"] for x in self.batches.values() if x["status"] == "in_progress")
        err = None
        if s["max_requests"] is not None and b["_requests"] > s["max_requests"]:
            err = ("invalid_request", f"The batch input file has {b['_requests']} requests, more than the "
                   f"{s['max_requests']} maximum. Please try again with a smaller batch.")
        elif s["max_bytes"] is not None and f["bytes"] > s["max_bytes"]:
            err = ("invalid_request", f"The batch input file is larger than the {s['max_bytes']} maximum for the "
                   f"{b['_model']} model. Please try again with a smaller batch.")
        elif s["max_enqueued_tokens"] is not None and queued > s["max_enqueued_tokens"]:
            err = ("token_limit_exceeded", f"Enqueued token limit reached for {b['_model']} in organization "
                   f"org-fake. Limit: {s['max_enqueued_tokens']:,} enqueued tokens. Please try again once some "
                   "in_progress batches have been completed.")
        if err:
            self.stats["rejected"][err[0]] += 1
            b.update(status="failed", failed_at=now, errors={"object": "list", "data": [
                {"code": err[0], "message": err[1], "line": None, "param": None}]})
            return
        b.update(status="in_progress", in_progress_at=now)
        self.stats["max_enqueued_tokens"] = max(self.stats["max_enqueued_tokens"], queued)

    def answer(self, body: dict) -> dict:
        msgs = body.get("messages") or []
        user = [text_of(m.get("content")) for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        blocks = dict(BLOCK.findall(user[-1] if user else ""))
        prompt = "\n".join(text_of(m.get("content")) for m in msgs if isinstance(m, dict))
        return verdict_completion(self.judge_state, body, blocks, prompt, None)  # what a live call gets

    def new_file(self, name: str, data: bytes, purpose: str) -> dict:
        fid = f"file-{uuid.uuid4().hex[:20]}"
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": name, "purpose": purpose, "status": "processed", "_data": data}
        return self.files[fid]

    def finish(self, b: dict) -> None:
        """Run the batch's requests and write its output / error files (under the lock)."""
        s = self.settings
        lines = [json.loads(ln) for ln in self.files[b["input_file_id"]]["_data"].decode().splitlines() if ln.strip()]
        now = int(time.time())
        if s["outcome"] == "failed":
            b.update(status="failed", failed_at=now,
                     errors={"object": "list", "data": [{"code": "invalid_request", "message": "scripted failure",
                                                         "line": 1, "param": None}]},
                     request_counts={"total": len(lines), "completed": 0, "failed": 0})
            return
        out, err = [], []
        n_expire = int(len(lines) * s["expire_share"]) if s["outcome"] == "expired" else 0
        n_err = int(len(lines) * s["item_error_share"])
        for i, ln in enumerate(lines):
            rid = f"batch_req_{uuid.uuid4().hex[:16]}"
            if i < n_err:
                err.append({"id": rid, "custom_id": ln["custom_id"], "error": None,
                            "response": {"status_code": 500, "request_id": rid,
                                         "body": error_body("scripted item failure", "server_error", None)}})
            elif i >= len(lines) - n_expire:
                err.append({"id": rid, "custom_id": ln["custom_id"], "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed "
                                      "before the completion window expired."}})
            else:
                out.append({"id": rid, "custom_id": ln["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": rid, "body": self.answer(ln["body"])}})
        dump = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
        status = "expired" if s["outcome"] == "expired" else "completed"
        b.update(status=status, **{f"{status}_at": now}, output_file_id=self.new_file(
                 f"{b['id']}_output.jsonl", dump(out), "batch_output")["id"] if out else None,
                 error_file_id=self.new_file(f"{b['id']}_error.jsonl", dump(err), "batch_output")["id"] if err else None,
                 request_counts={"total": len(lines), "completed": len(out), "failed": len(err)})


def public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    st: Batches

    def log_message(self, format, *args):
        pass

    def send(self, status: int, payload, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def authorized(self) -> bool:
        if self.st.api_key and self.headers.get("Authorization") != f"Bearer {self.st.api_key}":
            self.send(401, error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
            return False
        return True

    def hang(self, at: str) -> None:
        with self.st.lock:
            h = self.st.settings["hang"]
            if not h or h.get("at") != at:
                return
            self.st.stats["hung"][at] += 1
        time.sleep(float(h.get("seconds", 30)))

    def do_GET(self):
        st = self.st
        if self.path == "/health":
            return self.send(200, {"status": "ok"})
        if self.path == "/_stats":
            with st.lock:
                return self.send(200, {**{k: v for k, v in st.stats.items()}, "submitted": dict(st.stats["submitted"]),
                                       "hung": dict(st.stats["hung"]), "rejected": dict(st.stats["rejected"])})
        if not self.authorized():
            return
        if self.path.split("?", 1)[0].rstrip("/") == "/v1/models":
            with st.lock:
                st.stats["models"] += 1
            return self.send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                              for m in MODELS]})
        if m := re.fullmatch(r"/v1/files/([\w-]+)/content", self.path):
            self.hang("content")
            with st.lock:
                f = st.files.get(m.group(1))
                st.stats["downloads"] += f is not None
            return self.send(200, None, raw=f["_data"]) if f else self.send(404, error_body("no such file", "invalid_request_error", None))
        if m := re.fullmatch(r"/v1/batches/([\w-]+)", self.path):
            self.hang("retrieve")
            with st.lock:
                b = st.batches.get(m.group(1))
                if b is None:
                    return self.send(404, error_body("no such batch", "invalid_request_error", None))
                st.stats["retrieves"] += 1
                if b["status"] == "validating":
                    st.validate(b)
                elif b["status"] == "in_progress":
                    b["_polls"] += 1
                    if b["_polls"] > st.settings["polls_in_progress"]:
                        st.finish(b)
                return self.send(200, public(b))
        if self.path.startswith("/v1/batches"):
            q = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
            with st.lock:
                ids = list(reversed(st.order))
                if "after" in q and q["after"] in ids:
                    ids = ids[ids.index(q["after"]) + 1:]
                limit = int(q.get("limit", 20))
                page = [public(st.batches[i]) for i in ids[:limit]]
            return self.send(200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                   "last_id": page[-1]["id"] if page else None, "has_more": len(ids) > limit})
        self.send(404, error_body(f"unknown path {self.path}", "invalid_request_error", None))

    def do_POST(self):
        st = self.st
        raw = self.body()
        if self.path == "/_control":
            cmd = json.loads(raw or b"{}")
            with st.lock:
                if cmd.pop("reset", False):
                    st.reset_stats()
                st.settings.update(cmd)
                return self.send(200, st.settings)
        if not self.authorized():
            return
        if self.path == "/v1/files":
            ctype = self.headers.get("Content-Type", "")
            boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
            fields = {}
            for part in raw.split(b"--" + boundary)[1:-1]:
                head, _, data = part.partition(b"\r\n\r\n")
                name = re.search(rb'name="([^"]+)"', head).group(1).decode()
                fname = re.search(rb'filename="([^"]+)"', head)
                fields[name] = (fname.group(1).decode() if fname else None, data[:-2])  # strip the part's CRLF
            with st.lock:
                f = st.new_file(fields["file"][0] or "upload.jsonl", fields["file"][1], fields["purpose"][1].decode())
                st.stats["uploads"] += 1
            self.hang("upload")
            return self.send(200, public(f))
        if self.path == "/v1/batches":
            req = json.loads(raw)
            with st.lock:
                f = st.files.get(req.get("input_file_id"))
                if f is None:
                    return self.send(400, error_body("input_file_id not found", "invalid_request_error", None))
                bid = f"batch_{uuid.uuid4().hex[:20]}"
                now = int(time.time())
                b = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                     "input_file_id": f["id"], "completion_window": req["completion_window"], "status": "validating",
                     "output_file_id": None, "error_file_id": None, "created_at": now, "expires_at": now + 86400,
                     "request_counts": {"total": 0, "completed": 0, "failed": 0},
                     "metadata": req.get("metadata"), "_polls": 0, "_tokens": 0, "_requests": 0, "_model": None}
                st.batches[bid] = b
                st.order.append(bid)
                st.stats["batches_created"] += 1
                for ln in f["_data"].decode().splitlines():
                    if ln.strip():
                        line = json.loads(ln)
                        st.stats["submitted"][line["custom_id"]] += 1
                        b.update(_tokens=b["_tokens"] + prompt_tokens(line), _requests=b["_requests"] + 1,
                                 _model=b["_model"] or (line.get("body") or {}).get("model"))
            self.hang("create")
            return self.send(200, public(b))
        if self.path == "/v1/chat/completions":
            req = json.loads(raw)
            with st.lock:
                st.stats["live_calls"] += 1
                ans = st.answer(req)
            return self.send(200, ans)
        self.send(404, error_body(f"unknown path {self.path}", "invalid_request_error", None))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)  # accepted for FakeJudgeServer's command line
    ap.add_argument("--policy", default="hash")
    ap.add_argument("--max-requests", type=int, default=None)
    ap.add_argument("--max-bytes", type=int, default=None)
    ap.add_argument("--max-enqueued-tokens", type=int, default=None)
    args = ap.parse_args()
    limits = {"max_requests": args.max_requests, "max_bytes": args.max_bytes,
              "max_enqueued_tokens": args.max_enqueued_tokens}
    Handler.st = Batches(os.environ.get("FAKE_OPENAI_API_KEY") or None, args.policy, args.seed, limits)
    httpd = Server(("127.0.0.1", args.port), Handler)
    print(f"PORT {httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
