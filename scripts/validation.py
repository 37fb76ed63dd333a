"""Input checks that fail early with one line naming the file and the problem.

Header-level checks (:func:`check_image_file`, :func:`check_datalist`, :func:`check_output_dir`) run in
the main process before any data are cached, so a bad case is reported before minutes of preprocessing.
:class:`ValidateCTd` checks voxel values after loading (NaN voxels are an error, intensity ranges that do
not look like CT in Hounsfield units are a warning).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, LoadImaged, MapTransform

from .errors import InputError

__all__ = ["check_image_file", "check_datalist", "check_output_dir", "check_weights_file", "ValidateCTd",
           "LoadImageCheckedd", "NIFTI_SUFFIXES"]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# What readers raise for damaged data: gzip CRC/EOF errors, ITK "could not create IO object", "no DICOMs in".
_READ_ERRORS = (OSError, EOFError, RuntimeError, ValueError, zlib.error)
try:  # with pynrrd installed (for .seg.nrrd output), MONAI reads .nrrd inputs with its NrrdReader
    from nrrd.errors import NRRDError

    _READ_ERRORS += (NRRDError,)
except ImportError:  # pragma: no cover
    pass
# Abdominal CT always holds air (about -1000 HU) around the body or in bowel; MR and rescaled images don't.
_MIN_EXPECTED_HU = -200.0


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
        return None
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


def check_output_dir(path: str | os.PathLike) -> str:
    """Create ``path`` if needed and prove it is writable; return it as a string."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: output folder cannot be written ({exc.strerror or exc})") from None
    return str(path)


class _LoaderNamingFile:
    """Wraps a :class:`monai.transforms.LoadImage`: a reader failure becomes an :class:`InputError` naming the file."""

    def __init__(self, loader: LoadImage) -> None:
        self.loader = loader

    @property
    def image_only(self) -> bool:
        """The wrapped loader's flag, read and written through: MONAI Label sets ``_loader.image_only = False``."""
        return self.loader.image_only

    @image_only.setter
    def image_only(self, value: bool) -> None:
        self.loader.image_only = value

    def register(self, reader) -> None:
        self.loader.register(reader)

    def __call__(self, filename, reader=None):
        try:
            return self.loader(filename, reader)
        except InputError:
            raise
        except _READ_ERRORS as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[0][:200] if lines else type(exc).__name__
            raise InputError(f"{filename}: cannot be read ({reason}); the file is truncated or damaged, or not an "
                             "image MONAI reads (NIfTI, NRRD, MHA, or a folder holding one DICOM series)") from exc


class LoadImageCheckedd(LoadImaged):
    """``LoadImaged`` whose reader failures raise one :class:`InputError` naming the file that failed.

    The header checks (:func:`check_image_file`) cannot see damage inside the compressed voxel data, or in
    formats other than NIfTI; without this, such a file stops a run with a traceback from gzip or ITK.
    Takes the same arguments as ``LoadImaged``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loader = _LoaderNamingFile(self._loader)


class ValidateCTd(MapTransform):
    """Check a freshly loaded CT (place it right after ``LoadImaged``, before ``EnsureChannelFirstd``).

    Not 3D or NaN voxels raise :class:`InputError`; an intensity range that is not CT-like warns.

    Args:
        keys: image keys to check.
        min_expected_hu: a CT in Hounsfield units has voxels below this value (air); if none are
            found the image is probably MR or already normalised, and a warning names the file.
    """

    def __init__(self, keys: KeysCollection, min_expected_hu: float = _MIN_EXPECTED_HU,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_expected_hu = min_expected_hu

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            name = getattr(image, "meta", {}).get("filename_or_obj", key)
            if image.ndim != 3:  # placed right after LoadImaged, before a channel dim is added
                raise InputError(f"{name}: is a {image.ndim}D image with shape {tuple(image.shape)}; "
                                 "a 3D CT volume is required")
            if torch.is_floating_point(image):
                n_nan = int(torch.isnan(image).sum())
                if n_nan:
                    raise InputError(f"{name}: contains {n_nan} NaN voxels")
            low, high = float(image.min()), float(image.max())
            if low > self.min_expected_hu:
                message = (f"{name}: intensities {low:.0f}..{high:.0f} hold no air (< {self.min_expected_hu:.0f}); "
                           "this does not look like CT in Hounsfield units (MR or normalised image?), "
                           "results will be unreliable")
                warnings.warn(message, stacklevel=2)
                logger.warning(message)
        return d


def check_weights_file(path: str | os.PathLike) -> str:
    """Stop with one line saying how to get weights when ``path`` (e.g. ``models/model.pt``) is missing."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(
            f"{path}: no trained weights. Train first (python -m monai.bundle run training --config_file "
            "configs/train.json --dataset_dir DIR), run the demo (bash demo.sh), or put a trained model.pt "
            "there (see large_files.yml); pass another file with --model_path"
        )
    return str(path)
