"""Write one segmentation per case, atomically, in the input's exact geometry, with a volumes JSON and a preview.

:func:`write_segmentation` writes a case from a numpy label map and the input's affine (the streaming path calls
it directly); :class:`SaveSegmentationd` is its MONAI transform for the evaluator path. MONAI's ``SaveImaged``
names files after the input file (``imaging_seg.nii.gz`` for every KiTS case) and
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

__all__ = ["SaveSegmentationd", "write_segmentation", "label_volumes_ml"]

logger = logging.getLogger(__name__)


def label_volumes_ml(label: np.ndarray, affine: np.ndarray, label_names: Mapping[str, int]) -> dict[str, float]:
    """Volume in millilitres of each named label, from the voxel volume |det(affine[:3, :3])|."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    # count_nonzero per value: no int64 or transposed copy of the volume (bincount made both, +420 MB at 512^2 x 200)
    volumes = {f"{name}_ml": round(int(np.count_nonzero(label == value)) * voxel_ml, 3)
               for name, value in label_names.items()}
    volumes["all_foreground_ml"] = round(int(np.count_nonzero(label)) * voxel_ml, 3)
    return volumes


def write_segmentation(label: np.ndarray, affine: np.ndarray, source: str, output_dir: str | Path, *,
                       output_format: str, label_names: Mapping[str, int],
                       preview: tuple[np.ndarray, np.ndarray] | None = None, postfix: str = "",
                       write_volumes: bool = True) -> Path:
    """Write one case's segmentation (atomically, in ``output_format``), volumes JSON and preview; return its path.

    Args:
        label: label map (x, y, z) in the input's voxel grid and axes; saved as uint8.
        affine: the input's voxel-to-world (RAS) affine as read; the segmentation gets it exactly.
        source: the input file or DICOM series folder: names the case (:func:`scripts.data.layout.case_name`),
            lends its header to a NIfTI output, is referenced by a DICOM SEG, and is never overwritten.
        output_dir: destination folder (created; an unwritable folder raises :class:`InputError`).
        output_format: ``nifti`` (``<case>.nii.gz``), ``seg_nrrd`` (``<case>.seg.nrrd``, 3D Slicer) or
            ``dicom_seg`` (``<case>.seg.dcm``, DICOM series inputs only).
        label_names: ``{name: value}`` of the foreground labels (segment names, colours, volumes).
        preview: ``(image, image_affine)`` to also write ``<case>_preview.png``: the network's input, RAS
            (x, y, z), float in ``[0, 1]`` or uint8 0..255, and its voxel-to-world affine
            (:func:`scripts.outputs.preview.render_preview`); ``None`` writes no preview.
        postfix: appended to the case name (``case_00012<postfix>.nii.gz``).
        write_volumes: also write ``<case>_volumes.json`` with per-label volumes in mL.
    """
    check_output_format(output_format)
    source, output_dir = str(source), _writable_folder(output_dir)
    name = case_name(source) + postfix
    label = np.asarray(label).astype(np.uint8, copy=False)
    affine = np.asarray(affine, dtype=np.float64)
    target = output_dir / f"{name}{OUTPUT_SUFFIXES[output_format]}"
    if source and Path(source).resolve() == target.resolve():
        raise InputError(f"{target}: refusing to overwrite the input; choose another --output_dir")
    FORMAT_WRITERS[output_format](label, affine, source, target, label_names)
    if preview is not None:
        _write_preview(output_dir / f"{name}_preview.png", preview, label, affine, label_names)
    if write_volumes:
        _write_volumes(output_dir / f"{name}_volumes.json", name, source, target, label, affine, label_names)
    logger.info("wrote %s", target)
    return target


def _writable_folder(folder: str | Path) -> Path:
    """``folder``, created if missing; an ``OSError`` becomes an :class:`InputError` naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: output folder cannot be written ({exc.strerror})") from None
    return folder


def _write_volumes(path: Path, name: str, source: str, target: Path, label: np.ndarray, affine: np.ndarray,
                   label_names: Mapping[str, int]) -> None:
    volumes = {"case": name, "source": source, "segmentation": target.name,
               **label_volumes_ml(label, affine, label_names)}
    atomic_write_text(path, json.dumps(volumes, indent=2))


def _write_preview(target: Path, preview: tuple[np.ndarray, np.ndarray], label: np.ndarray, affine: np.ndarray,
                   label_names: Mapping[str, int]) -> None:
    from .preview import save_preview  # Pillow only when a preview is asked for

    image, image_affine = preview
    save_preview(target, image, np.asarray(image_affine, dtype=np.float64), label, affine, label_names)


def _write_nifti(label: np.ndarray, affine: np.ndarray, source: str, target: Path,
                 label_names: Mapping[str, int]) -> None:
    image = _nifti_like_source(label, affine, source)
    write_output_atomically(target, lambda tmp: nib.save(image, tmp), suffix=".nii.gz")


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


def _write_seg_nrrd(label: np.ndarray, affine: np.ndarray, source: str, target: Path,
                    label_names: Mapping[str, int]) -> None:
    write_seg_nrrd(label, affine, target, label_names)


def _write_dicom_seg(label: np.ndarray, affine: np.ndarray, source: str, target: Path,
                     label_names: Mapping[str, int]) -> None:
    check_output_format("dicom_seg", [{"image": source}])
    write_dicom_seg(label, affine, source, target, label_names)


FORMAT_WRITERS = {"nifti": _write_nifti, "seg_nrrd": _write_seg_nrrd, "dicom_seg": _write_dicom_seg}


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
