"""The bundle's own MONAI transforms: a loader whose failures name the file, a check of a loaded CT, the in-plane
padding that keeps the anatomy's aspect ratio, and the HU window + padding + in-plane resize computed slice batch by
slice batch.

The first two sit at the start of every preprocessing chain (train.json, inference.json) and of MONAI Label's;
:class:`PadToAspectd` sits between train.json's window and resize; :class:`WindowAndResized` is inference.json's (and
so MONAI Label's) window, padding and resize (issue 19).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, LoadImage, LoadImaged, MapTransform, Pad, Padd
from monai.transforms.utils import scale_affine

from ..common.errors import InputError
from .checks import MIN_EXPECTED_HU, READ_ERRORS, check_dicom_modality, warn_infinite_voxels
from .preprocessing import aspect_padding, window_and_resize

__all__ = ["LoadImageCheckedd", "ValidateCTd", "PadToAspect", "PadToAspectd", "WindowAndResized"]

logger = logging.getLogger(__name__)


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
        if isinstance(filename, (str, os.PathLike)) and Path(filename).is_dir():
            check_dicom_modality(filename)  # MR (or other non-CT) series: a warning; SEG, RTSTRUCT, ...: refused
        try:
            return self.loader(filename, reader)
        except InputError:
            raise
        except READ_ERRORS as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[0][:200] if lines else type(exc).__name__
            raise InputError(f"{filename}: cannot be read ({reason}); the file is truncated or damaged, or not an "
                             "image MONAI reads (NIfTI, NRRD, MHA, or a folder holding one DICOM series)") from exc


class LoadImageCheckedd(LoadImaged):
    """``LoadImaged`` whose reader failures raise one :class:`InputError` naming the file that failed.

    A DICOM series folder is also checked for its ``Modality`` first
    (:func:`scripts.data.checks.check_dicom_modality`: non-CT images warn, non-image objects are refused).

    The header checks (:func:`scripts.data.checks.check_image_file`) cannot see damage inside the compressed voxel data, or in
    formats other than NIfTI; without this, such a file stops a run with a traceback from gzip or ITK.
    Takes the same arguments as ``LoadImaged``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loader = _LoaderNamingFile(self._loader)


