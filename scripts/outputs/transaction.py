"""A case's outputs are published together or not at all (issue 14, "Nothing lost, nothing silent").

A case leaves up to three files: the segmentation (``.nii.gz``, ``.seg.nrrd`` or ``.seg.dcm``), ``<case>_preview.png``
and ``<case>_volumes.json``. Renaming each file atomically is not enough: a full disk or a kill between two of them
left a new segmentation beside the volumes and preview of an earlier run. :class:`CaseTransaction` writes all of
them to temporary names in the output folder, ``fsync``\\ s them, records the planned renames in a small journal
(``.<case>.outputs-commit.json``, the commit point), renames them (the volumes JSON last) and removes the journal:

- a failure or a kill before the journal exists leaves only temporary files: the earlier set is untouched and the
  temporaries are removed (at once, or by :func:`recover_output_folder` at the next run in the folder);
- a kill after it is rolled forward by :func:`recover_output_folder`: every file of the journal is complete on disk,
  so the renames are finished and the new set is whole.

The volumes JSON is the completion marker: it lists the other files of its set with their size and SHA-256
(``"files"``), so :func:`case_outputs_complete` can tell a complete set from a mixed one (e.g. for ``--resume``).
Concurrent runs writing into one folder are safe: a writer holds a shared ``flock`` on the folder while its
temporaries exist, and recovery only runs under an exclusive one (it is skipped while another run is writing).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..common.atomic import publish
from ..common.digest import file_sha256
from ..common.errors import OutputError

try:  # POSIX; elsewhere folders are not locked and recovery assumes one run per folder
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["CaseTransaction", "recover_output_folder", "ensure_recovered", "case_outputs_complete", "file_record",
           "is_temporary_output", "JOURNAL_SUFFIX", "MARKER_SUFFIX"]

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".outputs-commit.json"
MARKER_SUFFIX = "_volumes.json"
# ".<final name>.<8 random characters of tempfile>[.part]<extension>" of a case's files: this module's temporaries
# and the ones earlier versions left (".case.nii.gz.k2j4h1x9.nii.gz", ".case_volumes.json.k2j4h1x9.tmp"). Only
# files that exist while a writer holds the folder lock (or after it was killed); never a user's file without the
# leading dot and random part, nor other temporaries of the bundle (timings JSON, the folder's write test).
_TEMP = re.compile(r"^\..+(?:\.nii\.gz|\.seg\.nrrd|\.seg\.dcm|_preview\.png|_volumes\.json|\.outputs-commit\.json)"
                   r"\.[a-z0-9_]{8}(?:\.part)?(?:\.nii\.gz|\.seg\.nrrd|\.seg\.dcm|\.png|\.json|\.tmp)?$")
_DOUBLE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".seg.dcm")
_recovered: set[str] = set()


def is_temporary_output(name: str) -> bool:
    """True for a file name of the bundle's temporary outputs (see ``_TEMP``); user files never match."""
    return bool(_TEMP.match(name))


def file_record(path: str | os.PathLike) -> dict[str, object]:
    """``{"bytes": size, "sha256": hex digest}`` of a file, as the completion marker lists it."""
    size = os.stat(path).st_size
    return {"bytes": size, "sha256": file_sha256(path)}


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextmanager
def _folder_lock(folder: Path, exclusive: bool, blocking: bool = True):
    """``flock`` on the folder itself (no lock file among the outputs); yields False when not obtained."""
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield True
        return
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
            locked = True
        except BlockingIOError:
            locked = False
        except OSError:  # a filesystem without flock (some network mounts): go on unlocked
            locked = True
        yield locked
    finally:
        os.close(fd)  # closing releases the lock


def _one_line_error(folder: Path, case: str, exc: OSError, what: str) -> OutputError:
    reason = exc.strerror or str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hint = "; free some space or choose another --output_dir" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return OutputError(f"{folder}: cannot write the outputs of {case} ({reason}); {what}{hint}")


