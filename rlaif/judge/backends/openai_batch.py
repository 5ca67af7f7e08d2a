"""Judging through the OpenAI Batch API (judge.mode_api=batch): the same calls at the batch price.

The pending calls (those the ledger has no reply for, and the budget admits: rlaif/judge/runner.py)
become JSONL request files, `custom_id` = ledger key, cut where the next request would pass
judge.batch_max_requests, judge.batch_max_bytes or judge.batch_max_enqueued_tokens (the provider's
per-batch limits; OpenAI: 50,000 requests and 200 MB per batch, and enqueued prompt tokens per model
and usage tier, counted over every batch in its queue). So a chunk is submitted only while the
chunks of this run in the queue leave it room under batch_max_enqueued_tokens; the rest wait for
one to finish. Every remote step is preceded by a ledger write, so a crash anywhere resumes
instead of paying twice:

    planned   chunk id and keys committed (one transaction for all new chunks)
    uploaded  files.create(purpose="batch") returned input_file_id
    submitted batches.create(..., metadata={"rlaif_chunk": chunk_id}) returned batch_id; just before
              it, the calls' budget reservations pass to the chunk (Ledger.move_reservations), so what
              the batch will cost stays counted after this process ends
    done      output and error files downloaded and every line folded into the ledger

With submit_only (rlaif judge --submit-only) the run ends once its chunks are submitted, without
waiting: chunks submitted earlier are retrieved once each and folded if they have finished; a
later run adopts the rest from the ledger, polls and collects them.

A crash between batches.create and recording its id is the one gap: a rerun looks for a batch
whose metadata names the chunk (batches.list) and adopts it before creating anything. A crash
during download refetches the files (downloads are free) and folds only keys not yet done.
Expired or failed items are stored as errors (a rerun puts them in a new batch), or sent live at
once with judge.batch_fallback_live. Shapes follow the Batch API reference
(platform.openai.com/docs/api-reference/batch): request lines {custom_id, method, url, body},
result lines {id, custom_id, response: {status_code, request_id, body}, error}.
"""
from __future__ import annotations

import json
import sys
import time
import uuid

from rlaif.config import JudgeConfig
from rlaif.judge.backends import Call, Reply
from rlaif.judge.ledger import BATCH_OWNER, Ledger

TERMINAL = {"completed", "expired", "failed", "cancelled"}


def request_line(call: Call, cfg: JudgeConfig, model: str) -> bytes:
    """One request line, its body built as a live call's (no auto switch: a refusal is a per-item error)."""
    from rlaif.judge.backends.openai_chat import request_body, start_style

    body = request_body(start_style(cfg, model), call, cfg, model)
    return (json.dumps({"custom_id": call.key, "method": "POST", "url": "/v1/chat/completions", "body": body},
                       ensure_ascii=False) + "\n").encode()


def split(calls: list[Call], cfg: JudgeConfig, model: str) -> list[list[Call]]:
    """Chunks within the per-batch request, byte and enqueued-token limits, in call order. Tokens are
    the calls' input estimates (characters / 3: above what a tokenizer counts for English text)."""
    chunks, cur, size, tokens = [], [], 0, 0
    max_tokens = cfg.batch_max_enqueued_tokens
    for c in calls:
        n = len(request_line(c, cfg, model))
        if cur and (len(cur) >= cfg.batch_max_requests or size + n > cfg.batch_max_bytes
                    or (max_tokens is not None and tokens + c.est_input_tokens > max_tokens)):
            chunks.append(cur)
            cur, size, tokens = [], 0, 0
        cur.append(c)
        size += n
        tokens += c.est_input_tokens
    return chunks + ([cur] if cur else [])


def batch_error(batch) -> str:
    """A batch's own errors (a batch refused at validation: over a limit, a bad file), one line."""
    data = getattr(getattr(batch, "errors", None), "data", None) or []
    if not data:
        return f"batch {batch.id} {batch.status}: no result for this request"
    e = data[0]
    return (f"batch {batch.id} {batch.status}: {e.code or 'error'}: {str(e.message or '')[:240]} (each batch is "
            "kept within judge.batch_max_requests, batch_max_bytes and batch_max_enqueued_tokens: set them to "
            "your provider's limits)")


def _reply_from_line(line: dict) -> Reply:
    """A result or error line as a Reply; anything but a 200 chat completion is an error (retried later)."""
    from openai.types.chat import ChatCompletion

    from rlaif.judge.backends.openai_chat import _reply

    resp, err = line.get("response") or {}, line.get("error")
    if err:
        return Reply(error=f"batch item: {err.get('code') or 'error'}: {str(err.get('message') or '')[:200]}")
    if resp.get("status_code") != 200:
        msg = ((resp.get("body") or {}).get("error") or {}).get("message") or ""
        return Reply(error=f"batch item: HTTP {resp.get('status_code')}: {str(msg)[:200]}")
    try:
        return _reply(ChatCompletion.model_validate(resp["body"]), 0.0)
    except (KeyError, TypeError, ValueError) as e:
        return Reply(error=f"batch item: unreadable body ({type(e).__name__})")


