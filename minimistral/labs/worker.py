"""The sandbox side of grading: a zygote that forks one sandbox per submission, and the sandbox's loop.

The zygote is a fresh process that imports torch and the library once (and nothing of the grader's: no
notebook, no reference, no solution ever enters it), then forks a child per submission. The child, still root,
moves into its cgroups, a new mount and network namespace (private tmpfs on /tmp, /var/tmp and /dev/shm, the
solutions and submissions hidden under empty read-only tmpfs, the rest of the file system read-only), sets its
resource limits, drops to its own unprivileged user, and only then runs the student's code. It talks to the
grader over one end of a socketpair; its stdout and stderr go to a pipe the grader drains and counts.

Messages (labs/codec.py): the grader sends {"op": "exec", "cells": [[label, python], ...]} once, then
{"op": "call", "name", "args", "kwargs"} per call; the sandbox answers {"value"} or {"exc", "msg"}, with
"library" (the minimistral functions the student's code called directly) and "audit" (suspicious events).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import sys
from typing import Optional

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
LIB_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../minimistral
LABS_DIR = os.path.join(LIB_DIR, "labs")
CELL_PREFIX = "<submission cell "
AUDITED = ("os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
           "subprocess.Popen", "socket.connect", "socket.bind", "ctypes.dlopen", "ctypes.cdata", "os.setsid",
           "pty.spawn", "shutil.rmtree", "os.remove", "os.rename", "os.chmod", "os.chown", "sys.setprofile",
           "sys.settrace")


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _hide(libc, hide: list[str], keep: list[str]):
    """Put an empty read-only tmpfs over each folder in `hide`, except the folders in `keep` below them (Python
    and the library, say under /root or /home), which are bind-mounted back in place, readable as before."""
    hide = sorted(h for h in hide if os.path.isdir(h))
    keep = sorted(k for k in keep if os.path.isdir(k) and any(_under(k, h) and k != h for h in hide))
    keep = [k for k in keep if not any(_under(k, o) and k != o for o in keep)]  # the outermost only
    # a hidden folder inside another disappears with it, unless it is inside a kept one
    hide = [h for h in hide if any(_under(h, k) for k in keep) or not any(_under(h, o) and h != o for o in hide)]
    staged = []
    for n, k in enumerate(keep):  # a handle on each kept folder before its parent disappears
        stage = f"/tmp/.mm-keep{n}"
        os.makedirs(stage, mode=0o700)
        _mount(libc, k, stage, None, MS_BIND | MS_REC)
        staged.append(stage)
    inner = [h for h in hide if any(_under(h, k) for k in keep)]  # e.g. the notebooks folder inside the repo
    outer = [h for h in hide if h not in inner]
    for h in outer:
        _mount(libc, "tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for stage, k in zip(staged, keep):
        os.makedirs(k, exist_ok=True)
        _mount(libc, stage, k, None, MS_BIND | MS_REC)
        libc.umount2(stage.encode(), 2)  # MNT_DETACH
        os.rmdir(stage)
    for h in outer:
        _mount(libc, None, h, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for h in inner:
        _mount(libc, "tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=0555")


def confine(cfg: dict):
    """In the forked child, as root: cgroups, namespaces, mounts, limits, then the unprivileged user."""
    os.setsid()
    for procs in cfg.get("cgroups", []):
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    libc = _libc()
    if cfg.get("namespaces"):
        if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
        try:  # the whole tree read-only, then writable private tmpfs where programs expect to write
            _mount(libc, "/", "/", None, MS_BIND | MS_REC)
            _mount(libc, None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            pass
        mb = cfg["tmpfs_mb"]
        # Python and the library may live under /tmp (a scratch virtual environment): hold each kept folder
        # under a private folder by a file descriptor, and bind it back over the new tmpfs, read-only
        private = ("/tmp", "/var/tmp", "/dev/shm")
        held = [(k, os.open(k, os.O_RDONLY | os.O_DIRECTORY)) for k in sorted(set(cfg.get("keep", [])))
                if os.path.isdir(k) and any(_under(k, t) for t in private)]
        held = [(k, fd) for k, fd in held if not any(_under(k, o) and k != o for o, _ in held)]  # outermost only
        for target in private:
            if os.path.isdir(target):
                _mount(libc, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={mb}m,mode=1777")
        for k, fd in held:
            os.makedirs(k, mode=0o755, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
            _mount(libc, None, k, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            os.close(fd)
        _hide(libc, cfg.get("hide", []), cfg.get("keep", []))
    work = cfg["workdir"]
    os.makedirs(work, exist_ok=True)
    if cfg.get("uid") is not None:
        os.chown(work, cfg["uid"], cfg["gid"])
    os.chdir(work)
    limits = [(resource.RLIMIT_CPU, cfg["cpu_s"]), (resource.RLIMIT_FSIZE, cfg["fsize_mb"] << 20),
              (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 256)]
    if cfg.get("memory_mb"):
        limits.append((resource.RLIMIT_DATA, cfg["memory_mb"] << 20))
    if cfg.get("uid") is not None:  # per user: counts every process and thread of the sandbox's own account
        limits.append((resource.RLIMIT_NPROC, cfg["nproc"]))
    for what, value in limits:
        resource.setrlimit(what, (value, value))
    if cfg.get("uid") is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
        if os.getuid() == 0 or os.geteuid() == 0:
            raise OSError("still root after setuid")
    os.environ.clear()
    os.environ.update(cfg["env"])


class Tracer:
    """Records the minimistral functions that notebook code calls directly (a library frame whose nearest
    non-library caller is a cell), by the cell's file-name prefix: to tell a solution that calls the library's
    own version of its exercise. `seen[prefix]` is a set of "minimistral.module.qualname"."""

    def __init__(self, *prefixes: str):
        self.prefixes = prefixes
        self.seen: dict[str, set] = {p: set() for p in prefixes}

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        fn = frame.f_code.co_filename
        if not fn.startswith(LIB_DIR) or fn.startswith(LABS_DIR):
            return
        f = frame.f_back
        while f is not None:
            name = f.f_code.co_filename
            if name.startswith(LIB_DIR) and not name.startswith(LABS_DIR):
                return  # called by the library itself
            for p in self.prefixes:
                if name.startswith(p):
                    mod = os.path.relpath(fn, os.path.dirname(LIB_DIR))[:-3].replace(os.sep, ".")
                    self.seen[p].add(f"{mod}.{frame.f_code.co_qualname}")
                    return
            f = f.f_back


STDLIB = os.path.dirname(os.__file__)


def _by_student() -> bool:
    """Whether the code that caused an audit event is the submission's own (through the standard library at
    most), not a library it imported (matplotlib probing its fonts, say)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name.startswith(CELL_PREFIX):
            return True
        if not (name.startswith("<frozen") or name.startswith(STDLIB) and "-packages" not in name):
            return False
        f = f.f_back
    return False


