"""Read a CT for streaming inference without a full-resolution float copy.

MONAI's ``LoadImaged`` returns the whole volume as float32 (4 bytes a voxel: 210 MB for 512x512x200, 1 GB for
512x512x1000) and a C-ordered copy of it. The streaming segmenter (:mod:`scripts.inference.streaming`) only needs the voxels
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..common.errors import InputError
from .checks import MIN_EXPECTED_HU, READ_ERRORS, check_image_file
from .layout import NIFTI_SUFFIXES
from .transforms import LoadImageCheckedd

__all__ = ["LoadedCT", "read_ct"]


@dataclass
class LoadedCT:
    """One CT as stored: ``voxels`` (x, y, z) in the file's dtype, HU = ``voxels * slope + inter``.

    When the file's last (slowest) axis is the axial one (RAS/LPS-stored NIfTI, most DICOM conversions), the voxels
    are not read up front: ``proxy`` (nibabel's array proxy, file kept open) yields them slab by slab in file order
    and ``voxels`` is None. KiTS stores the slice axis first (the fastest on disk), so a KiTS case is read whole.
    """

    source: str
    voxels: np.ndarray | None
    affine: np.ndarray
    slope: float = 1.0
    inter: float = 0.0
    proxy: object | None = None
    stored_shape: tuple[int, ...] | None = None
    _range: list = field(default_factory=lambda: [math.inf, -math.inf])

    @property
    def shape(self) -> tuple[int, int, int]:
        shape = self.stored_shape if self.voxels is None else self.voxels.shape
        return tuple(int(s) for s in shape[:3])

    def hounsfield(self, block: np.ndarray) -> np.ndarray:
        """``block`` of ``voxels`` in HU as float32 (scaled in float64 first when the file stores a scaling)."""
        if self.slope == 1.0 and self.inter == 0.0:
            return block.astype(np.float32)
        return (block * np.float64(self.slope) + np.float64(self.inter)).astype(np.float32)

    def axial_blocks(self, ornt: np.ndarray, chunk: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(z0, z1, block)``: stored voxels of RAS slices ``z0:z1`` as an (x, y, k) RAS array, ``chunk`` at a time.

        Streamed files are read in file order (a gzip stream only seeks forward cheaply); NaN voxels raise
        :class:`InputError` as they are met.
        """
        ras_shape = [0, 0, 0]
        for axis, (target, _) in enumerate(ornt):
            ras_shape[int(target)] = self.shape[axis]
        depth = ras_shape[2]
        if self.voxels is not None:
            ras = nib.orientations.apply_orientation(self.voxels, ornt)  # a view: flips + transpose
            for z0 in range(0, depth, chunk):
                yield z0, min(depth, z0 + chunk), ras[:, :, z0:min(depth, z0 + chunk)]
            return
        flipped = ornt[2, 1] == -1
        starts = list(range(0, depth, chunk))
        for z0 in reversed(starts) if flipped else starts:
            z1 = min(depth, z0 + chunk)
            lo, hi = (depth - z1, depth - z0) if flipped else (z0, z1)
            slicer = (slice(None), slice(None), slice(lo, hi)) + (0,) * (len(self.stored_shape) - 3)
            try:
                block = np.asarray(self.proxy._get_unscaled(slicer))
            except READ_ERRORS as exc:
                raise _damaged(self.source, exc) from None
            self._note(block)
            yield z0, z1, nib.orientations.apply_orientation(block, ornt)
        if self._range[0] <= self._range[1]:
            _warn_if_not_ct(self.source, *self._range, self.slope, self.inter, MIN_EXPECTED_HU)

    def _note(self, block: np.ndarray) -> None:
        low, high = block.min(), block.max()
        if np.issubdtype(block.dtype, np.floating) and (math.isnan(low) or math.isnan(high)):
            raise InputError(f"{self.source}: contains {int(np.isnan(block).sum())} NaN voxels in slices being read")
        self._range[0], self._range[1] = min(self._range[0], float(low)), max(self._range[1], float(high))

    def release(self) -> None:
        """Drop the voxels (and the open file) once the network has seen every slice."""
        self.voxels, self.proxy = None, None


def _damaged(path, exc: BaseException) -> InputError:
    """The one-line error for a file whose voxel data a reader could not decode."""
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return InputError(f"{path}: cannot be read ({reason}); the file is truncated or damaged")


def _scaling(image: nib.Nifti1Image) -> tuple[float, float]:
    slope, inter = image.dataobj.slope, image.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _read_nifti(path: Path, stream: bool = True) -> LoadedCT:
    try:
        image = nib.load(str(path), keep_file_open=True)
        shape = tuple(int(n) for n in image.shape)
        slope, inter = _scaling(image)
        affine = np.asarray(image.affine, dtype=np.float64)
        if stream and int(nib.io_orientation(affine)[2, 0]) == 2 and hasattr(image.dataobj, "_get_unscaled"):
            return LoadedCT(str(path), None, affine, slope, inter, proxy=image.dataobj, stored_shape=shape)
        voxels = np.asarray(image.dataobj.get_unscaled())
    except READ_ERRORS as exc:
        raise _damaged(path, exc) from None
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    return LoadedCT(str(path), voxels, affine, slope, inter)


def _read_with_monai(path: Path) -> LoadedCT:
    loaded = LoadImageCheckedd(keys="image", image_only=True, dtype=None)({"image": str(path)})["image"]
    voxels = np.asarray(loaded.detach().cpu().numpy())
    while voxels.ndim > 3 and voxels.shape[-1] == 1:
        voxels = voxels[..., 0]
    return LoadedCT(str(path), voxels, np.asarray(loaded.affine, dtype=np.float64))


def _check_values(ct: LoadedCT, min_expected_hu: float) -> None:
    """NaN voxels are an error; no air (nothing below ``min_expected_hu``) is a warning (as ``ValidateCTd``)."""
    if len(ct.voxels.shape) != 3:
        raise InputError(f"{ct.source}: is a {ct.voxels.ndim}D image with shape {ct.voxels.shape}; "
                         "a 3D CT volume is required")
    low, high = ct.voxels.min(), ct.voxels.max()  # NaN propagates through min/max: no full-size mask needed
    if np.issubdtype(ct.voxels.dtype, np.floating) and (math.isnan(low) or math.isnan(high)):
        n_nan = sum(int(np.isnan(plane).sum()) for plane in np.moveaxis(ct.voxels, -1, 0))
        raise InputError(f"{ct.source}: contains {n_nan} NaN voxels")
    _warn_if_not_ct(ct.source, float(low), float(high), ct.slope, ct.inter, min_expected_hu)


def _warn_if_not_ct(source: str, low: float, high: float, slope: float, inter: float, min_expected_hu: float) -> None:
    low, high = (v * slope + inter for v in (low, high))
    if slope < 0:
        low, high = high, low
    if low > min_expected_hu:
        warnings.warn(f"{source}: intensities {low:.0f}..{high:.0f} hold no air (< {min_expected_hu:.0f}); this "
                      "does not look like CT in Hounsfield units (MR or normalised image?), results will be "
                      "unreliable", stacklevel=3)


def read_ct(path: str | os.PathLike, min_expected_hu: float = MIN_EXPECTED_HU, stream: bool = True) -> LoadedCT:
    """Read and check one CT (NIfTI file, DICOM series folder, NRRD, MHA); bad input raises :class:`InputError`.

    With ``stream`` a NIfTI file whose last axis is the axial one is opened for slab-by-slab reading
    (:meth:`LoadedCT.axial_blocks`); its value checks then run as the slabs are read.
    """
    path = Path(path)
    check_image_file(path)
    is_nifti = path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)
    ct = _read_nifti(path, stream) if is_nifti else _read_with_monai(path)
    if ct.voxels is not None:
        _check_values(ct, min_expected_hu)
    return ct
