"""Segmentation files a clinician's tools open directly: 3D Slicer ``.seg.nrrd`` and DICOM Segmentation.

- ``seg_nrrd``: a Slicer segmentation file, one label-map layer with a named, coloured segment per label
  (header keys ``Segment{i}_Name``, ``_Color``, ``_LabelValue``, ``_Layer``, ``_Extent``, ``_ID``, as Slicer's
  ``vtkMRMLSegmentationStorageNode`` writes them). NRRD ``space`` is left-posterior-superior, so the RAS affine
  of the bundle is flipped on its first two rows before it becomes ``space directions``/``space origin``.
- ``dicom_seg``: a DICOM Segmentation (highdicom) of a DICOM series input. It references the source series and
  images, holds one frame per source slice with the slice's own geometry, and describes each segment with
  SNOMED CT codes taken from pydicom's code dictionary (kidney: Anatomical Structure / Kidney 64033007;
  tumour: Morphologically Abnormal Structure / Neoplasm 108369006; cyst: ... / Cyst 367643001).

Both are written to a temporary file in the destination folder and renamed (:mod:`scripts.common.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.atomic import atomic_write
from ..common.errors import InputError

__all__ = ["OUTPUT_FORMATS", "OUTPUT_SUFFIXES", "SegmentStyle", "segment_style", "check_output_format",
           "write_seg_nrrd", "write_dicom_seg", "read_dicom_series", "ras_to_lps"]

OUTPUT_FORMATS = ("nifti", "seg_nrrd", "dicom_seg")
OUTPUT_SUFFIXES = {"nifti": ".nii.gz", "seg_nrrd": ".seg.nrrd", "dicom_seg": ".seg.dcm"}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SegmentStyle:
    """Display colour (RGB 0..255) and SNOMED CT (category, type) attribute names in ``pydicom.sr.codedict``."""

    color: tuple[int, int, int]
    category: str
    type: str


# Colours: 3D Slicer's generic anatomy colours for kidney and tumour; a yellow for cyst.
SEGMENT_STYLES = {
    "kidney": SegmentStyle((185, 102, 83), "AnatomicalStructure", "Kidney"),
    "tumor": SegmentStyle((144, 238, 144), "MorphologicallyAbnormalStructure", "Neoplasm"),
    "cyst": SegmentStyle((230, 210, 60), "MorphologicallyAbnormalStructure", "Cyst"),
}
_FALLBACK_STYLE = SegmentStyle((128, 174, 128), "MorphologicallyAbnormalStructure", "Mass")


def segment_style(name: str) -> SegmentStyle:
    """Style of a label name (``tumour`` and ``tumor`` are the same); unknown names get a neutral style."""
    return SEGMENT_STYLES.get(name.lower().replace("tumour", "tumor"), _FALLBACK_STYLE)


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """The same voxel-to-world map with world coordinates in LPS (DICOM, ITK, NRRD) instead of RAS."""
    return _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)


def check_output_format(output_format: str, datalist: Sequence[Mapping[str, str]] = (),
                        image_key: str = "image") -> str:
    """Stop before inference when the format is unknown, or ``dicom_seg`` is asked of a non-DICOM input."""
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"--output_format {output_format!r}: unknown; choose one of {', '.join(OUTPUT_FORMATS)}")
    if output_format == "dicom_seg":
        for item in datalist:
            if not Path(item[image_key]).is_dir():
                raise InputError(f"{item[image_key]}: --output_format dicom_seg needs a DICOM series folder as "
                                 "input, this is a single file; use --output_format nifti or seg_nrrd")
    return output_format


def write_output_atomically(target: Path, write, suffix: str = ".tmp") -> None:
    """``scripts.common.atomic.atomic_write`` for a segmentation output: an ``OSError`` becomes an ``InputError`` naming it."""
    try:
        atomic_write(target, write, suffix)
    except OSError as exc:
        raise InputError(f"{target}: cannot be written ({exc.strerror or exc})") from None


def _extent(mask: np.ndarray) -> str:
    """Slicer's ``Segment{i}_Extent``: inclusive voxel bounding box ``i0 i1 j0 j1 k0 k1`` (``0 -1 ...`` if empty)."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds += [int(hit[0]), int(hit[-1])]
    return " ".join(map(str, bounds))


