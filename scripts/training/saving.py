"""Crash-safe checkpoint files: written to a temporary file, fsync'd, then renamed onto their final name (issue 14).

A ``kill -9`` or a full disk during a save leaves the previous file complete under its name and, at worst, a
hidden ``.<name>.<random>.tmp`` beside it, which :func:`remove_stale_temps` deletes when the next run starts.
ignite's ``DiskSaver(atomic=True)`` also renames, but does not fsync (after a power loss the new name can point
at an empty file) and leaves ``tmpXXXX`` files with no recognisable name after a kill; :class:`SyncedDiskSaver`
keeps its interface (rank 0 saves, ``remove``) and writes through :func:`save_synced`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.handlers import DiskSaver

from ..common.atomic import atomic_write
from ..common.errors import InputError

__all__ = ["save_synced", "SyncedDiskSaver", "remove_stale_temps", "TEMP_SUFFIX"]

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the folder entry is written when the folder is fsync'd)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) checkpoint dict: about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def save_synced(obj, path: str | os.PathLike, what: str = "checkpoint") -> None:
    """``torch.save(obj)`` to ``path`` atomically: temporary file beside it, flush + fsync, rename, folder fsync.

    A failed write (disk full, quota, permissions) removes the temporary file, leaves any earlier ``path``
    untouched and raises :class:`InputError` naming ``path`` (``what`` says which file it is, for the message).
    """
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    try:
        atomic_write(path, write, suffix=TEMP_SUFFIX)
    except (OSError, RuntimeError) as exc:
        # torch reports a short write as "unexpected pos ...": tell a full disk by the space left
        needed, free = _nbytes(obj), shutil.disk_usage(path.parent).free if path.parent.is_dir() else -1
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or 0 <= free < needed + 2**20
        reason = "the disk is full" if full else (getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200])
        raise InputError(f"{path}: cannot save the {what} ({reason}); no earlier file was replaced or removed. Free "
                         "space (or fix the folder), then run the same command again to resume from the last checkpoint"
                         ) from exc
    _fsync_folder(path.parent)


class SyncedDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` (rank ``save_on_rank`` saves, ``remove`` deletes) whose saves go through
    :func:`save_synced`. Same arguments as ``DiskSaver``; ``atomic`` is always on."""

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        import ignite.distributed as idist

        if idist.get_rank() == self.save_on_rank:
            save_synced(checkpoint, self.dirname / filename)


def remove_stale_temps(folder: str | os.PathLike, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files a killed save left in ``folder`` (only those of ``names`` when given,
    e.g. ``("model.pt",)``; a name may end in ``*``); return what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if not (path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()):
            continue
        target = path.name[1:].rsplit(".", 2)[0]  # ".model.pt.ab12cd.tmp" -> "model.pt"
        if names is None or any(target == n or n.endswith("*") and target.startswith(n[:-1]) for n in names):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted save in %s", len(removed), folder)
    return removed