FILE_EVENTS = ("shutil.rmtree", "os.remove", "os.rename")


def _under_tmp(path) -> bool:
    try:
        return os.path.realpath(os.fsdecode(path)).startswith("/tmp/")
    except (TypeError, ValueError):
        return False


def audit_entry(event: str, args) -> Optional[str]:
    """What a grader should see of one audit event raised by the submission's code, or None for a harmless one.
    Writing, renaming and deleting under /tmp (the sandbox's own private tmpfs: a notebook's
    `tempfile.TemporaryDirectory()` cleaning up, say) is harmless; reading a notebook or another process's
    command line, writing elsewhere or to /dev/shm, and every process, network or tracing event are not."""
    if event in FILE_EVENTS:
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if paths and all(_under_tmp(p) for p in paths):
            return None
    if event.startswith(AUDITED):
        return f"{event} {str(args)[:120]}"
    if event == "open":
        path, mode = str(args[0]), str(args[1]) if len(args) > 1 else "r"
        if path.endswith(".ipynb") or "/proc/" in path and path.endswith(("cmdline", "environ")) or (
                path.startswith("/dev/shm") or any(c in mode for c in "wax+") and not path.startswith("/tmp")):
            return f"open {path[:120]} {mode}"
    return None


def _library_snapshot() -> dict:
    """id() of every public function and class of the loaded minimistral modules, and of their methods."""
    snap = {}
    for name, mod in list(sys.modules.items()):
        if not (name == "minimistral" or name.startswith("minimistral.")) or mod is None:
            continue
        for k, v in list(vars(mod).items()):
            snap[f"{name}.{k}"] = id(v)
            if isinstance(v, type) and v.__module__ == name:
                for m, f in list(vars(v).items()):
                    snap[f"{name}.{k}.{m}"] = id(f)
    return snap


def _patched(before: dict) -> list[str]:
    now = _library_snapshot()
    return sorted(k for k, v in before.items() if k in now and now[k] != v
                  or k not in now and k.rsplit(".", 1)[0] in now)[:10]


