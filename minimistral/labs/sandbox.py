"""The grader's side of a sandbox: accounts, cgroups, the zygote, one Sandbox per submission, and the kill.

What isolation this machine can give is decided once, before grading (`probe`): as root with mount
namespaces, every submission runs under its own unprivileged account, in a private namespace, under cgroup
limits when the cgroup file system is writable.

System state, a fixed set reused by every run: the accounts `mmgrade0` .. `mmgrade255` at most (one per
sandbox alive at once: --jobs x --max-alive, both capped; created with useradd on first use, raw uids 64000+
when useradd is missing), the cgroup folders `minimistral-grade/slot0` .. `slot255`, and the lock file
LOCK. `python -m minimistral.labs cleanup` removes them all (`cleanup` below).

Without root or namespaces the grader refuses to grade unless told `--allow-weak-isolation`, and says what is
missing (the container route in INSTRUCTORS.md gives it back).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path



CG_NAME = "minimistral-grade"
UID_BASE = 64000
ACCOUNT_PREFIX = "mmgrade"
MAX_SLOTS = 256  # labs/cli.py caps --jobs x --max-alive at this
LOCK = "/run/lock/minimistral-grade.lock" if os.path.isdir("/run/lock") else "/tmp/minimistral-grade.lock"


@dataclass
class Isolation:
    root: bool
    namespaces: bool
    cgroup: str  # "v1", "v2" or ""
    problems: list[str] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return not self.problems


def probe() -> Isolation:
    root = os.geteuid() == 0
    problems = []
    ns = False
    if not root:
        problems.append("not running as root: submissions cannot run under accounts of their own, and mount "
                        "namespaces (hidden solutions, private /tmp and /dev/shm) are not available")
    else:
        r = subprocess.run(["unshare", "-m", "-n", "true"], capture_output=True) if shutil.which("unshare") else None
        ns = r is not None and r.returncode == 0
        if not ns:
            problems.append("mount/network namespaces are not available here (unshare -m -n failed): the "
                            "solutions could not be hidden from the submissions")
    cg = ""
    if root:
        if os.path.isdir("/sys/fs/cgroup/pids") and os.path.isdir("/sys/fs/cgroup/memory"):
            try:
                for c in ("pids", "memory"):
                    os.makedirs(f"/sys/fs/cgroup/{c}/{CG_NAME}", exist_ok=True)
                cg = "v1"
            except OSError:
                pass
        elif os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            try:
                os.makedirs(f"/sys/fs/cgroup/{CG_NAME}", exist_ok=True)
                Path(f"/sys/fs/cgroup/{CG_NAME}/cgroup.subtree_control").write_text("+pids +memory")
                cg = "v2"
            except OSError:
                pass
    # Without cgroups the per-account limits (RLIMIT_NPROC, a uid-wide kill) still hold; the memory limit is
    # then per process (RLIMIT_DATA) and /dev/shm is capped by its private tmpfs size.
    return Isolation(root, ns, cg, problems)


# Top-level folders a sandbox sees; every other one (/home, /root, /work, /opt, /srv, /var, /run, ...) is replaced
# by an empty read-only tmpfs, so that no copy of the solutions anywhere on the machine can be read (a clone of
# the repository, another course's folder). Python and the library are bind-mounted back in place.
SYSTEM = {"usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "etc", "dev", "proc", "sys", "tmp"}


def visible_paths(extra_hide) -> tuple[list[str], list[str]]:
    """(folders to hide, folders to keep readable below them)."""
    hide = {f"/{d}" for d in os.listdir("/") if d not in SYSTEM and os.path.isdir(f"/{d}")
            and not os.path.islink(f"/{d}")}
    hide |= {str(Path(p).resolve()) for p in extra_hide}
    pkg = Path(__file__).resolve().parents[1]
    keep = {str(pkg), *(str(Path(x).resolve()) for x in (sys.prefix, sys.base_prefix, sys.exec_prefix))}
    if (pkg.parent / "data").is_dir():  # the course's data (no solutions in it), next to the package
        keep.add(str(pkg.parent / "data"))
    keep |= {str(Path(p).resolve()) for p in sys.path if p and "-packages" in p and os.path.isdir(p)}
    return sorted(h for h in hide if h not in keep), sorted(keep)


def ensure_accounts(n: int, prefix: str = ACCOUNT_PREFIX) -> list[tuple[int, int]]:
    """(uid, gid) of n unprivileged accounts, one per sandbox alive at once, created with useradd if missing:
    always the same names (prefix0 .. prefix{n-1}), so runs reuse them."""
    if not 0 < n <= MAX_SLOTS:
        raise ValueError(f"{n} sandbox accounts asked for; the set is {prefix}0 .. {prefix}{MAX_SLOTS - 1}")
    out = []
    for i in range(n):
        name = f"{prefix}{i}"
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
            r = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                                "--shell", shell, "--user-group", name], capture_output=True, text=True) \
                if shutil.which("useradd") else None
            if r is None or r.returncode != 0:  # no useradd: a raw uid nobody else uses works as well
                out.append((UID_BASE + i, UID_BASE + i))
                continue
            pw = pwd.getpwnam(name)
        out.append((pw.pw_uid, pw.pw_gid))
    return out


def cleanup(prefix: str = ACCOUNT_PREFIX, cg_name: str = CG_NAME, lock: str = LOCK) -> list[str]:
    """Remove what grading leaves on the machine: the sandbox accounts (prefix + a number; their processes are
    killed first), the cgroup folders `cg_name`, and the lock file. Refused while a grader runs. Returns what
    was removed."""
    import fcntl
    import re
    if os.geteuid() != 0:
        raise PermissionError("labs cleanup removes accounts and cgroups: run it as root (as `labs grade` ran)")
    removed = []
    existed = os.path.exists(lock)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"a `labs grade` is running (it holds {lock}); clean up after it finishes") from None
        names = sorted((p.pw_name for p in pwd.getpwall() if re.fullmatch(re.escape(prefix) + r"\d+", p.pw_name)),
                       key=lambda n: int(n[len(prefix):]))
        for name in names:
            uid = pwd.getpwnam(name).pw_uid
            kill_account(uid, [])
            r = subprocess.run(["userdel", name], capture_output=True, text=True) if shutil.which("userdel") else None
            if r is None or r.returncode != 0:
                why = r.stderr.strip() if r is not None else "userdel is not installed"
                raise RuntimeError(f"could not remove the account {name}: {why}")
            removed.append(f"account {name}")
        for root in (f"/sys/fs/cgroup/pids/{cg_name}", f"/sys/fs/cgroup/memory/{cg_name}", f"/sys/fs/cgroup/{cg_name}"):
            if os.path.isdir(root):
                for d in sorted(Path(root).iterdir()):
                    if d.is_dir():
                        d.rmdir()  # an empty cgroup (its processes were killed) is removed with rmdir
                os.rmdir(root)
                removed.append(f"cgroup {root}")
        os.unlink(lock)
        if existed:
            removed.append(f"lock {lock}")
    return removed


def processes_of(uid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def kill_account(uid: int, cgroups: list[str]):
    """Kill everything the sandbox started, in any session: its cgroups' members, then every process of its
    account (the account is used by this sandbox only), until none is left."""
    for _ in range(50):
        left = processes_of(uid)
        for procs in cgroups:
            try:
                left += [int(p) for p in Path(procs).read_text().split()]
            except OSError:
                pass
        if not left:
            return
        if uid != os.getuid():  # kill(-1) as the account: every process it owns, whatever its session
            pid = os.fork()
            if pid == 0:
                try:
                    os.setgroups([])
                    os.setuid(uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


class Zygote:
    """A process that has imported torch and the library, and forks sandboxes on request."""

    def __init__(self, env: dict):
        ours, theirs = socket.socketpair()
        code = f"from minimistral.labs.worker import zygote_main; zygote_main({theirs.fileno()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env,
                                     stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()

    def fork(self, cfg: dict) -> tuple[int, socket.socket, int]:
        with self.lock:
            self.sock.sendall(json.dumps(cfg).encode())
            msg, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 2)
        if len(fds) != 2:
            raise RuntimeError("the sandbox zygote did not answer (it may have died)")
        return json.loads(msg)["pid"], socket.socket(fileno=fds[0]), fds[1]

    def close(self):
        try:
            self.sock.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


class SandboxDied(Exception):
    pass


class Sandbox:
    """One submission's sandbox: runs its definitions, answers calls, counts its output, dies as a whole."""

    def __init__(self, zygote: Zygote, slot: int, account, iso: Isolation, limits: dict, hide: list[str],
                 keep: list[str] = ()):
        self.zygote, self.slot, self.iso, self.limits, self.hide, self.keep = zygote, slot, iso, limits, hide, keep
        self.uid, self.gid = account if account else (None, None)
        self.pid = None
        self.flags: list[str] = []
        self.output = bytearray()
        self.out_bytes = 0
        self.busy = 0.0  # seconds spent answering calls and running definitions
        self.cgroups: list[str] = []

    def _cgroups(self) -> list[str]:
        name, mem, pids = f"slot{self.slot}", self.limits["memory_mb"] << 20, str(self.limits["nproc"])
        paths = []
        try:
            if self.iso.cgroup == "v1":
                for c, files in (("pids", {"pids.max": pids}),
                                 ("memory", {"memory.limit_in_bytes": str(mem) if mem else "-1"})):
                    d = Path(f"/sys/fs/cgroup/{c}/{CG_NAME}/{name}")
                    d.mkdir(exist_ok=True)
                    for k, v in files.items():
                        (d / k).write_text(v)
                    paths.append(str(d / "cgroup.procs"))
            elif self.iso.cgroup == "v2":
                d = Path(f"/sys/fs/cgroup/{CG_NAME}/{name}")
                d.mkdir(exist_ok=True)
                (d / "pids.max").write_text(pids)
                (d / "memory.max").write_text(str(mem) if mem else "max")
                (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
                paths.append(str(d / "cgroup.procs"))
        except OSError:
            return []
        return paths

    def memory_limit_hit(self) -> bool:
        for procs in self.cgroups:
            d = Path(procs).parent
            for f, key in (("memory.failcnt", None), ("memory.events", "oom_kill")):
                try:
                    text = (d / f).read_text()
                except OSError:
                    continue
                if key is None and text.strip() not in ("", "0"):
                    return True
                if key and any(line.split()[1] != "0" for line in text.splitlines() if line.startswith(key)):
                    return True
        return False

    def start(self, cells: list[tuple[str, str]], timeout: float) -> list[str]:
        """Fork the sandbox and run the submission's definition cells in it; returns their errors."""
        self.cgroups = self._cgroups()
        lim = self.limits
        cfg = {"namespaces": self.iso.namespaces, "hide": self.hide, "keep": list(self.keep), "tmpfs_mb": lim["tmpfs_mb"],
               "workdir": f"/tmp/work{self.slot}" if self.iso.namespaces else lim["workdir"],
               "uid": self.uid, "gid": self.gid, "cpu_s": lim["cpu_s"], "fsize_mb": lim["fsize_mb"],
               "memory_mb": lim["memory_mb"], "nproc": lim["nproc"], "cgroups": self.cgroups, "env": lim["env"]}
        if self.cgroups and lim["memory_mb"]:
            for procs in self.cgroups:  # the count of the slot's previous sandbox
                try:
                    Path(procs).parent.joinpath("memory.failcnt").write_text("0")
                except OSError:
                    pass
        self.pid, self.sock, out_fd = self.zygote.fork(cfg)
        self.out = os.fdopen(out_fd, "rb", buffering=0)
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        reply = self.request({"op": "exec", "cells": cells}, timeout)
        return reply.get("errors", [])

    def _drain(self):
        while True:
            try:
                chunk = self.out.read(65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            self.out_bytes += len(chunk)
            self.output = (self.output + chunk)[-4000:]
            if b"] " in chunk:
                from .checks import parse_verdicts
                for tag, x, _ in parse_verdicts(bytes(self.output[-len(chunk) - 200:]).decode(errors="replace")):
                    self.flag(f"suspicious: printed a verdict line itself ([{tag}] {x})")
            if self.out_bytes > self.limits["max_output"]:
                self.flag(f"output-limit: printed more than {self.limits['max_output']:,} bytes")
                self.kill()
                return

    def flag(self, text: str):
        if text not in self.flags:
            self.flags.append(text)

    def request(self, msg: dict, timeout: float) -> dict:
        from . import codec  # imports torch: only in the worker processes
        if self.pid is None:
            raise SandboxDied("the sandbox is not running")
        t0 = time.monotonic()
        nonce = msg["nonce"] = os.urandom(8).hex()  # a reply must answer this request, not be planted earlier
        try:
            codec.send(self.sock, codec.encode(msg))
            self.sock.settimeout(max(0.5, timeout))
            try:
                data = codec.recv(self.sock)
            except socket.timeout:
                os.kill(self.pid, signal.SIGINT)  # KeyboardInterrupt in the student's code; then the hard way
                self.sock.settimeout(3)
                try:
                    codec.recv(self.sock)
                except Exception:
                    pass
                self.flag(f"timeout: a call ran past {timeout:.0f} s")
                self.kill()
                raise SandboxDied(f"the call ran past {timeout:.0f} s and was stopped") from None
            reply = codec.decode(data)
            if not isinstance(reply, dict):
                raise codec.CodecError("a reply that is not a dict")
            if reply.get("nonce") != nonce:
                raise codec.CodecError("a reply to another request (a forged message on the result socket)")
        except (OSError, EOFError, codec.CodecError) as e:
            why = self._death_reason(e)
            self.kill()
            raise SandboxDied(why) from None
        finally:
            self.busy += time.monotonic() - t0
        for event in reply.get("audit", []) if isinstance(reply.get("audit"), list) else []:
            self.flag("suspicious: " + str(event)[:160])
        return reply

    def _death_reason(self, e) -> str:
        from . import codec
        if isinstance(e, codec.CodecError):
            self.flag(f"protocol: {e}")
            return f"the sandbox sent an unreadable reply ({e})"
        time.sleep(0.1)
        if self.memory_limit_hit():
            self.flag("memory-limit")
            return f"the sandbox hit the memory limit ({self.limits['memory_mb']} MiB) and was killed"
        tail = bytes(self.output[-300:]).decode(errors="replace").strip().replace("\n", " | ")
        self.flag("died")
        return f"the sandbox process exited ({type(e).__name__}); its last output: {tail[-200:]}"

    def kill(self):
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        if self.uid is not None:
            kill_account(self.uid, self.cgroups)
        else:  # weak isolation: the sandbox's own session (it called setsid) is all we can reach
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
