"""The sandbox holds (issue 24, item 2): each hostile program is contained, counted as a failure,
and leaves the host and this process as they were. Small limits keep every case to seconds."""
from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from rlaif.errors import UserError
from rlaif.sandbox import Limits, extract_code, isolation, probe, run_test, run_tests, spawn

SMALL = Limits(cpu_s=1, wall_s=3, memory_mb=256, file_mb=4, procs=16, output_kb=16)


def test_the_kernel_gives_namespaces():
    info = isolation("strict")
    assert info["network"] == "namespace" and info["processes"] == "pid namespace"


def test_asserts_pass_and_fail():
    code = "def add(a, b):\n    return a + b\n"
    ok, bad = run_tests(code, ["assert add(2, 3) == 5", "assert add(2, 2) == 5"], SMALL)
    assert (ok.status, ok.exit_code, bad.status, bad.exit_code) == ("pass", 0, "fail", 1)
    assert ok.passed and not bad.passed
    assert "AssertionError" in bad.stderr.splitlines()[-1]


def test_stdin_stdout_cases():
    code = "a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\n"
    right, wrong = run_tests(code, [{"stdin": "2 3\n", "stdout": "5\n\n\n"}, {"stdin": "2 2", "stdout": "5"}], SMALL)
    assert (right.status, wrong.status) == ("pass", "fail")
    assert wrong.stdout.strip() == "4"


def test_a_loop_forever_times_out():
    assert run_test("while True:\n    pass\n", "", SMALL).status == "timeout"  # SIGXCPU after 1 s of CPU


def test_a_sleeper_is_killed_at_the_wall_time():
    result = run_test("import time\ntime.sleep(60)\n", "", SMALL)
    assert (result.status, result.exit_code) == ("timeout", None)


def test_ten_gigabytes_is_a_memory_failure():
    result = run_test("x = bytearray(10 * 1024 ** 3)\n", "", SMALL)
    assert result.status == "memory" and "MemoryError" in result.stderr


def _processes_with(token: str) -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            count += token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            pass
    return count


def test_a_fork_bomb_is_held_and_leaves_nothing():
    token = f"bomb-{uuid.uuid4().hex}"  # in every bomb process's argv, so /proc finds them all
    bomb = ("import os, sys\nprint('armed', flush=True)\n"
            "os.execv(sys.executable, [sys.executable, '-c', 'import os, time\\nwhile True:\\n"
            "    try:\\n        os.fork()\\n    except OSError:\\n        time.sleep(0.01)', %r])\n" % token)
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(_processes_with(token))
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_test(bomb, "", SMALL)
    finally:
        done.set()
        watcher.join()
    assert result.status in ("timeout", "error") and "armed" in result.stdout
    assert 1 < max(seen) <= SMALL.procs  # it forked, and no further than the limit
    assert _processes_with(token) == 0  # the pid namespace took every one of them


def test_writes_outside_its_directory_do_not_land(tmp_path):
    name = f"rlaif-pwned-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/root/{name}", str(tmp_path / name), str(Path.cwd() / name), f"/dev/shm/{name}"]
    code = ("import os\nopen('mine.txt', 'w').write('ok')\nprint('own', open('mine.txt').read())\n"
            f"for path in {targets!r}:\n"
            "    try:\n        open(path, 'w').write('pwned')\n    except OSError as e:\n        print('refused', path)\n")
    result = run_test(code, "", SMALL)
    assert result.status == "pass" and "own ok" in result.stdout
    assert not [t for t in targets if os.path.exists(t)]


def test_the_api_key_is_not_in_its_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    code = (f"import os\nprint(dict(os.environ))\nfor pid in ({os.getpid()}, 1, os.getppid()):\n"
            "    try:\n        print(open(f'/proc/{pid}/environ').read())\n    except OSError as e:\n"
            "        print('no', pid, e)\n")
    result = run_test(code, "", SMALL)
    assert result.status == "pass" and "'HOME': '/tmp/work'" in result.stdout
    assert "sk-test-secret" not in result.stdout + result.stderr
    assert "OPENAI_API_KEY" not in result.stdout


def test_sockets_reach_nothing():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = ("import socket\n"
            f"for host, port in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
            "    try:\n        socket.create_connection((host, port), timeout=1)\n        print('CONNECTED', host)\n"
            "    except OSError:\n        print('blocked', host)\n")
    with listener:
        result = run_test(code, "", SMALL)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.status == "pass" and result.stdout.count("blocked") == 2


