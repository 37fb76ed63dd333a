"""Input checks that fail early with one line naming the file and the problem.

Header-level checks (:func:`check_image_file`, :func:`check_datalist`) run in the main process before any data
are cached, so a bad case is reported before minutes of preprocessing. Voxel values are checked after loading by
:class:`scripts.data.transforms.ValidateCTd`.
"""

from __future__ import annotations

import gzip
import logging
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..common.errors import InputError
from .layout import NIFTI_SUFFIXES

__all__ = ["check_image_file", "check_datalist", "check_dicom_modality", "check_regular_file",
           "warn_infinite_voxels", "READ_ERRORS", "MIN_EXPECTED_HU", "NON_IMAGE_MODALITIES"]

logger = logging.getLogger(__name__)

# What readers raise for damaged data: gzip CRC/EOF errors, ITK "could not create IO object", "no DICOMs in".
READ_ERRORS = (OSError, EOFError, RuntimeError, ValueError, zlib.error)
try:  # with pynrrd installed (for .seg.nrrd output), MONAI reads .nrrd inputs with its NrrdReader
    from nrrd.errors import NRRDError

    READ_ERRORS += (NRRDError,)
except ImportError:  # pragma: no cover
    pass
try:  # isal's gzip reader (scripts/data/ct_reader.py) raises its own error for corrupt deflate data
    from isal.isal_zlib import error as IsalError

    READ_ERRORS += (IsalError,)
except ImportError:  # pragma: no cover
    pass
# Abdominal CT always holds air (about -1000 HU) around the body or in bowel; MR and rescaled images don't.
MIN_EXPECTED_HU = -200.0
# DICOM Modality values of objects that hold no image a CT network could read (segmentations, structure sets,
# plans, dose grids, reports, presentation states, key objects, registrations, encapsulated documents).
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "REG", "DOC",
                                  "FID", "PLAN", "AU", "ECG"})


def _warn(message: str, stacklevel: int = 3) -> None:
    """A ``UserWarning`` (tests, notebooks) and a log line (the command line's log)."""
    warnings.warn(message, stacklevel=stacklevel)
    logger.warning(message)


def check_dicom_modality(folder: str | os.PathLike, warn: bool = True) -> set[str]:
    """Read the ``Modality`` of the DICOM files in ``folder`` (headers only); return the values found.

    A series with only non-image modalities (``SEG``, ``RTSTRUCT``, ``SR``, ... :data:`NON_IMAGE_MODALITIES`)
    raises :class:`InputError`; any other modality without ``CT`` (``MR``, ``PT``, ...) warns once with ``warn``:
    the networks were trained on CT in Hounsfield units, and an MR series runs but gives meaningless labels.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    found: set[str] = set()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        found.add(str(ds.get("Modality", "") or "").strip().upper())
        if "CT" in found:  # a CT series: one header read (large series are checked for the price of one file)
            break
    found.discard("")
    if not found or "CT" in found:
        return found
    listed = ", ".join(sorted(found))
    if found <= NON_IMAGE_MODALITIES:
        raise InputError(f"{folder}: DICOM series has Modality {listed}, not an image series; give the folder of "
                         "the CT series it refers to")
    if warn:
        _warn(f"{folder}: DICOM series has Modality {listed}, not CT; the networks were trained on CT in Hounsfield "
              "units, so its labels will be unreliable")
    return found


def warn_infinite_voxels(source: str, n_negative: int, n_positive: int) -> None:
    """One warning naming the file and the counts: -Inf voxels count as the HU window's lower bound, +Inf as its
    upper bound (``ScaleIntensityRanged`` with ``clip`` and :func:`scripts.data.preprocessing.window_and_resize`
    map them there)."""
    if n_negative or n_positive:
        _warn(f"{source}: {n_negative} -Inf and {n_positive} +Inf voxels; treated as the HU window's lower (-Inf) and "
              "upper (+Inf) bound. Check how the file was converted", stacklevel=4)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def check_image_file(path: str | os.PathLike, role: str = "image") -> tuple[int, ...] | None:
    """Check that ``path`` is a readable 3D volume; return its spatial shape (None for a DICOM folder).

    Raises:
        InputError: missing or empty path, unreadable NIfTI header, voxel data cut short, or not a 3D image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {role} file does not exist")
    if path.is_dir():
        if not any(p.is_file() for p in path.iterdir()):
            raise InputError(f"{path}: {role} folder is empty (expected a DICOM series)")
        check_dicom_modality(path, warn=False)  # refuses SEG/RTSTRUCT/...; the loader warns for MR and others
        return None
    check_regular_file(path, role)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: {role} file is empty (0 bytes)")
    if not _is_nifti(path):
        return None  # other formats (nrrd, mha, ...) are read by ITK; checked after loading
    try:
        image = nib.load(str(path))
        shape = tuple(int(s) for s in image.shape)
        data_end = int(image.dataobj.offset) + int(np.prod(shape)) * image.get_data_dtype().itemsize
    except Exception as exc:  # nibabel raises several types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot be read as NIfTI, the file is corrupt or not NIfTI ({reason})") from None
    _check_data_complete(path, data_end, role)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: is a {len(shape)}D image with shape {shape}; a 3D CT volume is required")
    return shape


def check_regular_file(path: Path, role: str = "image") -> None:
    """A FIFO, socket or device (``/dev/zero``) would block or never end a read: refuse it by its file type."""
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise InputError(f"{path}: {role} is {kind}, not a regular file; give a NIfTI/NRRD/MHA file or a DICOM "
                         "series folder")


def _check_data_complete(path: Path, data_end: int, role: str) -> None:
    """Raise if the voxel data of a NIfTI whose header was readable end early (interrupted download or copy).

    The header alone does not show it, and the loader would only fail later, deep inside zlib. For
    ``.nii.gz`` the gzip trailer stores the uncompressed size (mod 2**32): when it equals the size the
    header implies, the file is complete (one seek, no decompression); otherwise - truncation, or a
    multi-member gzip whose trailer covers only the last member - the stream is decompressed to be sure.
    """
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        if size < data_end:
            raise InputError(f"{path}: {role} file is truncated ({size} bytes, the header needs {data_end}); "
                             "copy or download it again")
        return
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if struct.unpack("<I", f.read(4))[0] == data_end % 2**32:
            return
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{path}: {role} file is truncated or damaged, its compressed data cannot be read "
                         f"({str(exc) or type(exc).__name__}); copy or download it again") from None
    if size < data_end:
        raise InputError(f"{path}: {role} file is truncated ({size} bytes uncompressed, the header needs "
                         f"{data_end}); copy or download it again")


def check_datalist(items: Sequence[Mapping], require_label: bool = True, image_key: str = "image",
                   label_key: str = "label") -> Sequence[Mapping]:
    """Check every item of a datalist (image, label, matching shapes); return the items unchanged."""
    if len(items) == 0:
        raise InputError("datalist: no cases found (check --dataset_dir or --data_list_file_path)")
    for item in items:
        if image_key not in item:
            raise InputError(f"datalist entry {dict(item)}: has no '{image_key}' key")
        image_shape = check_image_file(item[image_key], "image")
        if not require_label:
            continue
        if not item.get(label_key):
            raise InputError(f"{item[image_key]}: has no label file in the datalist")
        label_shape = check_image_file(item[label_key], "label")
        if image_shape is not None and label_shape is not None and image_shape != label_shape:
            raise InputError(
                f"{item[label_key]}: label shape {label_shape} does not match image shape {image_shape} "
                f"of {item[image_key]}"
            )
    return items
