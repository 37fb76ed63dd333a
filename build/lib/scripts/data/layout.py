"""The KiTS19/21/23 folder layout and case naming, in one place.

A KiTS data set is ``<dataset_dir>/case_XXXXX/imaging.nii.gz`` (+ ``segmentation.nii.gz``); every output of a case
is named by :func:`case_name`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["CASE_PATTERN", "IMAGE_NAME", "LABEL_NAME", "NIFTI_SUFFIXES", "VOLUME_SUFFIXES", "case_name"]

CASE_PATTERN = re.compile(r"^case_\d{5}$")
IMAGE_NAME = "imaging.nii.gz"
LABEL_NAME = "segmentation.nii.gz"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".nhdr", ".mha", ".mhd")


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_name(source: str | os.PathLike) -> str:
    """Name of a case from its source path (``.../case_00012/imaging.nii.gz`` -> ``case_00012``)."""
    path = Path(source)
    if path.is_dir():
        return path.name
    if path.name in (IMAGE_NAME, LABEL_NAME) and CASE_PATTERN.match(path.parent.name):
        return path.parent.name
    return _strip_suffix(path.name)