def test_a_gigabyte_of_output_is_cut_off():
    code = "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2 ** 20)\n"
    result = run_test(code, "", SMALL)
    assert (result.status, result.exit_code) == ("output_limit", None)
    assert 0 < len(result.stdout) <= SMALL.output_kb * 1024


def test_its_temporary_directory_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run_test("import os\nos.mkdir('sub')\nopen('sub/f', 'w').write('x')\n", "", SMALL)
    assert result.status == "pass"
    assert list(tmp_path.iterdir()) == []


def test_concurrent_results_keep_test_order():
    tests = [f"import time\ntime.sleep({0.1 * (3 - i)})\nprint({i})" for i in range(4)]
    results = run_tests("", tests, SMALL, concurrency=2)
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]


def test_a_command_template_runs_the_program():
    command = ["sh", "-c", "cd {dir} && python3 -I {file}"]
    cases = [{"stdin": "abc", "stdout": "cba"}, {"stdin": "ab", "stdout": "ab"}]
    ok, bad = run_tests("print(input()[::-1])", cases, SMALL, command=command)
    assert (ok.status, bad.status) == ("pass", "fail")
    for runtime in (command, ["python3", "-I", "{dir}/{file}"]):  # a wrapper, and a runtime with no child
        slow = run_test("while True:\n    pass\n", "", Limits(wall_s=1), command=runtime)
        # the wall time holds for an external runtime too: killed at 1 s, not held for a grace period
        assert slow.status == "timeout" and slow.wall_s < 3.5, (runtime, slow.wall_s)


def test_namespace_root_cannot_undo_the_read_only_mounts(monkeypatch):
    """The user-namespace plan (a non-root user's): its root keeps no capability to remount."""
    monkeypatch.setattr(probe, "_probe", lambda: (spawn.Plan(ns=True, userns=True, drop_uid=False),
                                                  {"network": "namespace"}))
    # /etc: read-only in the sandbox and writable by the host's root, wherever the checkout lies (a
    # checkout under /tmp or the run's directory is a private tmpfs in the sandbox: a write there lands nowhere)
    target = Path("/etc") / f"rlaif-pwned-{uuid.uuid4().hex}"
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"  # MS_REMOUNT|MS_BIND|MS_RELATIME
            "print('remount', libc.mount(None, b'/', None, 32 | 4096 | 2 ** 21, None))\n"
            f"open({str(target)!r}, 'w').write('x')\n")
    try:
        result = run_test(code, "", SMALL)
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    assert result.status == "fail" and "remount -1" in result.stdout
    assert "Read-only file system" in result.stderr


def test_strict_refuses_without_a_network_namespace(monkeypatch):
    none = spawn.Plan(ns=False, userns=False, drop_uid=False)
    monkeypatch.setattr(probe, "_probe", lambda: (none, probe._report(none, "unshare: Operation not permitted")))
    with pytest.raises(UserError, match="best_effort"):
        run_test("print(1)", "", SMALL)
    assert isolation("best_effort")["network"] == "none"
    assert run_test("print(1)", {"stdin": "", "stdout": "1"}, SMALL, mode="best_effort").passed


def test_a_malformed_test_is_a_user_error():
    with pytest.raises(UserError, match="stdin"):
        run_test("print(1)", {"input": "x"}, SMALL)


@pytest.mark.parametrize("reply, code", [
    ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
    ("```py\nx = 1\n```", "x = 1\n"),
    ("```Python3 title=solution\nx = 3\n```", "x = 3\n"),
    ("Shell first:\n```bash\nls\n```\nthen\n```\nx = 2\n```\n```python\nx = 9\n```", "x = 2\n"),
    ("def f():\n    return 1", "def f():\n    return 1"),
    ("```bash\nrm -rf /\n```", ""),
    ("cut off:\n```python\nx = 1\ny = 2", "x = 1\ny = 2\n"),
    ("1. step\n   ```python\n   x = 1\n   if x:\n       y = 2\n   ```", "x = 1\nif x:\n    y = 2\n"),
    ("~~~python\nx = '```'\n~~~", "x = '```'\n"),
    ("````python\nprint('''\n```\n''')\n````", "print('''\n```\n''')\n"),
])
def test_extract_code(reply, code):
    assert extract_code(reply) == code


def test_the_program_is_not_this_process():
    assert run_test("import os\nprint(os.getpid())", "", SMALL).stdout.strip() == "2"  # pid 2: under the stub
