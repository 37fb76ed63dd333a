"""Read a CT for streaming inference without a full-resolution float copy.

MONAI's ``LoadImaged`` returns the whole volume as float32 (4 bytes a voxel: 210 MB for 512x512x200, 1 GB for
512x512x1000) and a C-ordered copy of it. The streaming segmenter (:mod:`scripts.streaming`) only needs the voxels
as stored plus the scaling: a NIfTI file is read raw through nibabel (``int16`` for KiTS, 2 bytes a voxel) and the
``scl_slope``/``scl_inter`` are applied to one slice batch at a time. Other formats (DICOM series, NRRD, MHA) go
through the bundle's checked MONAI loader with their stored dtype kept.

Geometry follows MONAI exactly: the affine is the voxel-to-world (RAS) matrix MONAI's readers report
(``nibabel``'s best affine for NIfTI, ITK's LPS converted to RAS otherwise), so orientation handling is the same
as the ``Orientationd`` of ``configs/inference.json``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputError
from .validation import _MIN_EXPECTED_HU, _READ_ERRORS, NIFTI_SUFFIXES, LoadImageCheckedd, check_image_file

__all__ = ["LoadedCT", "read_ct"]


@dataclass
class LoadedCT:
    """One CT as stored: ``voxels`` (x, y, z) in the file's dtype, HU = ``voxels * slope + inter``."""

    source: str
    voxels: np.ndarray
    affine: np.ndarray
    slope: float = 1.0
    inter: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.voxels.shape)

    def hounsfield(self, block: np.ndarray) -> np.ndarray:
        """``block`` of ``voxels`` in HU as float32 (scaled in float64 first when the file stores a scaling)."""
        if self.slope == 1.0 and self.inter == 0.0:
            return block.astype(np.float32)
        return (block * np.float64(self.slope) + np.float64(self.inter)).astype(np.float32)


def _scaling(image: nib.Nifti1Image) -> tuple[float, float]:
    slope, inter = image.dataobj.slope, image.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _read_nifti(path: Path) -> LoadedCT:
    try:
        image = nib.load(str(path))
        voxels = np.asarray(image.dataobj.get_unscaled())
    except _READ_ERRORS as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot be read ({reason}); the file is truncated or damaged") from None
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    slope, inter = _scaling(image)
    return LoadedCT(str(path), voxels, np.asarray(image.affine, dtype=np.float64), slope, inter)


def _read_with_monai(path: Path) -> LoadedCT:
    loaded = LoadImageCheckedd(keys="image", image_only=True, dtype=None)({"image": str(path)})["image"]
    voxels = np.asarray(loaded.detach().cpu().numpy())
    while voxels.ndim > 3 and voxels.shape[-1] == 1:
        voxels = voxels[..., 0]
    return LoadedCT(str(path), voxels, np.asarray(loaded.affine, dtype=np.float64))


def _check_values(ct: LoadedCT, min_expected_hu: float) -> None:
    """NaN voxels are an error; no air (nothing below ``min_expected_hu``) is a warning (as ``ValidateCTd``)."""
    if ct.voxels.ndim != 3:
        raise InputError(f"{ct.source}: is a {ct.voxels.ndim}D image with shape {ct.voxels.shape}; "
                         "a 3D CT volume is required")
    low, high = ct.voxels.min(), ct.voxels.max()  # NaN propagates through min/max: no full-size mask needed
    if np.issubdtype(ct.voxels.dtype, np.floating) and (math.isnan(low) or math.isnan(high)):
        n_nan = sum(int(np.isnan(plane).sum()) for plane in np.moveaxis(ct.voxels, -1, 0))
        raise InputError(f"{ct.source}: contains {n_nan} NaN voxels")
    low, high = (float(v) * ct.slope + ct.inter for v in (low, high))
    if ct.slope < 0:
        low, high = high, low
    if low > min_expected_hu:
        warnings.warn(f"{ct.source}: intensities {low:.0f}..{high:.0f} hold no air (< {min_expected_hu:.0f}); this "
                      "does not look like CT in Hounsfield units (MR or normalised image?), results will be "
                      "unreliable", stacklevel=3)


def read_ct(path: str | os.PathLike, min_expected_hu: float = _MIN_EXPECTED_HU) -> LoadedCT:
    """Read and check one CT (NIfTI file, DICOM series folder, NRRD, MHA); bad input raises :class:`InputError`."""
    path = Path(path)
    check_image_file(path)
    is_nifti = path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)
    ct = _read_nifti(path) if is_nifti else _read_with_monai(path)
    _check_values(ct, min_expected_hu)
    return ct
