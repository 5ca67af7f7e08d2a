"""Test servers run as real processes, modelled on vLLM's RemoteOpenAIServer test utility.

    with FakeJudgeServer(api_key="sk-test", policy="hash") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
        srv.control(faults=[{"type": "429", "retry_after": 1}])
        ...
        srv.stats()["ok_by_body"][body_key(messages)]
"""
from __future__ import annotations

import hashlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "fake_openai_server.py"


def body_key(messages: list[dict]) -> str:
    """The key of /_stats by_body and ok_by_body for a request with these messages."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()


def max_in_window(times: list[float], period: float, weights: list[int] | None = None) -> float:
    """The largest total weight (requests, or tokens) inside any closed window [t, t + period]:
    what a server counting a rate limit over a sliding window would see at its worst moment."""
    pts = sorted(zip(times, weights or [1] * len(times)))
    best = total = j = 0
    for t, w in pts:  # the window ends at each point; drop points more than `period` before it
        total += w
        while pts[j][0] < t - period:
            total -= pts[j][1]
            j += 1
        best = max(best, total)
    return best


class FakeJudgeServer:
    """tests/fake_openai_server.py in a subprocess on 127.0.0.1, a free port, up when constructed."""

    script = SERVER  # FakeBatchServer swaps in tests/fake_batch_server.py

    def __init__(self, api_key: str | None = None, policy: str = "hash", seed: int = 0, latency: float = 0.0,
                 *, reasoning: bool = False, startup_timeout: float = 30.0, env: dict | None = None):
        self.api_key = api_key
        self._stderr = tempfile.TemporaryFile()
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        full_env.pop("FAKE_OPENAI_API_KEY", None)
        if api_key:
            full_env["FAKE_OPENAI_API_KEY"] = api_key  # via the environment: never on a command line
        cmd = [sys.executable, str(self.script), "--port", "0", "--seed", str(seed), "--latency", str(latency),
               "--policy", policy] + (["--reasoning"] if reasoning else [])  # reasoning: see the server's docstring
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=full_env)
        try:
            self.port = self._read_port(startup_timeout)
            self._wait_healthy(startup_timeout)
        except BaseException:
            self.stop()
            raise

    # -- lifecycle

    def _read_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    line = self.proc.stdout.readline().decode().strip()
                    if line.startswith("PORT "):
                        return int(line.split()[1])
                    if not line and self.proc.poll() is not None:
                        break
                elif self.proc.poll() is not None:
                    break
        finally:
            sel.close()
        raise RuntimeError(f"fake judge server did not report its port: {self.stderr_tail()}")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake judge server exited ({self.proc.returncode}): {self.stderr_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"fake judge server not healthy after {timeout}s: {self.stderr_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> "FakeJudgeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._stderr.close()

    def stderr_tail(self, n: int = 4000) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")[-n:]
        except (OSError, ValueError):
            return ""

    # -- addresses

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- test-only endpoints

    def _call(self, method: str, path: str, payload: dict | None = None) -> dict:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path} -> {e.code}: {e.read().decode(errors='replace')}") from None

    def control(self, **kwargs) -> dict:
        """POST /_control: policy=, latency_s=, faults=[...], add_faults=[...], storm={...}|None, seed=, reset=True.
        Returns the server's settings after the change."""
        return self._call("POST", "/_control", kwargs)

    def stats(self) -> dict:
        return self._call("GET", "/_stats")

    def reset(self, policy: str = "hash") -> dict:
        """Back to a clean slate: given policy, no latency, no faults, no storm, no rate limit, zeroed stats."""
        return self.control(policy=policy, latency_s=0.0, faults=[], storm=None, rate_limit=None, reset=True)


class FakeBatchServer(FakeJudgeServer):
    """tests/fake_batch_server.py: /v1/files, /v1/batches and live chat calls; same controls and stats."""

    script = SERVER.parent / "fake_batch_server.py"
