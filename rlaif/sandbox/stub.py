"""The launcher between rlaif and a candidate program: run as `python -I -S stub.py CONFIG_JSON`.

Standard library only and no rlaif import: it starts as its own interpreter, in the namespaces the
host made with `unshare` (or in none, in best-effort mode), and it is what a pid namespace's init
is. It sets up the filesystem, forks the program with rlimits and no privileges, waits for it and
reports on a pipe the program never holds, so a program cannot forge its own verdict:
one JSON line per event, {"error": "..."} (could not start it) and {"exit": code} (negative: signal).

Filesystem, only inside fresh mount namespaces (cfg["ns"]), in this order:
1. each `mask` path (the user's home, /home, /root, /run, rlaif's working directory) gets an empty
   tmpfs, and each `keep` path under it (the Python prefixes) is bound back, so the interpreter runs
   but ~/.ssh, ~/.netrc, a project's .env and the sockets in /run (docker, dbus) are gone;
2. every mount is remounted read-only (the program may still read what its uid may read);
3. /tmp, /var/tmp and /dev/shm get small private tmpfs mounts (size-capped: they are host memory),
   with any `keep` path under them bound back (a virtual environment in /tmp);
4. the program's files are copied from the host's temporary directory (our cwd) into /tmp/work, its
   only writable directory besides the tmpfs mounts, which vanish with the namespace.
When the stub (pid 1) exits the kernel kills everything left in the pid namespace (pid_namespaces(7)).
"""
import ctypes
import json
import os
import resource
import signal
import sys
import threading

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 4096, 16384, 1 << 21, 1 << 24
# A remount inside a user namespace must repeat the flags the kernel locked (mount(2), EPERM), so
# each mount keeps its own per-mount options from mountinfo.
OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 24, 38, 1
WORK = "/tmp/work"
LIBC = ctypes.CDLL(None, use_errno=True)


def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if LIBC.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def mountpoints():
    """(mount point, per-mount flags) from /proc/self/mountinfo (proc(5)); octal escapes decoded."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = fields[4].encode().decode("unicode_escape")
            flags = sum(OPTION_FLAGS.get(o, 0) for o in fields[5].split(","))
            out.append((path, flags))
    return out


def cover(path, data, held):
    """An empty tmpfs over `path`, with the kept directories under it bound back at their own paths
    (each fd was opened before anything was covered, so it still names the hidden directory)."""
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, data)
    for keep, fd in held.items():
        if keep.startswith(path.rstrip("/") + "/"):
            os.makedirs(keep, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", keep, None, MS_BIND | MS_REC)


def readonly_all():
    for path, flags in mountpoints():
        try:
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as e:  # a mount hidden under another one is unreachable: nothing to protect
            if os.path.ismount(path) and not os.statvfs(path).f_flag & os.ST_RDONLY:
                raise OSError(e.errno, f"cannot make {path} read-only: {os.strerror(e.errno)}") from e


def workdir(cfg, held):
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(path) and not os.path.islink(path):
            cover(path, f"mode=1777,size={cfg['tmpfs_mb']}m", held)
    os.mkdir(WORK, 0o755)
    for name in os.listdir("."):  # cwd is the host's temporary directory, hidden under /tmp by now
        with open(name, "rb") as src, open(os.path.join(WORK, name), "wb") as dst:
            dst.write(src.read())
    if cfg["uid"] is not None:
        for name in [WORK] + [os.path.join(WORK, n) for n in os.listdir(WORK)]:
            os.chown(name, cfg["uid"], cfg["uid"])
    os.chdir(WORK)


def drop_capabilities():
    """Namespace root keeps no capability across exec: empty bounding set (capabilities(7)),
    then empty effective/permitted/inheritable sets (capset, _LINUX_CAPABILITY_VERSION_3)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    if LIBC.capset(header, (ctypes.c_uint32 * 6)()) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def child(cfg):
    lim = cfg["limits"]
    cpu = max(1, int(-(-lim["cpu_s"] // 1)))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # soft: SIGXCPU; hard: SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["procs"],) * 2)
    if cfg["uid"] is not None:  # real root: a uid of the run's own; setuid from 0 clears all capabilities
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    elif cfg["ns"]:
        drop_capabilities()
    if hasattr(LIBC, "prctl"):  # Linux
        LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary gives anything back
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid: a uid change clears it
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execv(cfg["argv"][0], cfg["argv"])  # the status and lifeline fds are close-on-exec


def watch(lifeline, pid):
    """EOF on the lifeline: the rlaif process died (even by kill -9); take the program with us."""
    os.read(lifeline, 1)
    os.kill(pid, signal.SIGKILL)
    os._exit(1)


def main():
    cfg = json.loads(sys.argv[1])
    status = cfg["status_fd"]
    for fd in (status, cfg["lifeline_fd"]):
        os.set_inheritable(fd, False)

    def report(event):
        os.write(status, (json.dumps(event) + "\n").encode())

    try:
        if cfg["ns"]:
            held = {p: os.open(p, os.O_PATH) for p in cfg["keep"]}
            for path in cfg["mask"]:
                cover(path, "mode=755,size=1m", held)
            readonly_all()
            workdir(cfg, held)
        pid = os.fork()
    except OSError as e:
        report({"error": str(e)})
        return 1
    if pid == 0:
        try:
            child(cfg)
        except BaseException as e:  # noqa: BLE001 -- the host must learn why, whatever it was
            report({"error": f"{type(e).__name__}: {e}"})
        os._exit(127)
    threading.Thread(target=watch, args=(cfg["lifeline_fd"], pid), daemon=True).start()
    _, st, usage = os.wait4(pid, 0)  # CPU seconds tell a CPU-limit SIGKILL from other kills
    report({"exit": os.waitstatus_to_exitcode(st), "cpu_s": usage.ru_utime + usage.ru_stime})
    return 0


if __name__ == "__main__":
    sys.exit(main())
