"""Atomic file writes: a crash never leaves a half-written output under its final name.

Everything the bundle writes (segmentations, volumes and metrics reports, datalists) goes to a temporary file
in the destination folder and is renamed onto the final name only when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["publish", "atomic_write", "atomic_write_text"]


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a finished temporary file onto ``target`` with the permissions a plain ``open`` would give it.

    ``mkstemp`` creates files readable by their owner only (0o600); the outputs are meant to be shared.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write, suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (folder created if needed), then rename it onto
    ``path``; on any error the temporary file is removed and the error re-raised. ``suffix`` is the temporary file's
    extension, for writers that choose the format by it (e.g. ``.nii.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
