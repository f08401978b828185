"""Writes that never leave a half-written file behind (checkpoints, training logs, the corpus, CSVs).

A file is written under a temporary name in the same folder, flushed to disk, then renamed over the
target: os.replace is atomic on one filesystem, so a reader (or the user after a crash or a full disk)
sees either the old contents or the new ones, never a mixture. A failure before the rename removes the
temporary file and leaves the target exactly as it was.

    atomic_write_bytes(path, data)
    atomic_write_text(path, text)
    with atomic_open(path, "wb") as f: ...     # streaming writes; renamed over `path` only on success
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


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