def write_seg_nrrd(label: np.ndarray, affine_ras: np.ndarray, target: str | os.PathLike,
                   label_names: Mapping[str, int]) -> Path:
    """Write a 3D label map as a Slicer segmentation (``.seg.nrrd``), one segment per entry of ``label_names``."""
    import nrrd

    target = Path(target)
    lps = ras_to_lps(affine_ras)
    header: dict[str, object] = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,  # row i: world step of voxel axis i
        "space origin": lps[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, (name, value) in enumerate(sorted(label_names.items(), key=lambda item: item[1])):
        red, green, blue = segment_style(name).color
        header.update({
            f"Segment{index}_ID": f"Segment_{value}",
            f"Segment{index}_Name": name,
            f"Segment{index}_NameAutoGenerated": "0",
            f"Segment{index}_Color": f"{red / 255:.6g} {green / 255:.6g} {blue / 255:.6g}",
            f"Segment{index}_ColorAutoGenerated": "0",
            f"Segment{index}_LabelValue": str(value),
            f"Segment{index}_Layer": "0",
            f"Segment{index}_Extent": _extent(label == value),
        })
    data = np.ascontiguousarray(label.astype(np.uint8))
    write_output_atomically(target, lambda tmp: nrrd.write(tmp, data, header, index_order="F"))
    return target


def read_dicom_series(folder: str | os.PathLike):
    """The DICOM images of ``folder`` (one series, non-DICOM files ignored), sorted along the slice normal."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    datasets = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)  # a SEG needs the source's header only
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds and "Rows" in ds:
            # anonymisers sometimes blank the dataset's copy of the SOP UIDs but keep the file meta's
            for attribute in ("SOPClassUID", "SOPInstanceUID"):
                if not ds.get(attribute) and ds.file_meta.get(f"MediaStorage{attribute}"):
                    setattr(ds, attribute, ds.file_meta[f"MediaStorage{attribute}"].value)
            datasets.append(ds)
    if not datasets:
        raise InputError(f"{folder}: no DICOM images found")
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not all(ds.get(attribute) for ds in datasets):
            raise InputError(f"{folder}: DICOM images lack {attribute} (anonymised?); a DICOM SEG must reference "
                             "its source series by UID; use --output_format nifti or seg_nrrd")
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) > 1:
        raise InputError(f"{folder}: holds {len(series)} DICOM series; put one series per folder for dicom_seg")
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))


def _frame_for_slice(datasets, affine_ras: np.ndarray, num_slices: int, folder: Path) -> list[int]:
    """For each source image, the index along the label's third axis whose plane passes through it."""
    lps = ras_to_lps(affine_ras)
    slice_positions = lps[:3, :3] @ np.stack([np.zeros(num_slices), np.zeros(num_slices), np.arange(num_slices)])
    slice_positions = slice_positions.T + lps[:3, 3]
    step = float(np.linalg.norm(lps[:3, 2])) or 1.0
    indices = []
    for ds in datasets:
        distance = np.linalg.norm(slice_positions - np.asarray(ds.ImagePositionPatient, float), axis=1)
        k = int(np.argmin(distance))
        if distance[k] > 0.1 * step:
            raise InputError(f"{folder}: DICOM image {ds.SOPInstanceUID} does not lie on the segmentation grid "
                             f"(nearest slice {distance[k]:.2f} mm away)")
        indices.append(k)
    return indices


def write_dicom_seg(label: np.ndarray, affine_ras: np.ndarray, source_folder: str | os.PathLike,
                    target: str | os.PathLike, label_names: Mapping[str, int],
                    algorithm_name: str = "kidney_ct_segmentation", algorithm_version: str = "0") -> Path:
    """Write a label map ``(x, y, z)`` on a DICOM series' grid as a DICOM Segmentation referencing that series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    target, folder = Path(target), Path(source_folder)
    datasets = read_dicom_series(folder)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    if label.shape[:2] != (columns, rows):
        raise InputError(f"{folder}: segmentation in-plane shape {label.shape[:2]} != DICOM columns x rows "
                         f"{(columns, rows)}")
    slices = _frame_for_slice(datasets, affine_ras, label.shape[2], folder)
    # label[i, j, k]: i runs along a row (DICOM column index), j down the columns (row index)
    frames = np.stack([label[:, :, k].T for k in slices]).astype(np.uint8)
    values = sorted(label_names.values())
    if values != list(range(1, len(values) + 1)):
        raise ValueError(f"label values must be 1..N for DICOM segment numbers, got {values}")
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, version=algorithm_version,
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = []
    for name, value in sorted(label_names.items(), key=lambda item: item[1]):
        style = segment_style(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=name,
            segmented_property_category=getattr(codes.SCT, style.category),
            segmented_property_type=getattr(codes.SCT, style.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"{name} (automatic)",
            anatomic_regions=None if name == "kidney" else [codes.SCT.Kidney],
            display_color=hd.color.CIELabColor.from_rgb(*style.color),
        ))
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MONAI bundle",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="none",
        content_description="Automatic kidney/tumour segmentation; research use only",
        omit_empty_frames=False,
    )
    write_output_atomically(target, lambda tmp: seg.save_as(tmp))
    return target
