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
from nibabel.fileholders import FileHolder
import numpy as np

from ..common.errors import InputError
from .checks import MIN_EXPECTED_HU, READ_ERRORS, check_image_file, warn_infinite_voxels
from .layout import NIFTI_SUFFIXES

__all__ = ["LoadedCT", "read_ct"]

#: stored bytes a KiTS-order (slice axis first) file is read in: each window is one pass over the file (issue 17)
WINDOW_BYTES = 256 * 2**20


@dataclass
class LoadedCT:
    """One CT as stored: ``voxels`` (x, y, z) in the file's dtype, HU = ``voxels * slope + inter``.

    NIfTI voxels are not read up front (``voxels`` is None): ``proxy`` (nibabel's array proxy, file kept open) yields
    them as they are needed. When the file's last (slowest) axis is the axial one (RAS/LPS-stored NIfTI, most DICOM
    conversions) they are read slab by slab in file order. KiTS stores the slice axis first (the fastest on disk), so
    every axial slab is spread over the whole file: they are read in windows of axial slices of at most
    ``window_bytes``, each window filled by one pass over the file in contiguous slabs along its slowest axis (a
    gzip stream decompresses sequentially: one pass costs one decompression of the file; issue 17).
    """

    source: str
    voxels: np.ndarray | None
    affine: np.ndarray
    slope: float = 1.0
    inter: float = 0.0
    proxy: object | None = None
    stored_shape: tuple[int, ...] | None = None
    window_bytes: int = WINDOW_BYTES
    _range: list = field(default_factory=lambda: [math.inf, -math.inf])
    _infinite: list = field(default_factory=lambda: [0, 0])  # -Inf, +Inf voxels met so far

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

        Slab-streamed files (axial axis last) yield in file order, KiTS-order windows in RAS order; NaN voxels raise
        :class:`InputError` as they are met; ±Inf voxels are counted and warned about once, after the last slab.
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
        axial = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the file axis that is the RAS axial one
        flipped = ornt[axial, 1] == -1
        if axial == 2:  # axial axis slowest on disk: each chunk is one contiguous slab
            windows = [(z0, min(depth, z0 + chunk)) for z0 in range(0, depth, chunk)]
        else:  # windows of whole chunks, as many slices as window_bytes holds; one pass over the file each
            slice_bytes = self.shape[0] * self.shape[1] * self.shape[2] // depth * self.proxy.dtype.itemsize
            step = max(1, self.window_bytes // max(1, slice_bytes * chunk)) * chunk
            windows = [(w0, min(depth, w0 + step)) for w0 in range(0, depth, step)]
        # a slab-per-chunk file is read in file order (a gzip stream only seeks forward cheaply); each window of a
        # KiTS-order file is a pass over the whole file anyway, so those go in RAS order
        for w0, w1 in reversed(windows) if flipped and axial == 2 else windows:
            lo, hi = (depth - w1, depth - w0) if flipped else (w0, w1)
            window = self._read_axial_range(axial, lo, hi)
            self._note(window)
            ras = nib.orientations.apply_orientation(window, ornt)  # a view: (x, y, w1 - w0)
            for z0 in range(w0, w1, chunk):
                yield z0, min(w1, z0 + chunk), ras[:, :, z0 - w0:min(w1, z0 + chunk) - w0]
            del window, ras
        warn_infinite_voxels(self.source, *self._infinite)
        if self._range[0] <= self._range[1]:
            _warn_if_not_ct(self.source, *self._range, self.slope, self.inter, MIN_EXPECTED_HU)

    def _read_axial_range(self, axial: int, lo: int, hi: int) -> np.ndarray:
        """Stored voxels ``lo:hi`` of file axis ``axial``, in the file's axes; for a file whose axial axis is not
        the slowest, one pass over the whole file in contiguous slabs along its last axis (at most 16 MB or half a
        window each)."""
        extra = (0,) * (len(self.stored_shape) - 3)
        pick = [slice(None)] * 3
        pick[axial] = slice(lo, hi)
        try:
            if axial == 2:
                return np.asarray(self.proxy._get_unscaled((*pick, *extra)))
            shape = list(self.shape)
            shape[axial] = hi - lo
            window = np.empty(shape, dtype=self.proxy.dtype, order="F")
            per_plane = self.shape[0] * self.shape[1] * self.proxy.dtype.itemsize
            planes = max(1, min(16 * 2**20, self.window_bytes // 2) // per_plane)
            for c0 in range(0, self.shape[2], planes):
                c1 = min(self.shape[2], c0 + planes)
                slab = np.asarray(self.proxy._get_unscaled((slice(None), slice(None), slice(c0, c1), *extra)))
                window[:, :, c0:c1] = slab[tuple(pick[:2])]
            return window
        except READ_ERRORS as exc:
            raise _damaged(self.source, exc) from None

    def _note(self, block: np.ndarray) -> None:
        low, high = block.min(), block.max()
        if np.issubdtype(block.dtype, np.floating) and (math.isnan(low) or math.isnan(high)):
            raise InputError(f"{self.source}: contains {int(np.isnan(block).sum())} NaN voxels in slices being read")
        if math.isinf(low) or math.isinf(high):
            (low, high), infinite = _finite_range(block)
            self._infinite = [a + b for a, b in zip(self._infinite, infinite)]
        self._range[0], self._range[1] = min(self._range[0], float(low)), max(self._range[1], float(high))

    def release(self) -> None:
        """Drop the voxels and close the open file once the network has seen every slice."""
        stream = getattr(self.proxy, "file_like", None)
        if hasattr(stream, "close"):  # the ISA-L stream _open_nifti handed nibabel (nibabel's own: a file name)
            stream.close()
        self.voxels, self.proxy = None, None


def _finite_range(voxels: np.ndarray) -> tuple[tuple[float, float], tuple[int, int]]:
    """``((low, high) of the finite voxels, (number of -Inf, number of +Inf))``, one plane at a time (no full mask).

    ±Inf voxels go through the pipeline unchanged: the HU window clips them to its bounds
    (:func:`scripts.data.preprocessing.window_and_resize`, ``ScaleIntensityRanged`` with ``clip``).
    """
    low, high, negative, positive = math.inf, -math.inf, 0, 0
    for plane in np.moveaxis(voxels, -1, 0):
        finite = plane[np.isfinite(plane)]
        negative += int(np.isneginf(plane).sum())
        positive += int(np.isposinf(plane).sum())
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return (low, high), (negative, positive)


def _damaged(path, exc: BaseException) -> InputError:
    """The one-line error for a file whose voxel data a reader could not decode."""
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return InputError(f"{path}: cannot be read ({reason}); the file is truncated or damaged")


def _scaling(image: nib.Nifti1Image) -> tuple[float, float]:
    slope, inter = image.dataobj.slope, image.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _open_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """``nib.load`` with the file kept open; a ``.nii.gz`` is decompressed by ISA-L (``isal``, about twice zlib's
    speed: 0.45 -> 0.22 s for a 512x512x200 KiTS CT) when it is installed, else by nibabel's ``gzip``."""
    image = nib.load(str(path), keep_file_open=True)  # reads the header only: it picks NIfTI-1 or NIfTI-2
    if not path.name.lower().endswith(".gz"):
        return image
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is in requirements.txt; plain gzip still works
        return image
    stream = igzip.open(str(path), "rb")
    holder = FileHolder(str(path), stream)
    return type(image).from_file_map({"image": holder, "header": holder})


def _read_nifti(path: Path, stream: bool = True, window_bytes: int = WINDOW_BYTES) -> LoadedCT:
    try:
        image = _open_nifti(path)
        shape = tuple(int(n) for n in image.shape)
        slope, inter = _scaling(image)
        affine = np.asarray(image.affine, dtype=np.float64)
        if stream and len(shape) >= 3 and all(n == 1 for n in shape[3:]) and hasattr(image.dataobj, "_get_unscaled"):
            return LoadedCT(str(path), None, affine, slope, inter, proxy=image.dataobj, stored_shape=shape,
                            window_bytes=int(window_bytes))
        voxels = np.asarray(image.dataobj.get_unscaled())
    except READ_ERRORS as exc:
        raise _damaged(path, exc) from None
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    return LoadedCT(str(path), voxels, affine, slope, inter)


def _read_with_monai(path: Path) -> LoadedCT:
    from .transforms import LoadImageCheckedd  # MONAI's readers only for non-NIfTI inputs (DICOM, NRRD, MHA)

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
    if math.isinf(low) or math.isinf(high):
        (low, high), infinite = _finite_range(ct.voxels)
        warn_infinite_voxels(ct.source, *infinite)
        if low > high:  # nothing finite: no range to judge
            return
    _warn_if_not_ct(ct.source, float(low), float(high), ct.slope, ct.inter, min_expected_hu)


def _warn_if_not_ct(source: str, low: float, high: float, slope: float, inter: float, min_expected_hu: float) -> None:
    low, high = (v * slope + inter for v in (low, high))
    if slope < 0:
        low, high = high, low
    if low > min_expected_hu:
        warnings.warn(f"{source}: intensities {low:.0f}..{high:.0f} hold no air (< {min_expected_hu:.0f}); this "
                      "does not look like CT in Hounsfield units (MR or normalised image?), results will be "
                      "unreliable", stacklevel=3)


def read_ct(path: str | os.PathLike, min_expected_hu: float = MIN_EXPECTED_HU, stream: bool = True,
            window_bytes: int = WINDOW_BYTES) -> LoadedCT:
    """Read and check one CT (NIfTI file, DICOM series folder, NRRD, MHA); bad input raises :class:`InputError`.

    With ``stream`` a 3D NIfTI file is opened for reading as the slices are needed (:meth:`LoadedCT.axial_blocks`):
    slab by slab when its last axis is the axial one, else (KiTS order) in axial windows of at most
    ``window_bytes`` of stored voxels, one pass over the file per window; its value checks then run as the voxels
    are read.
    """
    path = Path(path)
    check_image_file(path)
    is_nifti = path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)
    ct = _read_nifti(path, stream, window_bytes) if is_nifti else _read_with_monai(path)
    if ct.voxels is not None:
        _check_values(ct, min_expected_hu)
    return ct
