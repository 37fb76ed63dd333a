"""Resolve the inference ``--input_path`` into a list of cases.

Accepted inputs:

- a NIfTI file (``.nii`` / ``.nii.gz``) or another ITK-readable volume (``.nrrd``, ``.mha``);
- a folder of such files;
- a KiTS-layout folder (``case_XXXXX/imaging.nii.gz``; labels, if present, are ignored) or one case folder;
- a folder holding one DICOM series (read by ITK);
- a folder of DICOM series, the usual hospital export (issue 15): every sub-folder is searched and its DICOM files
  are grouped by the ``SeriesInstanceUID`` read from their headers, one case per series; a folder holding files of
  several series is refused with one line (ITK would read only one of them).

Volume files, KiTS cases and DICOM series may sit side by side in one folder. ``pattern`` (a glob such as
``"*_venous.nii.gz"`` or ``"case_001*"``) keeps only the cases whose name or path relative to the folder matches.

Each case is named after its source: the ``case_XXXXX`` folder for KiTS, the file name without
extension, or the DICOM folder name. :func:`case_name` gives that name for the writer.
"""

from __future__ import annotations

import fnmatch
import os
from collections import defaultdict
from pathlib import Path

from ..common.errors import InputError
from .checks import check_image_file, check_regular_file
from .layout import CASE_PATTERN, IMAGE_NAME, VOLUME_SUFFIXES, case_name

__all__ = ["list_inference_inputs", "find_dicom_series"]


def list_inference_inputs(input_path: str | os.PathLike, pattern: str = "",
                          check: bool = True) -> list[dict[str, str]]:
    """Return ``[{"image": path}, ...]`` for every case under ``input_path`` (sorted).

    Args:
        input_path: a file, a folder of files, a KiTS folder or case folder, a DICOM series folder or a folder of them.
        pattern: optional glob; keeps the cases whose file/folder name or relative path matches it.
        check: check every file's header now (:func:`scripts.data.checks.check_image_file`), so one bad case stops
            the run before any work; ``False`` leaves the check to the per-case read (cohort runs that keep going).
    """
    if input_path is None or str(input_path).strip() == "":
        raise InputError("--input_path is missing: give a NIfTI file, a folder of NIfTI files, "
                         "a KiTS-layout folder or a DICOM series folder")
    root = Path(input_path)
    if not root.exists():
        raise InputError(f"{root}: input path does not exist")
    if not root.is_dir():
        check_regular_file(root, "--input_path")  # a FIFO or device would block the reader: refuse it by type
        paths = [root]
    elif CASE_PATTERN.match(root.name) and (root / IMAGE_NAME).is_file():
        paths = [root / IMAGE_NAME]  # one KiTS case folder
    else:
        paths = _folder_cases(root)
    if pattern:
        paths = [p for p in paths if _matches(p, root, pattern)]
        if not paths:
            raise InputError(f"{root}: no case matches --pattern {pattern!r}")
    names = [case_name(p) for p in paths]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise InputError(f"{root}: several inputs would write the same output name {sorted(duplicates)}")
    if check:
        for path in paths:
            check_image_file(path)
    return [{"image": str(p)} for p in paths]


def _folder_cases(root: Path) -> list[Path]:
    """KiTS cases, volume files and DICOM series found in ``root`` (a DICOM folder itself is one case)."""
    entries = sorted(root.iterdir())
    kits_cases = [p for p in entries if p.is_dir() and CASE_PATTERN.match(p.name) and (p / IMAGE_NAME).is_file()]
    volumes = [p for p in entries if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)]
    others = [p for p in entries if p.is_dir() and p not in kits_cases]
    loose = [p for p in entries if p.is_file() and p not in volumes and not p.name.startswith(".")]
    if not kits_cases and not volumes and not others:
        if loose:
            return [root]  # a DICOM series folder (checked when read)
        raise InputError(f"{root}: input folder is empty or holds no NIfTI, KiTS cases or DICOM files")
    series = find_dicom_series(others) if others else []
    paths = [case / IMAGE_NAME for case in kits_cases] + volumes + series
    if not paths:
        if loose:
            return [root]
        raise InputError(f"{root}: input folder holds no NIfTI, KiTS cases or DICOM series")
    return sorted(paths)


def find_dicom_series(folders: list[Path]) -> list[Path]:
    """The folders under ``folders`` that hold DICOM files, one per ``SeriesInstanceUID`` (read from the headers).

    Raises:
        InputError: a folder holds files of several series, or one series is spread over several folders.
    """
    import pydicom

    by_series: dict[str, set[Path]] = defaultdict(set)
    by_folder: dict[Path, set[str]] = defaultdict(set)
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                except (pydicom.errors.InvalidDicomError, OSError, EOFError):
                    continue
                uid = str(header.get("SeriesInstanceUID", "") or f"(no SeriesInstanceUID in {path.parent})")
                by_series[uid].add(path.parent)
                by_folder[path.parent].add(uid)
    for folder, uids in by_folder.items():
        if len(uids) > 1:
            raise InputError(f"{folder}: holds files of {len(uids)} DICOM series; move each series into its own "
                             "folder (one case per series)")
    for uid, where in by_series.items():
        if len(where) > 1:
            raise InputError(f"DICOM series {uid} is spread over {len(where)} folders "
                             f"({', '.join(sorted(map(str, where))[:3])}); put its files in one folder")
    return sorted(next(iter(where)) for where in by_series.values())


def _matches(path: Path, root: Path, pattern: str) -> bool:
    """``pattern`` against the case's file or folder name, its case name and its path relative to ``root``."""
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        relative = path.name
    return any(fnmatch.fnmatch(text, pattern) for text in (path.name, case_name(path), relative))