class ValidateCTd(MapTransform):
    """Check a freshly loaded CT (place it right after ``LoadImaged``, before ``EnsureChannelFirstd``).

    Not 3D or NaN voxels raise :class:`InputError` (NaN has no intensity to stand for: a damaged conversion is
    reported rather than guessed at); ±Inf voxels warn once with their counts and are left to the HU window,
    which clips -Inf to its lower and +Inf to its upper bound; an intensity range that is not CT-like warns.

    Args:
        keys: image keys to check.
        min_expected_hu: a CT in Hounsfield units has voxels below this value (air); if none are
            found the image is probably MR or already normalised, and a warning names the file.
    """

    def __init__(self, keys: KeysCollection, min_expected_hu: float = MIN_EXPECTED_HU,
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
            if torch.is_floating_point(image) and (low == float("-inf") or high == float("inf")):
                warn_infinite_voxels(name, int(torch.isneginf(image).sum()), int(torch.isposinf(image).sum()))
                finite = image[torch.isfinite(image)]
                low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (low, high)
            if low > self.min_expected_hu:
                message = (f"{name}: intensities {low:.0f}..{high:.0f} hold no air (< {self.min_expected_hu:.0f}); "
                           "this does not look like CT in Hounsfield units (MR or normalised image?), "
                           "results will be unreliable")
                warnings.warn(message, stacklevel=2)
                logger.warning(message)
        return d


class PadToAspect(Pad):
    """Pad the first two spatial axes, centred, with 0 to the aspect ratio of ``slice_size``
    (:func:`scripts.data.preprocessing.aspect_padding`), so that the in-plane resize that follows scales both axes
    alike instead of stretching a non-square slice. Channel first; other axes untouched; inverted by MONAI's ``Pad``.
    Placed after the HU window, where 0 is air (and background in a label map)."""

    def __init__(self, slice_size, lazy: bool = False) -> None:
        super().__init__(mode="constant", lazy=lazy)
        self.slice_size = (int(slice_size[0]), int(slice_size[1]))

    def compute_pad_width(self, spatial_shape):
        rows, cols = aspect_padding(spatial_shape[:2], self.slice_size)
        return ((0, 0), rows, cols, *((0, 0),) * (len(spatial_shape) - 2))


class PadToAspectd(Padd):
    """Dictionary :class:`PadToAspect` (the same padding for the image and its label)."""

    def __init__(self, keys: KeysCollection, slice_size, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, padder=PadToAspect(slice_size), mode="constant", allow_missing_keys=allow_missing_keys)


class WindowAndResized(MapTransform, InvertibleTransform):
    """``ScaleIntensityRanged`` (HU window to [0, 1], clipped) + :class:`PadToAspectd` + ``Resized`` (in-plane area
    resize), slice batch by slice batch, without a full-resolution float copy.

    The image (channel first, RAS, last axis axial) may keep its stored dtype (``int16`` for most CTs): each batch of
    ``chunk_slices`` slices is converted to float32 and passed through
    :func:`scripts.data.preprocessing.window_and_resize`, the function the streaming path calls, so MONAI's path
    (``run inferring --streaming False``, MONAI Label) and the streaming path compute the same network input. Only
    the model-resolution float32 output is allocated. The affine is the padding's shift and ``Resized``'s scaling
    (``scale_affine``, align_corners False), the trace keeps the padding, so ``Invertd`` brings a prediction back:
    :meth:`inverse` is a nearest resize to the padded in-plane size with the padding cut off, batch by batch, in the
    prediction's own dtype (a ``uint8`` label stays ``uint8``). Issue 19: MONAI Label runs this chain on every "Auto
    segment".

    Args:
        keys: image keys.
        hu_window: HU range mapped to [0, 1] (``hu_window`` of the config).
        slice_size: the network's in-plane size (``slice_size``).
        chunk_slices: slices converted to float at a time.
    """

    def __init__(self, keys: KeysCollection, hu_window, slice_size, chunk_slices: int = 16,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(hu_window) != 2 or float(hu_window[0]) >= float(hu_window[1]):
            raise ValueError(f"hu_window must be [low, high] with low < high, got {hu_window}")
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.slice_size = (int(slice_size[0]), int(slice_size[1]))
        self.chunk_slices = max(1, int(chunk_slices))

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, MetaTensor):
                image = MetaTensor(image)
            if image.ndim != 4 or image.shape[0] != 1:
                raise ValueError(f"{key}: expected a one-channel (1, X, Y, Z) image, got shape {tuple(image.shape)}")
            orig_size = tuple(int(s) for s in image.shape[1:])
            out_size = (*self.slice_size, orig_size[2])
            padding = aspect_padding(orig_size[:2], self.slice_size)
            voxels = image.as_tensor()[0]
            out = torch.empty((1, *out_size), dtype=torch.float32)
            for z0 in range(0, orig_size[2], self.chunk_slices):
                z1 = min(orig_size[2], z0 + self.chunk_slices)
                hu = voxels[:, :, z0:z1].permute(2, 0, 1).to(torch.float32).numpy()
                resized = window_and_resize(hu, self.hu_window, self.slice_size)[:, 0]
                out[0, :, :, z0:z1] = torch.from_numpy(resized).permute(1, 2, 0)
            meta = self.track_transform_meta(
                image, sp_size=out_size, affine=_padded_resize_affine(orig_size, padding, out_size),
                extra_info={"hu_window": list(self.hu_window), "padding": [list(p) for p in padding]},
                orig_size=orig_size,
                transform_info=self.get_transform_info())
            d[key] = MetaTensor(out).copy_meta_from(meta)  # meta: a MetaObj with the affine and the trace
        return d

    def inverse(self, data):
        """Nearest resize back to the padded in-plane size, padding cropped off (a label map stays in its dtype)."""
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            transform = self.pop_transform(pred)
            orig_size = tuple(int(s) for s in transform["orig_size"])
            (r0, r1), (c0, c1) = transform.get("extra_info", {}).get("padding", ((0, 0), (0, 0)))
            padded = (orig_size[0] + r0 + r1, orig_size[1] + c0 + c1)
            size = tuple(int(s) for s in pred.shape[1:])
            values = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
            out = torch.empty((values.shape[0], *orig_size[:2], size[2]), dtype=values.dtype)
            for z0 in range(0, size[2], self.chunk_slices):
                z1 = min(size[2], z0 + self.chunk_slices)
                block = values[:, :, :, z0:z1].permute(3, 0, 1, 2)  # (k, C, H, W)
                if block.dtype in (torch.bool,):
                    block = block.to(torch.uint8)
                block = F.interpolate(block, size=padded, mode="nearest")
                out[:, :, :, z0:z1] = block[:, :, r0:r0 + orig_size[0], c0:c0 + orig_size[1]].permute(1, 2, 3, 0)
            if isinstance(pred, MetaTensor):
                forward = _padded_resize_affine(orig_size, ((r0, r1), (c0, c1)), size)
                with self.trace_transform(False):
                    meta = self.track_transform_meta(pred, sp_size=orig_size, affine=torch.linalg.inv(forward),
                                                     transform_info=self.get_transform_info())
                out = MetaTensor(out).copy_meta_from(meta)
            d[key] = out
        return d


def _padded_resize_affine(orig_size, padding, out_size) -> torch.Tensor:
    """Voxel-to-voxel affine of :class:`WindowAndResized`: the padding's shift, then ``Resized``'s scaling from the
    padded size to ``out_size`` (align_corners False)."""
    padded = (orig_size[0] + sum(padding[0]), orig_size[1] + sum(padding[1]), *orig_size[2:])
    shift = torch.eye(len(orig_size) + 1, dtype=torch.float64)
    shift[0, -1], shift[1, -1] = -float(padding[0][0]), -float(padding[1][0])
    return shift @ torch.as_tensor(scale_affine(padded, out_size, align_corners=False), dtype=torch.float64)
