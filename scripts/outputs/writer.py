"""Write one segmentation per case, atomically, in the input's exact geometry, with a volumes JSON and a preview.

MONAI's ``SaveImaged`` names files after the input file (``imaging_seg.nii.gz`` for every KiTS case) and
writes in place; a crash mid-write leaves a truncated file under the final name. This writer names
outputs after the case (``case_00012.nii.gz``, see :func:`scripts.data.layout.case_name`), reuses a NIfTI
input's header (qform and sform kept exactly, not re-derived from a resampled affine), writes to a
temporary name and renames it, and refuses to overwrite its own input. ``output_format`` picks NIfTI (default),
a 3D Slicer ``.seg.nrrd`` or a DICOM SEG (:mod:`scripts.outputs.formats`); ``preview`` adds ``<case>_preview.png``
(:mod:`scripts.outputs.preview`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..common.atomic import atomic_write_text
from ..common.errors import InputError
from ..data.layout import case_name
from .formats import (
    OUTPUT_SUFFIXES,
    check_output_format,
    write_dicom_seg,
    write_output_atomically,
    write_seg_nrrd,
)

__all__ = ["SaveSegmentationd", "label_volumes_ml"]

logger = logging.getLogger(__name__)


def label_volumes_ml(label: np.ndarray, affine: np.ndarray, label_names: Mapping[str, int]) -> dict[str, float]:
    """Volume in millilitres of each named label, from the voxel volume |det(affine[:3, :3])|."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    # count_nonzero per value: no int64 or transposed copy of the volume (bincount made both, +420 MB at 512^2 x 200)
    volumes = {f"{name}_ml": round(int(np.count_nonzero(label == value)) * voxel_ml, 3)
               for name, value in label_names.items()}
    volumes["all_foreground_ml"] = round(int(np.count_nonzero(label)) * voxel_ml, 3)
    return volumes


class SaveSegmentationd(MapTransform):
    """Save a label map (channel-first, already inverted to the input grid) as ``<case>.nii.gz`` (uint8).

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
        name = case_name(source) + self.output_postfix
        affine = np.asarray(image_meta.get("original_affine", image_meta.get("affine")), dtype=np.float64)
        spatial_shape = tuple(int(s) for s in np.asarray(image_meta["spatial_shape"]).ravel())
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.output_dir}: output folder cannot be written ({exc.strerror})") from None
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key]).detach().cpu().numpy()
            label = label[0] if label.ndim == len(spatial_shape) + 1 else label
            if label.shape != spatial_shape:
                raise RuntimeError(f"{source}: segmentation shape {label.shape} != input shape {spatial_shape}; "
                                   "the post-processing must invert the pre-processing (Invertd)")
            label = label.astype(np.uint8, copy=False)
            target = self.output_dir / f"{name}{OUTPUT_SUFFIXES[self.output_format]}"
            if source and Path(source).resolve() == target.resolve():
                raise InputError(f"{target}: refusing to overwrite the input; choose another --output_dir")
            if self.output_format == "seg_nrrd":
                write_seg_nrrd(label, affine, target, self.label_names)
            elif self.output_format == "dicom_seg":
                check_output_format(self.output_format, [{"image": source}])
                write_dicom_seg(label, affine, source, target, self.label_names)
            else:
                self._write_nifti(label, affine, target, source)
            if self.preview:
                self._write_preview(d, label, affine, self.output_dir / f"{name}_preview.png")
            if self.write_volumes:
                volumes = {"case": name, "source": source, "segmentation": target.name,
                           **label_volumes_ml(label, affine, self.label_names)}
                atomic_write_text(self.output_dir / f"{name}_volumes.json", json.dumps(volumes, indent=2))
            logger.info("wrote %s", target)
        return d

    def _write_preview(self, d: Mapping, label: np.ndarray, affine: np.ndarray, target: Path) -> None:
        from .preview import save_preview  # Pillow only when a preview is asked for

        image = d[self.image_key]
        array = torch.as_tensor(image).detach().cpu().numpy()  # float in [0, 1], or uint8 0..255 (streaming path)
        array = array[0] if array.ndim == 4 else array
        image_affine = np.asarray(getattr(image, "affine", affine), dtype=np.float64)
        save_preview(target, array, image_affine, label, affine, self.label_names)

    def _write_nifti(self, label: np.ndarray, affine: np.ndarray, target: Path, source: str) -> None:
        image = self._nifti_like_source(label, affine, source)
        write_output_atomically(target, lambda tmp: nib.save(image, tmp), suffix=".nii.gz")

    @staticmethod
    def _nifti_like_source(label: np.ndarray, affine: np.ndarray, source: str) -> nib.Nifti1Image:
        """A NIfTI input's header is reused (same qform and sform, codes included); others get ``affine``."""
        if source.lower().endswith((".nii", ".nii.gz")) and Path(source).is_file():
            header = nib.load(source).header.copy()
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1.0, 0.0)
            header["cal_min"], header["cal_max"] = 0, 0  # a CT display window would hide labels 1..3 in viewers
            image = nib.Nifti1Image(label, None, header=header)
            if np.allclose(image.header.get_best_affine(), affine, atol=1e-4):
                return image
        image = nib.Nifti1Image(label, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        return image
