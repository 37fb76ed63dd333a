"""The bundle's own MONAI transforms: a loader whose failures name the file, a check of a loaded CT, and the
HU window + in-plane resize computed slice batch by slice batch.

The first two sit at the start of every preprocessing chain (train.json, inference.json) and of MONAI Label's;
:class:`WindowAndResized` is inference.json's (and so MONAI Label's) window and resize (issue 19).
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
from monai.transforms import InvertibleTransform, LoadImage, LoadImaged, MapTransform
from monai.transforms.utils import scale_affine

from ..common.errors import InputError
from .checks import MIN_EXPECTED_HU, READ_ERRORS, check_dicom_modality, warn_infinite_voxels
from .preprocessing import window_and_resize

__all__ = ["LoadImageCheckedd", "ValidateCTd", "WindowAndResized"]

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


class WindowAndResized(MapTransform, InvertibleTransform):
    """``ScaleIntensityRanged`` (HU window to [0, 1], clipped) + ``Resized`` (in-plane area resize), slice batch
    by slice batch, without a full-resolution float copy.

    The image (channel first, RAS, last axis axial) may keep its stored dtype (``int16`` for most CTs): each batch of
    ``chunk_slices`` slices is converted to float32 and passed through
    :func:`scripts.data.preprocessing.window_and_resize`, the function the streaming path calls, so MONAI's path
    (``run inferring --streaming False``, MONAI Label) and the streaming path compute the same network input. Only
    the model-resolution float32 output is allocated. The affine and the trace are those ``Resized`` records
    (``scale_affine``, align_corners False), so ``Invertd`` brings a prediction back: :meth:`inverse` is a nearest
    resize to the original in-plane size, batch by batch, in the prediction's own dtype (a ``uint8`` label stays
    ``uint8``). Issue 19: MONAI Label runs this chain on every "Auto segment".

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
            voxels = image.as_tensor()[0]
            out = torch.empty((1, *out_size), dtype=torch.float32)
            for z0 in range(0, orig_size[2], self.chunk_slices):
                z1 = min(orig_size[2], z0 + self.chunk_slices)
                hu = voxels[:, :, z0:z1].permute(2, 0, 1).to(torch.float32).numpy()
                resized = window_and_resize(hu, self.hu_window, self.slice_size)[:, 0]
                out[0, :, :, z0:z1] = torch.from_numpy(resized).permute(1, 2, 0)
            meta = self.track_transform_meta(
                image, sp_size=out_size, affine=scale_affine(orig_size, out_size, align_corners=False),
                extra_info={"hu_window": list(self.hu_window)}, orig_size=orig_size,
                transform_info=self.get_transform_info())
            d[key] = MetaTensor(out).copy_meta_from(meta)  # meta: a MetaObj with the affine and the trace
        return d

    def inverse(self, data):
        """Nearest resize back to the original in-plane size (a label map stays in its dtype)."""
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            transform = self.pop_transform(pred)
            orig_size = tuple(int(s) for s in transform["orig_size"])
            size = tuple(int(s) for s in pred.shape[1:])
            values = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
            out = torch.empty((values.shape[0], *orig_size[:2], size[2]), dtype=values.dtype)
            for z0 in range(0, size[2], self.chunk_slices):
                z1 = min(size[2], z0 + self.chunk_slices)
                block = values[:, :, :, z0:z1].permute(3, 0, 1, 2)  # (k, C, H, W)
                if block.dtype in (torch.bool,):
                    block = block.to(torch.uint8)
                out[:, :, :, z0:z1] = F.interpolate(block, size=orig_size[:2], mode="nearest").permute(1, 2, 3, 0)
            if isinstance(pred, MetaTensor):
                with self.trace_transform(False):
                    meta = self.track_transform_meta(pred, sp_size=orig_size,
                                                     affine=scale_affine(size, orig_size, align_corners=False),
                                                     transform_info=self.get_transform_info())
                out = MetaTensor(out).copy_meta_from(meta)
            d[key] = out
        return d
