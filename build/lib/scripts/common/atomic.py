"""Atomic file writes: a crash never leaves a half-written output under its final name.

Everything the bundle writes (segmentations, volumes and metrics reports, datalists) goes to a temporary file
in the destination folder and is renamed onto the final name only when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["publish", "atomic_write", "atomic_write_text", "replace_marked_block"]


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


def replace_marked_block(path: str | os.PathLike, begin: str, end: str, body: str, append_if_missing: bool = True,
                         title: str = "") -> None:
    """Put ``begin``, ``body``, ``end`` (one per line) in place of the marked block of the text file ``path``,
    keeping the text around it, atomically. Without the markers the block is appended (after ``title`` for a new
    file), or, with ``append_if_missing=False``, ``ValueError`` names the file and the markers."""
    path = Path(path)
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif not append_if_missing:
        raise ValueError(f"{path}: markers {begin} / {end} not found; nothing written")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else title) + block + "\n"
    atomic_write_text(path, text)
