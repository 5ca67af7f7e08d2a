"""`rlaif review RUN_DIR`: a local page over a run folder, and the labelling mode behind it.

    rlaif review runs/quickstart              # http://127.0.0.1:8765/
    rlaif review runs/quickstart --export gold.jsonl

The standard library's ThreadingHTTPServer on 127.0.0.1 only: one HTML page (page.html,
inline JS and CSS, no CDN: these machines are offline) and a few JSON endpoints. Everything shown
is read from the run folder's files (data.py; the calibration tab: calibration.py, the gold pairs
where `rlaif calibrate`'s judge disagreed with people); the only thing written is
RUN_DIR/human-labels.sqlite (labels.py), one transaction per click.

The labelling sample is blind: the page gets two texts in slots A and B (order seeded per item)
and nothing else, no candidate ids, verdicts, margins or filter status; it sends back A, B or
tie, which the server turns into candidate terms before storing.

A label request must come from this page: JSON only (a cross-site form cannot send it without a
CORS preflight, which is never answered) with a Host and Origin of this server (no DNS rebinding).
"""
from __future__ import annotations

import json
import sys
import traceback
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from rlaif.errors import UserError
from rlaif.review import calibration, data
from rlaif.review.labels import FILENAME, LabelStore, run_agreement
from rlaif.judge.pairs.filter import FILTERS

PAGE = Path(__file__).with_name("page.html")
MAX_BODY = 4096  # a label request is ~100 bytes


class Review:
    """The run folder, the sample's size and seed, and the label store: what every request needs."""

    def __init__(self, run_dir: Path, n: int, seed: int) -> None:
        if not Path(run_dir).is_dir():
            raise UserError(f"{run_dir}: no such run folder")
        self.run_dir, self.n, self.seed = Path(run_dir), n, seed
        self.store = LabelStore(self.run_dir / FILENAME)

    def rounds(self) -> dict:
        out = []
        for k in data.rounds(self.run_dir):
            _, meta = data.load_round(self.run_dir, k)
            out.append(meta)
        return {"run_dir": str(self.run_dir), "rounds": out, "filters": list(FILTERS),
                "sample": {"n": self.n, "seed": self.seed}}

    def round(self, q: dict) -> dict:
        k = _int(q, "k", 0)
        df, meta = data.load_round(self.run_dir, k)
        total, rows = data.query(df, q.get("status", ""), q.get("outcome", ""), _int(q, "min_diff"),
                                 _int(q, "max_diff"), q.get("sort", "prompt") or "prompt", _int(q, "offset", 0),
                                 min(_int(q, "limit", 20), 200))
        return {"round": k, "total": total, "rows": rows, "meta": meta}

    def _sample(self) -> dict[str, dict]:
        sig = tuple(data.signature(self.run_dir, k) for k in data.rounds(self.run_dir))
        return _sample_cached(self.run_dir, self.n, self.seed, sig)

    def sample(self) -> dict:
        labels = self.store.labels()
        items = [{"item_id": i, "round": it["round"], "messages": it["messages"],
                  "A": _slot_text(it, "A"), "B": _slot_text(it, "B"), "label": _to_slot(it, labels.get(i))}
                 for i, it in self._sample().items()]
        return {"items": items, "agreement": run_agreement(self.run_dir)}

    def label(self, body: dict) -> dict:
        item = self._sample().get(str(body.get("item_id")))
        choice = body.get("choice")
        if item is None:
            raise UserError(f"item {body.get('item_id')!r}: not in this page's labelling sample")
        if choice not in ("A", "B", "tie"):
            raise UserError(f"choice {choice!r}: expected A, B or tie")
        human = _to_human(item, choice)
        self.store.put(item, human)
        return {"item_id": item["item_id"], "label": choice, "agreement": run_agreement(self.run_dir)}


@lru_cache(maxsize=4)
def _sample_cached(run_dir: Path, n: int, seed: int, sig: tuple) -> dict[str, dict]:
    return {it["item_id"]: it for it in data.sample(run_dir, n, seed)}


def _slot_text(item: dict, slot: str) -> str:
    first_is_a = item["shown_first"] == item["a_id"]
    return item["response_a"] if (slot == "A") == first_is_a else item["response_b"]


def _to_human(item: dict, choice: str) -> str:
    """A slot choice -> the label in candidate terms (a: the smaller candidate id is better)."""
    if choice == "tie":
        return "tie"
    winner = item["shown_first"] if choice == "A" else (item["b_id"] if item["shown_first"] == item["a_id"]
                                                        else item["a_id"])
    return "a" if winner == item["a_id"] else "b"


def _to_slot(item: dict, human: str | None) -> str | None:
    if human is None or human == "tie":
        return human
    winner = item["a_id"] if human == "a" else item["b_id"]
    return "A" if winner == item["shown_first"] else "B"


def _int(q: dict, key: str, default: int | None = None) -> int | None:
    v = q.get(key, "")
    if v in ("", None):
        return default
    try:
        return int(v)
    except ValueError:
        raise UserError(f"query {key}={v!r}: expected an integer") from None


class Handler(BaseHTTPRequestHandler):
    review: Review  # set on the subclass make_server builds
    server_version = "rlaif-review"

    def log_message(self, fmt, *args) -> None:  # one line per request is noise; errors are printed below
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj, ensure_ascii=False, default=str).encode(), "application/json; charset=utf-8")

    def _ours(self) -> bool:
        port = self.server.server_address[1]
        hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        origin = self.headers.get("Origin")
        return self.headers.get("Host") in hosts and (origin is None or origin in {f"http://{h}" for h in hosts})

    def _answer(self, fn) -> None:
        try:
            if not self._ours():
                return self._json(403, {"error": "requests must come from this page on 127.0.0.1"})
            self._json(200, fn())
        except UserError as e:
            self._json(400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the page shows the error, the terminal the traceback
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"{type(e).__name__}: {e}"})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        routes = {"/api/health": lambda: {"ok": True}, "/api/rounds": self.review.rounds,
                  "/api/round": lambda: self.review.round(q), "/api/sample": self.review.sample,
                  "/api/agreement": lambda: run_agreement(self.review.run_dir),
                  "/api/calibration": lambda: calibration.disagreements(self.review.run_dir)}
        if url.path in ("/", "/index.html"):
            return self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        if url.path not in routes:
            return self._json(404, {"error": f"no such page {url.path}"})
        self._answer(routes[url.path])

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/api/label":
            return self._json(404, {"error": f"no such endpoint {self.path}"})
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._json(415, {"error": "send JSON (Content-Type: application/json)"})
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BODY:
            return self._json(413, {"error": "request too large"})
        try:
            body = json.loads(self.rfile.read(size) or b"{}")
        except ValueError:
            return self._json(400, {"error": "body: not JSON"})
        self._answer(lambda: self.review.label(body if isinstance(body, dict) else {}))


def make_server(run_dir: str | Path, port: int = 8765, n: int = 100, seed: int = 0) -> ThreadingHTTPServer:
    review = Review(Path(run_dir), n, seed)
    handler = type("ReviewHandler", (Handler,), {"review": review})
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise UserError(f"127.0.0.1:{port}: cannot listen ({e.strerror}); pass --port 0 for a free port") from None


def serve(run_dir: str | Path, port: int = 8765, n: int = 100, seed: int = 0) -> int:
    srv = make_server(run_dir, port, n, seed)
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    print(f"rlaif review: {run_dir} on {url}  (labels -> {Path(run_dir) / FILENAME}; Ctrl-C stops)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0

