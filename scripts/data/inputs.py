"""Resolve the inference ``--input_path`` into a list of cases.

Accepted inputs:

- a NIfTI file (``.nii`` / ``.nii.gz``) or another ITK-readable volume (``.nrrd``, ``.mha``);
- a folder of such files;
- a KiTS-layout folder (``case_XXXXX/imaging.nii.gz``; labels, if present, are ignored) or one case folder;
- a folder holding one DICOM series (read by ITK).

Each case is named after its source: the ``case_XXXXX`` folder for KiTS, the file name without
extension, or the DICOM folder name. :func:`case_name` gives that name for the writer.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..common.errors import InputError
from .checks import check_image_file, check_regular_file
from .layout import CASE_PATTERN, IMAGE_NAME, VOLUME_SUFFIXES, case_name

__all__ = ["list_inference_inputs"]

def list_inference_inputs(input_path: str | os.PathLike) -> list[dict[str, str]]:
    """Return ``[{"image": path}, ...]`` for every case under ``input_path`` (checked, sorted)."""
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
        kits_cases = sorted(p for p in root.iterdir() if p.is_dir() and CASE_PATTERN.match(p.name))
        volumes = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        if kits_cases:
            paths = [case / IMAGE_NAME for case in kits_cases]
        elif volumes:
            paths = volumes
        elif any(p.is_file() for p in root.iterdir()):
            paths = [root]  # a DICOM series folder
        else:
            raise InputError(f"{root}: input folder is empty or holds no NIfTI, KiTS cases or DICOM files")
    names = [case_name(p) for p in paths]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise InputError(f"{root}: several inputs would write the same output name {sorted(duplicates)}")
    for path in paths:
        check_image_file(path)
    return [{"image": str(p)} for p in paths]
