"""Writes that never leave a half-written file behind (checkpoints, training logs, the corpus, CSVs).

A file is written under a temporary name in the same folder, flushed to disk (fsync), then renamed over the
target, and the folder itself is flushed so that the new name survives a power cut: os.replace is atomic on
one filesystem, so a reader (or the user after a crash or a full disk) sees either the old contents or the
new ones, never a mixture. A failure before the rename removes the temporary file and leaves the target
exactly as it was.

    atomic_write_bytes(path, data)
    atomic_write_text(path, text)
    with atomic_open(path, "wb") as f: ...     # streaming writes; renamed over `path` only on success
    with folder_lock(folder): ...              # one writer at a time in a folder (checkpoint saves)
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL lock file below
    fcntl = None


@contextmanager
def atomic_open(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary sibling of `path` for writing; on a clean exit it replaces `path`, on an exception
    it is deleted and `path` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        if path.exists():  # keep the old file's permissions (mkstemp makes the file 0600)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself is on disk


def fsync_dir(folder) -> None:
    """Flush a folder's entries (renames, new and removed names) to disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the renames are still atomic
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


# ---- one writer per folder -------------------------------------------------------------------------------
#
# The lock is a file in the folder. On POSIX it is held with flock (the kernel drops it when the holder dies,
# so a killed save never leaves a stale lock); the holder writes its pid, host and start time into it so that
# a refused writer can name it. The holder unlinks the file when done; a waiter that locked a file which was
# unlinked meanwhile (its inode is no longer the one at the path) starts again. Without fcntl (Windows) the
# file is created with O_EXCL and a lock whose pid is dead is taken over.

LOCK_NAME = ".minimistral.lock"


class FolderLocked(BlockingIOError):
    """Another process holds the folder's lock; the message names it (pid, host, since when)."""


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        text = ""
    return text or "another process (it has not written its pid yet)"


def _same_file(fd: int, lock: Path) -> bool:
    try:
        return os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def folder_lock(folder, shared: bool = False, what: str = "save"):
    """Hold `folder`'s lock for the block: exclusive for a writer, shared for readers (any number of readers,
    no writer). Refused at once with FolderLocked, naming the holder, when a conflicting holder exists."""
    lock = Path(folder) / LOCK_NAME
    if fcntl is None:
        yield from _exclusive_file_lock(lock, what)
        return
    # A reader that leaves takes the lock exclusively for an instant to remove the file (below), so a reader
    # arriving then is retried for a moment instead of being refused; a writer is refused at once.
    tries = 50 if shared else 1
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            tries -= 1
            if tries > 0:
                time.sleep(0.01)
                continue
            raise FolderLocked(f"{folder} is locked by a checkpoint save in progress ({_holder(lock)}, lock file "
                               f"{lock}): wait for it to finish, then {what} again. The lock is released when "
                               "that process ends, even if it is killed") from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # the previous holder removed that file after we opened it: lock the new one
    try:
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, {what} started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        yield lock
    finally:
        try:  # remove the file only while nobody else holds it (a reader may still be inside)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)


def _exclusive_file_lock(lock: Path, what: str):
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            text = _holder(lock)
            pid = text.split()[1] if text.startswith("pid ") else ""
            if pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)  # its holder is dead: take over
                continue
            raise FolderLocked(f"{lock.parent} is locked by a checkpoint save in progress ({text}, lock file {lock}):"
                               f" wait for it to finish, then {what} again; if no such process runs, delete {lock}"
                               ) from None
    else:
        raise FolderLocked(f"{lock.parent}: could not take the lock {lock}; delete it if no save is running")
    try:
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        os.close(fd)
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