def serve(sock: socket.socket):
    """The sandbox's loop: run the student's definitions, then answer calls until the grader hangs up."""
    from . import codec
    audit: list[str] = []
    own = [False]  # our own sys.setprofile calls are not suspicious

    def hook(event, args):
        if own[0] or event == "sys._getframe" or not (event.startswith(AUDITED) or event == "open"):
            return
        own[0] = True  # nothing below may re-enter the hook
        try:
            if not _by_student():
                return
            record(event, args)
        finally:
            own[0] = False

    def record(event, args):
        entry = audit_entry(event, args)
        if entry and len(audit) < 50:
            audit.append(entry)
    sys.addaudithook(hook)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    before = _library_snapshot()
    while True:
        try:
            msg = codec.decode(codec.recv(sock))
        except EOFError:
            os._exit(0)
        reply: dict = {}
        try:
            if msg["op"] == "exec":
                errors = []
                for label, code in msg["cells"]:
                    try:
                        exec(compile(code, f"{CELL_PREFIX}{label}>", "exec"), ns)
                    except BaseException as e:  # noqa: BLE001 -- a student's definition cell failing is reported
                        errors.append(f"{label}: {type(e).__name__}: {str(e)[:200]}")
                reply = {"errors": errors}
            elif msg["op"] == "call":
                tracer = Tracer(CELL_PREFIX)
                fn = ns.get(msg["name"])
                if fn is None:
                    raise NameError(f"name {msg['name']!r} is not defined")
                own[0] = True
                sys.setprofile(tracer)
                own[0] = False
                watched = None
                try:
                    if msg.get("watch") is not None:  # a check's call: on copies, watched (labs/checks.py)
                        from .checks import run_student
                        value, watched = run_student(fn, tuple(msg["args"]), [str(w) for w in msg["watch"]])
                    else:
                        value = fn(*msg["args"], **msg["kwargs"])
                finally:
                    own[0] = True
                    sys.setprofile(None)
                    own[0] = False
                reply = {"value": value, "library": sorted(tracer.seen[CELL_PREFIX])}
                if watched is not None:
                    reply["watched"] = watched
        except BaseException as e:  # noqa: BLE001 -- KeyboardInterrupt (the grader's SIGINT) included
            own[0] = True
            sys.setprofile(None)
            own[0] = False
            reply = {"exc": type(e).__name__, "msg": str(e)[:500]}
            msg = msg if isinstance(msg, dict) else {}
        reply["audit"] = audit[:] + [f"patched {name}" for name in _patched(before)]
        reply["nonce"] = msg.get("nonce") if isinstance(msg, dict) else None
        audit.clear()
        try:
            data = codec.encode(reply)
        except Exception as e:  # the student's value cannot travel
            data = codec.encode({"exc": "TypeError", "msg": f"the result cannot be sent back: {e}",
                                 "audit": reply["audit"], "nonce": reply["nonce"]})
        codec.send(sock, data)


def zygote_main(fd: int):
    """Import what every sandbox needs, then fork one sandbox per request on the control socket."""
    import torch  # noqa: F401 -- imported here once, shared (copy-on-write) by every sandbox
    import minimistral  # noqa: F401
    import numpy  # noqa: F401
    import safetensors.torch  # noqa: F401
    import minimistral.labs.checks  # noqa: F401 -- so that patching it shows
    from . import codec  # noqa: F401
    os.environ.setdefault("MPLBACKEND", "Agg")
    # What the course's notebooks import, once here rather than in every sandbox (imports after the fork would
    # also need Python's files to be readable by the sandbox account, which they are, but cost a second each).
    for name in ("minimistral.config", "minimistral.tokenizer", "minimistral.norm", "minimistral.rope",
                 "minimistral.attention", "minimistral.mlp", "minimistral.model", "minimistral.cache",
                 "minimistral.generate", "minimistral.train", "minimistral.train.corpus", "minimistral.viz",
                 "torch.nn.functional", "matplotlib", "matplotlib.pyplot", "ipywidgets", "IPython.display",
                 "sentencepiece", "mistral_common.tokens.tokenizers.sentencepiece"):
        try:
            __import__(name)
        except Exception:
            pass
    def reap(*_):  # wait for finished sandboxes (so their CPU time is counted in ours, and no zombies stay)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
    signal.signal(signal.SIGCHLD, reap)
    ctl = socket.socket(fileno=fd)
    while True:
        line = ctl.recv(1 << 16)
        if not line:
            os._exit(0)
        cfg = json.loads(line)
        parent, child = socket.socketpair()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                ctl.close()
                parent.close()
                os.close(out_r)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered: the grader counts it live
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                confine(cfg)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                serve(child)
            except BaseException as e:  # noqa: BLE001
                try:
                    os.write(2, f"sandbox set-up failed: {type(e).__name__}: {e}\n".encode())
                finally:
                    os._exit(70)
            os._exit(0)
        child.close()
        os.close(out_w)
        socket.send_fds(ctl, [json.dumps({"pid": pid}).encode()], [parent.fileno(), out_r])
        parent.close()
        os.close(out_r)


if __name__ == "__main__":
    zygote_main(int(sys.argv[1]))