class CaseTransaction:
    """Write one case's files under temporary names, then publish them together (see the module docstring).

    Use as a context manager: ``temp_path(final_name)`` gives the path to write each file to; leaving the block
    normally commits, an exception removes the temporaries and leaves the earlier set as it was (an ``OSError``
    such as a full disk becomes one :class:`~scripts.common.errors.OutputError` line naming the folder).
    Files are renamed in the order they were asked for: put the completion marker (volumes JSON) last.
    """

    def __init__(self, output_dir: str | os.PathLike, case: str) -> None:
        self.folder = Path(output_dir)
        self.case = case
        self.files: list[tuple[Path, Path]] = []  # (temporary, final)
        self._lock = None

    def temp_path(self, final_name: str) -> Path:
        """A new temporary file beside ``final_name``, ending in the same extension (writers choose formats by it)."""
        suffix = next((s for s in _DOUBLE_SUFFIXES if final_name.endswith(s)), Path(final_name).suffix)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{final_name}.", suffix=f".part{suffix}")
        os.close(fd)
        self.files.append((Path(tmp), self.folder / final_name))
        return Path(tmp)

    def __enter__(self) -> CaseTransaction:
        self._lock = _folder_lock(self.folder, exclusive=False)
        self._lock.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                try:
                    self._commit()
                except OSError as error:
                    raise self._failed(error) from None
                return False
            self._abort()
            if isinstance(exc, OSError):
                raise self._failed(exc) from None
            return False
        finally:
            self._lock.__exit__(None, None, None)

    def _failed(self, error: OSError) -> OutputError:
        self._abort()
        return _one_line_error(self.folder, self.case, error, f"the earlier outputs of {self.case} are unchanged")

    def _abort(self) -> None:
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)

    def _commit(self) -> None:
        for tmp, _ in self.files:
            _fsync_file(tmp)
        journal = self.folder / f".{self.case}{JOURNAL_SUFFIX}"
        plan = [{"temporary": tmp.name, "final": final.name} for tmp, final in self.files]
        fd, journal_tmp = tempfile.mkstemp(dir=self.folder, prefix=f"{journal.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"case": self.case, "renames": plan}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(journal_tmp, journal)
        except BaseException:
            Path(journal_tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.folder)
        # commit point: from here on the new set is the one that will be seen, now or after recovery
        try:
            for tmp, final in self.files:
                publish(tmp, final)
            _fsync_dir(self.folder)
        except OSError as error:
            raise OutputError(f"{self.folder}: the outputs of {self.case} were interrupted while being renamed "
                              f"({error.strerror or error}); the next run in this folder completes them") from None
        journal.unlink()
        self.files = []


def _roll_forward(folder: Path, journal: Path) -> bool:
    """Finish the renames of an interrupted commit; False (journal left as is) when it cannot be read."""
    try:
        plan = json.loads(journal.read_text())["renames"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for step in plan:
        tmp, final = folder / Path(step["temporary"]).name, folder / Path(step["final"]).name
        if tmp.exists():
            publish(tmp, final)
    _fsync_dir(folder)
    journal.unlink()
    return True


def recover_output_folder(output_dir: str | os.PathLike) -> tuple[int, int]:
    """Complete interrupted commits and remove stale temporaries in ``output_dir``; returns (completed, removed).

    Runs only when no other run is writing into the folder (an exclusive ``flock``; otherwise (0, 0), and it is
    tried again at the next case). Only the bundle's own temporary names are removed (:func:`is_temporary_output`).
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return 0, 0
    with _folder_lock(folder, exclusive=True, blocking=False) as locked:
        if not locked:
            logger.info("%s: another run is writing here; stale temporary files are left for later", folder)
            return 0, 0
        completed = sum(_roll_forward(folder, journal) for journal in folder.glob(f".*{JOURNAL_SUFFIX}"))
        removed = 0
        for path in folder.iterdir():
            if is_temporary_output(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    _recovered.add(str(folder.resolve()))
    if completed or removed:
        logger.warning("%s: completed %d case output set(s) interrupted by an earlier run and removed %d stale "
                       "temporary file(s) it left", folder, completed, removed)
    return completed, removed


def ensure_recovered(output_dir: str | os.PathLike) -> None:
    """:func:`recover_output_folder` once per folder and process (the writer calls it before its first case)."""
    if str(Path(output_dir).resolve()) not in _recovered:
        try:
            recover_output_folder(output_dir)
        except OSError as exc:
            raise _one_line_error(Path(output_dir), "an earlier run", exc, "nothing was changed") from None


def case_outputs_complete(output_dir: str | os.PathLike, case: str, output_format: str = "nifti",
                          preview: bool = True, verify_hashes: bool = True) -> bool:
    """True when ``output_dir`` holds a complete, consistent output set of ``case`` (``case_name`` + postfix).

    Complete means: the marker ``<case>_volumes.json`` exists and lists the segmentation of ``output_format``
    (and ``<case>_preview.png`` when ``preview``), each present with the recorded size (and SHA-256 with
    ``verify_hashes``), and no interrupted commit of the case is pending. Sets written with ``write_volumes=False``
    or by bundle versions before issue 14 have no such marker and count as incomplete (they are redone).
    Call :func:`recover_output_folder` first to finish interrupted commits.
    """
    from .formats import OUTPUT_SUFFIXES

    folder = Path(output_dir)
    if (folder / f".{case}{JOURNAL_SUFFIX}").exists():
        return False
    try:
        marker = json.loads((folder / f"{case}{MARKER_SUFFIX}").read_text())
        files = marker["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    expected = [f"{case}{OUTPUT_SUFFIXES[output_format]}"] + ([f"{case}_preview.png"] if preview else [])
    for name in expected:
        record, path = files.get(name) if isinstance(files, dict) else None, folder / name
        if not isinstance(record, dict) or not path.is_file() or path.stat().st_size != record.get("bytes"):
            return False
        if verify_hashes and file_record(path)["sha256"] != record.get("sha256"):
            return False
    return True
