"""Atomic file writes: a temporary file in the target's folder, renamed into place.

A failed write leaves nothing behind, and readers never see half a file. The file gets
the permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask), not the
owner-only ones of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

#: Figure file suffixes the plotting commands accept (matplotlib's raster and vector
#: formats).
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _umask() -> int:
    """The process's umask, read without setting it where the OS allows (Linux), since
    setting it, even back, races with other threads creating files."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cannot_write(path: str | os.PathLike) -> str | None:
    """Why a file could not be written at ``path`` (its folder refuses a new file), or
    None: checked with a temporary file, before work whose result would be lost."""
    d = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"cannot write in {d!r} ({e.strerror or e})"
    return None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (``mode`` ``"w"`` or ``"wb"``;
    ``kw`` go to :func:`os.fdopen`) and, when the block ends without an exception, rename
    it to ``path``; otherwise remove it."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-",
                               suffix=os.path.splitext(path)[1] or ".tmp")
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            f = os.fdopen(fd, mode, **kw)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
