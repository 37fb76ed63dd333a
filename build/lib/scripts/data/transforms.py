"""The bundle's own MONAI transforms: a loader whose failures name the file, and a check of a loaded CT.

Both sit at the start of every preprocessing chain (train.json, inference.json) and of MONAI Label's.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, LoadImaged, MapTransform

from ..common.errors import InputError
from .checks import MIN_EXPECTED_HU, READ_ERRORS

__all__ = ["LoadImageCheckedd", "ValidateCTd"]

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

    The header checks (:func:`scripts.data.checks.check_image_file`) cannot see damage inside the compressed voxel data, or in
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
            if low > self.min_expected_hu:
                message = (f"{name}: intensities {low:.0f}..{high:.0f} hold no air (< {self.min_expected_hu:.0f}); "
                           "this does not look like CT in Hounsfield units (MR or normalised image?), "
                           "results will be unreliable")
                warnings.warn(message, stacklevel=2)
                logger.warning(message)
        return d