class BatchJudge:
    """Same contract as the live backends: run(calls, on_reply); all calls are pulled at planning."""

    def __init__(self, cfg: JudgeConfig, model: str, ledger: Ledger, on_retry=None, owner: str | None = None,
                 submit_only: bool = False, **_) -> None:
        import openai

        self.cfg, self.model, self.ledger, self.on_retry = cfg, model, ledger, on_retry
        self.owner, self.submit_only = owner, submit_only  # owner: the Runner's reservations (a budget is set)
        self.client = openai.OpenAI(**cfg.client_args(), max_retries=5,  # the key, or none (api_key_env null)
                                    timeout=max(cfg.timeout_for("chat"), 120))
        self.stats = {"chunks_submitted": 0, "chunks_adopted": 0, "calls_submitted": 0, "batches_polled": 0,
                      "batches_failed": 0, "fallback_live": 0}
        self.outstanding = 0  # calls in chunks left open when run() returns (submit_only)

    # -- the remote steps, each recorded first or right after

    def _upload(self, chunk: dict, calls: dict[str, Call]) -> None:
        data = b"".join(request_line(calls[k], self.cfg, self.model) for k in chunk["keys"])
        f = self.client.files.create(file=(f"rlaif-{chunk['chunk_id']}.jsonl", data), purpose="batch")
        chunk.update(status="uploaded", input_file_id=f.id)
        self.ledger.update_chunk(chunk["chunk_id"], status="uploaded", input_file_id=f.id)

    def _find(self, chunk: dict):
        """A batch already created for this chunk (a crash hid its id from the ledger), or None."""
        for b in self.client.batches.list(limit=100):
            if (b.metadata or {}).get("rlaif_chunk") == chunk["chunk_id"]:
                return b
            if b.created_at < (chunk["created_at"] or 0) - 3600:  # newest first: older ones cannot be ours
                return None
        return None

    def _submit(self, chunk: dict) -> None:
        if self.owner:  # from here on the batch may exist: its cost is held for it, past this process
            self.ledger.move_reservations(chunk["keys"], self.owner, BATCH_OWNER + chunk["chunk_id"])
        b = self._find(chunk)
        if b is not None:
            self.stats["chunks_adopted"] += 1
        else:
            b = self.client.batches.create(input_file_id=chunk["input_file_id"], endpoint="/v1/chat/completions",
                                           completion_window=self.cfg.batch_completion_window,
                                           metadata={"rlaif_chunk": chunk["chunk_id"]})
            self.stats["chunks_submitted"] += 1
            self.stats["calls_submitted"] += len(chunk["keys"])
        chunk.update(status="submitted", batch_id=b.id)
        self.ledger.update_chunk(chunk["chunk_id"], status="submitted", batch_id=b.id, batch_status=b.status)

    def _lines(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        text = self.client.files.content(file_id).text
        out = []
        for ln in text.splitlines():
            try:
                if ln.strip():
                    out.append(json.loads(ln))
            except ValueError:
                continue  # an unreadable line leaves its key pending: stored as missing below
        return out

    def _fold(self, chunk: dict, batch, calls: dict[str, Call], on_reply) -> list[Call]:
        """Every result into the ledger; returns the calls that got no reply (for live fallback)."""
        done = self.ledger.done_keys(chunk["keys"])
        seen, missing, why = set(), [], batch_error(batch)
        if batch.status == "failed":
            self.stats["batches_failed"] += 1
            print(f"judge: {why}", file=sys.stderr)
        for line in self._lines(batch.output_file_id) + self._lines(batch.error_file_id):
            key = line.get("custom_id")
            if key in seen or key in done or key not in calls:
                continue
            seen.add(key)
            reply = _reply_from_line(line)
            if reply.error and self.cfg.batch_fallback_live:
                missing.append(calls[key])
            else:
                on_reply(calls[key], reply)
        for key in chunk["keys"]:
            if key not in seen and key not in done and key in calls:
                if self.cfg.batch_fallback_live:
                    missing.append(calls[key])
                else:
                    on_reply(calls[key], Reply(error=why))
        if self.owner:  # calls sent live next are this process's again; what got no result holds nothing
            self.ledger.move_reservations([c.key for c in missing], BATCH_OWNER + chunk["chunk_id"], self.owner)
        self.ledger.release(BATCH_OWNER + chunk["chunk_id"])
        return missing

    # -- the loop

    def _plan(self, calls: list[Call], by_key: dict[str, Call]) -> list[dict]:
        """The open chunks after adding this run's new ones; a chunk never submitted whose calls are
        no longer all planned is dropped."""
        chunks = self.ledger.open_chunks()
        open_keys = {k for ch in chunks for k in ch["keys"]}
        for ch in [c for c in chunks if c["status"] in ("planned", "uploaded")]:
            if not all(k in by_key for k in ch["keys"]) and (ch["status"] == "planned" or self._find(ch) is None):
                self.ledger.drop_chunk(ch["chunk_id"])  # never submitted, and its calls are no longer planned
                self.ledger.release(BATCH_OWNER + ch["chunk_id"])
                chunks.remove(ch)
                open_keys -= set(ch["keys"])
        new = [c for c in calls if c.key not in open_keys]
        planned = [(uuid.uuid4().hex[:16], [c.key for c in part]) for part in split(new, self.cfg, self.model)]
        if planned:
            self.ledger.add_chunks(planned)
        chunks = self.ledger.open_chunks()
        resumed = sum(1 for c in chunks if c["status"] != "planned")
        print(f"judge: batch mode: {len(planned)} new batch(es), {resumed} resumed", file=sys.stderr)
        return chunks

    def _tokens(self, chunk: dict, by_key: dict[str, Call]) -> int:
        return sum(by_key[k].est_input_tokens for k in chunk["keys"] if k in by_key)

    def _submit_ready(self, waiting: list[dict], pending: list[dict], by_key: dict[str, Call]) -> list[dict]:
        """Upload and submit waiting chunks, in order, while the queue has room for their tokens
        (judge.batch_max_enqueued_tokens; with nothing of ours in flight the next chunk always goes:
        split() keeps a chunk within the limit unless one call alone passes it). Returns the rest."""
        limit, rest = self.cfg.batch_max_enqueued_tokens, []
        queued = sum(self._tokens(ch, by_key) for ch in pending)
        for ch in waiting:
            size = self._tokens(ch, by_key)
            if rest or (limit is not None and pending and queued + size > limit):
                rest.append(ch)
                continue
            if ch["status"] == "planned":
                self._upload(ch, by_key)
            self._submit(ch)
            pending.append(ch)
            queued += size
        return rest

    def _poll(self, pending: list[dict], by_key: dict[str, Call], on_reply, fallback: list[Call]) -> bool:
        """One retrieve per pending chunk; finished ones are folded and leave `pending`. True if any did."""
        finished = False
        for ch in list(pending):
            b = self.client.batches.retrieve(ch["batch_id"])
            self.stats["batches_polled"] += 1
            if b.status in TERMINAL:
                fallback += self._fold(ch, b, by_key, on_reply)
                self.ledger.update_chunk(ch["chunk_id"], status="done", batch_status=b.status)
                pending.remove(ch)
                finished = True
            elif b.status != ch.get("batch_status"):
                self.ledger.update_chunk(ch["chunk_id"], batch_status=b.status)
                ch["batch_status"] = b.status
        return finished

    def run(self, calls, on_reply) -> None:
        calls = list(calls)  # the stage's iterator ends where its budget does: what it yields is admitted
        by_key = {c.key: c for c in calls}
        chunks = self._plan(calls, by_key)
        pending = [c for c in chunks if c["status"] == "submitted"]
        waiting = [c for c in chunks if c["status"] in ("planned", "uploaded")]
        fallback: list[Call] = []
        wait = self.cfg.batch_poll_s
        if self.submit_only and pending:  # collect what has finished (one retrieve each), wait for nothing
            self._poll(pending, by_key, on_reply, fallback)
        while True:
            waiting = self._submit_ready(waiting, pending, by_key)
            if self.submit_only or not pending:
                break
            if self._poll(pending, by_key, on_reply, fallback) and waiting:
                continue  # room in the queue: submit the next chunk before waiting
            if pending:
                rc = ", ".join(f"{c['batch_id']} {c['batch_status']}" for c in pending[:3])
                more = f", {len(waiting)} waiting for queue room" if waiting else ""
                print(f"judge: waiting for {len(pending)} batch(es) ({rc}{more}); next poll in {wait:g}s",
                      file=sys.stderr)
                time.sleep(wait)
                wait = min(wait * 2, self.cfg.batch_max_poll_s)
        self.outstanding = sum(len(c["keys"]) for c in pending + waiting)
        self.in_flight = len(pending)
        if fallback:
            self._live(fallback, on_reply)

    def _live(self, fallback: list[Call], on_reply) -> None:
        from rlaif.judge.backends.openai_chat import OpenAIJudge

        print(f"judge: {len(fallback)} expired or failed batch items sent live (judge.batch_fallback_live)",
              file=sys.stderr)
        self.stats["fallback_live"] += len(fallback)

        def live(call: Call, reply: Reply) -> None:  # priced at the live rate, not the batch rate
            reply.extra["live"] = True
            on_reply(call, reply)

        OpenAIJudge(self.cfg, self.model, on_retry=self.on_retry).run(fallback, live)
