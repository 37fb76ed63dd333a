"""Write one segmentation per case, atomically, in the input's exact geometry, with a volumes JSON and a preview.

:func:`write_segmentation` writes a case from a numpy label map and the input's affine (the streaming path calls
it directly); :class:`SaveSegmentationd` is its MONAI transform for the evaluator path. MONAI's ``SaveImaged``
names files after the input file (``imaging_seg.nii.gz`` for every KiTS case) and
writes in place; a crash mid-write leaves a truncated file under the final name. This writer names
outputs after the case (``case_00012.nii.gz``, see :func:`scripts.data.layout.case_name`), reuses a NIfTI
input's header (qform and sform kept exactly, not re-derived from a resampled affine), publishes a case's
files together or not at all (:class:`scripts.outputs.transaction.CaseTransaction`; the volumes JSON, written
last, lists the others with size and SHA-256), and refuses to overwrite its own input. ``output_format`` picks NIfTI (default),
a 3D Slicer ``.seg.nrrd`` or a DICOM SEG (:mod:`scripts.outputs.formats`); ``preview`` adds ``<case>_preview.png``
(:mod:`scripts.outputs.preview`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from ..common.errors import InputError
from ..data.layout import case_name
from .formats import OUTPUT_SUFFIXES, check_output_format, write_dicom_seg, write_seg_nrrd
from .transaction import MARKER_SUFFIX, CaseTransaction, ensure_recovered, file_record

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
    """Write one case's segmentation (in ``output_format``), preview and volumes JSON together; return its path.

    All files go to temporary names first and are renamed only when every one is complete
    (:mod:`scripts.outputs.transaction`); a failure (e.g. a full disk) removes them, leaves the earlier outputs
    of the case as they were and raises one :class:`~scripts.common.errors.OutputError` line. Stale temporary
    files of a killed run in ``output_dir`` are removed (interrupted commits completed) before the first case.

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
        write_volumes: also write ``<case>_volumes.json`` with per-label volumes in mL and the size and SHA-256
            of the other files (the marker :func:`scripts.outputs.transaction.case_outputs_complete` checks).
    """
    check_output_format(output_format)
    source, output_dir = str(source), _writable_folder(output_dir)
    name = case_name(source) + postfix
    label = np.asarray(label).astype(np.uint8, copy=False)
    affine = np.asarray(affine, dtype=np.float64)
    target = output_dir / f"{name}{OUTPUT_SUFFIXES[output_format]}"
    if source and Path(source).resolve() == target.resolve():
        raise InputError(f"{target}: refusing to overwrite the input; choose another --output_dir")
    ensure_recovered(output_dir)  # temporaries of a killed run, interrupted commits
    with CaseTransaction(output_dir, name) as outputs:
        FORMAT_WRITERS[output_format](label, affine, source, outputs.temp_path(target.name), label_names)
        files = [target.name]
        if preview is not None:
            preview_name = f"{name}_preview.png"
            _write_preview(outputs.temp_path(preview_name), preview, label, affine, label_names)
            files.append(preview_name)
        if write_volumes:  # last: the completion marker, listing the files of its set
            records = {final: file_record(tmp) for tmp, final in ((t, f.name) for t, f in outputs.files)}
            _write_volumes(outputs.temp_path(f"{name}{MARKER_SUFFIX}"), name, source, target, label, affine,
                           label_names, records)
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
                   label_names: Mapping[str, int], files: Mapping[str, Mapping[str, object]]) -> None:
    volumes = {"case": name, "source": source, "segmentation": target.name,
               **label_volumes_ml(label, affine, label_names), "files": dict(files)}
    path.write_text(json.dumps(volumes, indent=2))


def _write_preview(path: Path, preview: tuple[np.ndarray, np.ndarray], label: np.ndarray, affine: np.ndarray,
                   label_names: Mapping[str, int]) -> None:
    from .preview import render_preview  # Pillow only when a preview is asked for

    image, image_affine = preview
    sheet = render_preview(image, np.asarray(image_affine, dtype=np.float64), label, affine, label_names)
    sheet.save(path, format="PNG")


def _write_nifti(label: np.ndarray, affine: np.ndarray, source: str, path: Path,
                 label_names: Mapping[str, int]) -> None:
    nib.save(_nifti_like_source(label, affine, source), str(path))


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


def _write_seg_nrrd(label: np.ndarray, affine: np.ndarray, source: str, path: Path,
                    label_names: Mapping[str, int]) -> None:
    write_seg_nrrd(label, affine, path, label_names, atomic=False)


def _write_dicom_seg(label: np.ndarray, affine: np.ndarray, source: str, path: Path,
                     label_names: Mapping[str, int]) -> None:
    check_output_format("dicom_seg", [{"image": source}])
    write_dicom_seg(label, affine, source, path, label_names, atomic=False)


FORMAT_WRITERS = {"nifti": _write_nifti, "seg_nrrd": _write_seg_nrrd, "dicom_seg": _write_dicom_seg}


def __getattr__(name: str):
    """``SaveSegmentationd`` (the config's ``scripts.outputs.writer.SaveSegmentationd``) lives in
    :mod:`scripts.outputs.save_transform`, loaded on first use: this module imports no torch or MONAI, so that
    ``kidney-seg --lean`` starts without them (issue 17)."""
    if name == "SaveSegmentationd":
        from .save_transform import SaveSegmentationd

        return SaveSegmentationd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
