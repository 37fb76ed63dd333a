"""Small synthetic CT DICOM series for output-format tests (written with pydicom; synthetic, not patient data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROWS, COLUMNS, SLICES = 40, 32, 6  # rows != columns, so a transposed frame cannot pass
PIXEL_SPACING = (0.8, 0.7)  # (between rows, between columns) in mm
SLICE_STEP = 2.5
ORIGIN = np.array([-12.0, -20.0, 100.0])  # LPS, first slice, first pixel
BOX = {"rows": (10, 25), "columns": (4, 12), "slices": (1, 4)}  # bright block, half-open ranges


def write_synthetic_series(folder: Path, reverse_files: bool = True) -> list[pydicom.Dataset]:
    """A 6-slice CT series, -1000 HU air with a 200 HU block at ``BOX``; files named in reverse slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Synthetic^Phantom", "SYNTH001"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20260101", "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName, ds.Manufacturer = "", "1", "", "synthetic"
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + [0, 0, k * SLICE_STEP]]
        ds.PixelSpacing, ds.SliceThickness = list(PIXEL_SPACING), SLICE_STEP
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        hu = np.full((ROWS, COLUMNS), -1000, dtype=np.int16)
        if BOX["slices"][0] <= k < BOX["slices"][1]:
            hu[slice(*BOX["rows"]), slice(*BOX["columns"])] = 200
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        name = f"IM{(SLICES - k if reverse_files else k + 1):04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        datasets.append(ds)
    return datasets


def copy_with_uids(source: Path, target: Path) -> Path:
    """Copy a DICOM series, filling Study/Series/SOP Instance UIDs that an anonymiser blanked (deterministic)."""
    target.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=[str(source), "study"])
    series = generate_uid(entropy_srcs=[str(source), "series"])
    for path in sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("LICENSE")):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            shutil.copy(path, target / path.name)
            continue
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or study
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or series
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(target / path.name)
    return target
