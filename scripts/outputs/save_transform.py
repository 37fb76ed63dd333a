"""MONAI adapter of :func:`scripts.outputs.writer.write_segmentation` for the evaluator path (MONAI Label,
``--streaming False``): a ``MapTransform`` that saves a channel-first label map already inverted to the input grid.

Kept apart from the writer so that the writer imports no torch or MONAI (``kidney-seg --lean``, issue 17); configs
name it ``scripts.outputs.writer.SaveSegmentationd``, which the writer module resolves to this class.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .formats import check_output_format
from .writer import write_segmentation

__all__ = ["SaveSegmentationd"]


class SaveSegmentationd(MapTransform):
    """MONAI adapter of :func:`write_segmentation`: saves a channel-first label map already inverted to the input grid.

    The array must have the input's spatial shape; the file gets the input's affine exactly
    (``meta["original_affine"]``, the header as read), so it overlays the scan in any viewer.

    Args:
        keys: key of the label map (``pred``).
        output_dir: destination folder (created; an unwritable folder raises :class:`InputError`).
        label_names: ``{name: value}`` of the foreground labels, for the volumes JSON.
        image_key: key whose metadata names the case and gives the original geometry.
        output_postfix: appended to the case name (empty by default: ``case_00012.nii.gz``).
        write_volumes: also write ``<case>_volumes.json`` with per-label volumes in mL.
        output_format: ``nifti`` (``<case>.nii.gz``), ``seg_nrrd`` (``<case>.seg.nrrd``, 3D Slicer) or
            ``dicom_seg`` (``<case>.seg.dcm``, DICOM series inputs only).
        preview: also write ``<case>_preview.png`` (axial and coronal views of ``image_key`` with the labels).
    """

    def __init__(self, keys: KeysCollection, output_dir: str, label_names: Mapping[str, int],
                 image_key: str = "image", output_postfix: str = "", write_volumes: bool = True,
                 output_format: str = "nifti", preview: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_format = check_output_format(output_format)
        self.preview = preview
        self.output_dir = Path(output_dir)
        self.label_names = dict(label_names)
        self.image_key = image_key
        self.output_postfix = output_postfix
        self.write_volumes = write_volumes

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image_meta = getattr(d[self.image_key], "meta", {})
        source = str(image_meta.get("filename_or_obj", ""))
        affine = image_meta.get("original_affine", image_meta.get("affine"))
        spatial_shape = tuple(int(s) for s in np.asarray(image_meta["spatial_shape"]).ravel())
        preview = self._preview_image(d[self.image_key], affine) if self.preview else None
        for key in self.key_iterator(d):
            write_segmentation(_label_array(d[key], spatial_shape, source), affine, source, self.output_dir,
                               output_format=self.output_format, label_names=self.label_names, preview=preview,
                               postfix=self.output_postfix, write_volumes=self.write_volumes)
        return d

    @staticmethod
    def _preview_image(image: torch.Tensor, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(image, image_affine)`` for :func:`write_segmentation`: channel dropped, its own affine if it has one."""
        array = torch.as_tensor(image).detach().cpu().numpy()  # float in [0, 1]
        return (array[0] if array.ndim == 4 else array), getattr(image, "affine", affine)


def _label_array(label: torch.Tensor, spatial_shape: tuple[int, ...], source: str) -> np.ndarray:
    """The label map as a numpy array of the input's spatial shape (channel dropped)."""
    label = torch.as_tensor(label).detach().cpu().numpy()
    label = label[0] if label.ndim == len(spatial_shape) + 1 else label
    if label.shape != spatial_shape:
        raise RuntimeError(f"{source}: segmentation shape {label.shape} != input shape {spatial_shape}; "
                           "the post-processing must invert the pre-processing (Invertd)")
    return label
