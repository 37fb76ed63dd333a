"""Output formats (NIfTI, 3D Slicer .seg.nrrd, DICOM SEG) and the per-case preview PNG, each read back and checked
against the input's geometry. Synthetic DICOM series and phantoms, plus the real CT series when it is present."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import LoadImage
from PIL import Image
from pydicom.sr.codedict import codes

from conftest import BUNDLE_ROOT, TINY_OVERRIDES, shared_path
from dicom_fixtures import BOX, COLUMNS, ROWS, SLICES, copy_with_uids, write_synthetic_series
from scripts.common.errors import InputError
from scripts.outputs.formats import check_output_format, ras_to_lps, segment_style, write_dicom_seg
from scripts.outputs.preview import TILE, render_preview
from scripts.outputs.writer import SaveSegmentationd, write_segmentation

LABELS = {"kidney": 1, "tumor": 2}
INFERENCE = str(BUNDLE_ROOT / "configs" / "inference.json")


@pytest.fixture(scope="module")
def synthetic_series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "series_001"
    write_synthetic_series(folder)
    return folder


def _loaded(source) -> torch.Tensor:
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(source))
    image.meta["spatial_shape"] = np.asarray(image.shape[1:])
    return image


def _label_from_block(image: torch.Tensor) -> np.ndarray:
    """kidney where the synthetic block is bright, tumour in its first bright slice (x, y, z as MONAI reads it)."""
    bright = np.asarray(image[0]) > 0
    label = bright.astype(np.uint8)
    first = np.flatnonzero(bright.any(axis=(0, 1)))[0]
    label[..., first][bright[..., first]] = 2
    return label


def _write(image, label, out: Path, output_format: str, preview: bool = False) -> dict:
    writer = SaveSegmentationd("pred", str(out), LABELS, output_format=output_format, preview=preview)
    return writer({"image": image, "pred": torch.as_tensor(label[None])})


def _dicom_voxel_world(datasets, rows, columns):
    """LPS position of pixel (row, column) of each dataset, from the DICOM header alone."""
    positions = []
    for ds, r, c in zip(datasets, rows, columns):
        iop = np.asarray(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        positions.append(np.asarray(ds.ImagePositionPatient, float) + iop[:3] * dc * c + iop[3:] * dr * r)
    return np.asarray(positions)


def test_seg_nrrd_synthetic_dicom_geometry_and_segments(synthetic_series, tmp_path):
    image = _loaded(synthetic_series)
    label = _label_from_block(image)
    _write(image, label, tmp_path, "seg_nrrd")
    data, header = nrrd.read(str(tmp_path / "series_001.seg.nrrd"))
    assert data.dtype == np.uint8 and np.array_equal(data, label)
    assert header["space"] == "left-posterior-superior" and list(header["kinds"]) == ["domain"] * 3
    segments = {header[f"Segment{i}_Name"]: i for i in range(2)}
    assert set(segments) == {"kidney", "tumor"}
    for name, i in segments.items():
        assert int(header[f"Segment{i}_LabelValue"]) == LABELS[name] and header[f"Segment{i}_Layer"] == "0"
        rgb = [round(float(v) * 255) for v in header[f"Segment{i}_Color"].split()]
        assert tuple(rgb) == segment_style(name).color
        extent = [int(v) for v in header[f"Segment{i}_Extent"].split()]
        hits = np.argwhere(data == LABELS[name])
        assert extent == [int(v) for pair in zip(hits.min(0), hits.max(0)) for v in pair]
    # world (LPS) position of every block voxel from the NRRD header == from the DICOM headers
    directions, origin = np.asarray(header["space directions"]), np.asarray(header["space origin"])
    voxels = np.argwhere(data > 0)
    nrrd_world = voxels @ directions + origin
    datasets = sorted((pydicom.dcmread(p) for p in synthetic_series.iterdir()),
                      key=lambda ds: float(ds.ImagePositionPatient[2]))
    dicom_world = _dicom_voxel_world([datasets[k] for k in voxels[:, 2]], voxels[:, 1], voxels[:, 0])
    assert np.allclose(nrrd_world, dicom_world, atol=1e-4)
    r0, c0, k0 = BOX["rows"][0], BOX["columns"][0], BOX["slices"][0]
    assert np.allclose(nrrd_world.min(0), _dicom_voxel_world([datasets[k0]], [r0], [c0])[0], atol=1e-4)


def test_dicom_seg_synthetic_series_references_frames_and_codes(synthetic_series, tmp_path):
    image = _loaded(synthetic_series)
    label = _label_from_block(image)
    _write(image, label, tmp_path, "dicom_seg", preview=True)
    seg = hd.seg.segread(str(tmp_path / "series_001.seg.dcm"))
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in synthetic_series.iterdir())}
    first = next(iter(sources.values()))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)
    assert int(seg.NumberOfFrames) == SLICES * len(LABELS) and (int(seg.Rows), int(seg.Columns)) == (ROWS, COLUMNS)
    described = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert set(described) == set(LABELS)
    kidney, tumour = described["kidney"], described["tumor"]
    assert kidney.SegmentNumber == 1 and tumour.SegmentNumber == 2
    assert kidney.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.AnatomicalStructure.value
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Kidney.value == "64033007"
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.MorphologicallyAbnormalStructure.value
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Neoplasm.value == "108369006"
    assert tumour.SegmentAlgorithmType == "AUTOMATIC"
    # each frame sits on its source slice, and its pixels are the block of that slice (rows x columns, not transposed)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position], [float(v) for v in sources[uid].ImagePositionPatient])
    for uid, ds in sources.items():
        pixels = seg.get_pixels_by_source_instance([uid], combine_segments=True)[0]
        k = int(ds.InstanceNumber) - 1
        expected = np.zeros((ROWS, COLUMNS), np.uint8)
        if BOX["slices"][0] <= k < BOX["slices"][1]:
            expected[slice(*BOX["rows"]), slice(*BOX["columns"])] = 2 if k == BOX["slices"][0] else 1
        assert np.array_equal(pixels, expected), k
    assert (tmp_path / "series_001_preview.png").is_file()
    volumes = json.loads((tmp_path / "series_001_volumes.json").read_text())
    assert volumes["segmentation"] == "series_001.seg.dcm"


def test_dicom_seg_refuses_non_dicom_input(tmp_path):
    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), nifti)
    with pytest.raises(InputError, match=r"scan\.nii\.gz: --output_format dicom_seg needs a DICOM series"):
        check_output_format("dicom_seg", [{"image": str(nifti)}])
    with pytest.raises(InputError, match="unknown"):
        check_output_format("png")


def test_dicom_seg_refuses_series_without_uids(tmp_path):
    """The shared example series is anonymised with blank Study/Series UIDs: say so instead of a bad SEG."""
    source = shared_path("totalseg_example", "example_ct_dicom")
    image = _loaded(source)
    label = np.zeros(image.shape[1:], np.uint8)
    with pytest.raises(InputError, match="lack StudyInstanceUID"):
        write_dicom_seg(label, image.meta["original_affine"], source, tmp_path / "x.seg.dcm", LABELS)
    assert not list(tmp_path.iterdir())


def _run_inference(input_path, out, weights, **options) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", INFERENCE, "--bundle_root",
            str(BUNDLE_ROOT), "--input_path", str(input_path), "--output_dir", str(out), "--model_path", str(weights),
            "--num_workers", "0"]
    for key, value in {**TINY_OVERRIDES, **options}.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value) if isinstance(value, bool)
                 else json.dumps(value)]
    return subprocess.run(args, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600)


def test_cli_dicom_seg_on_nifti_is_one_line_error(phantom_dir, tiny_weights, tmp_path):
    image = phantom_dir / "case_00000" / "imaging.nii.gz"
    result = _run_inference(image, tmp_path / "out", tiny_weights, output_format="dicom_seg")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {image}: --output_format dicom_seg needs a DICOM series folder as input, this is a single file; "
        "use --output_format nifti or seg_nrrd")
    assert "Traceback" not in result.stderr


def test_cli_seg_nrrd_matches_nifti_input_geometry(phantom_dir, tiny_weights, tmp_path):
    """Whole workflow on a NIfTI phantom: .seg.nrrd geometry (LPS) equals the input's (RAS) affine."""
    image = phantom_dir / "case_00001" / "imaging.nii.gz"
    result = _run_inference(image, tmp_path, tiny_weights, output_format="seg_nrrd", preview=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data, header = nrrd.read(str(tmp_path / "case_00001.seg.nrrd"))
    source = nib.load(image)
    assert data.shape == source.shape and set(np.unique(data)) <= {0, 1, 2}
    lps = ras_to_lps(source.affine)
    assert np.allclose(np.asarray(header["space directions"]), lps[:3, :3].T, atol=1e-5)
    assert np.allclose(np.asarray(header["space origin"]), lps[:3, 3], atol=1e-5)
    assert {header["Segment0_Name"], header["Segment1_Name"]} == {"kidney", "tumor"}
    # read again with slicerio, the 3D Slicer team's parser of this format
    import slicerio

    segmentation = slicerio.read_segmentation(str(tmp_path / "case_00001.seg.nrrd"))
    assert np.allclose(segmentation["ijkToLPS"], lps, atol=1e-5)
    assert np.array_equal(segmentation["voxels"], data)
    assert [(s["name"], s["labelValue"], s["layer"]) for s in segmentation["segments"]] == [
        ("kidney", 1, 0), ("tumor", 2, 0)]
    assert not (tmp_path / "case_00001_preview.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_00001.seg.nrrd", "case_00001_volumes.json"]


def test_cli_dicom_seg_on_real_ct_series(tiny_weights, tmp_path):
    """The real 512x512 CT series (UIDs blanked by its anonymiser, refilled in a copy): one frame per slice
    and segment, each on its source slice; the preview is written beside it."""
    source = copy_with_uids(shared_path("totalseg_example", "example_ct_dicom"), tmp_path / "ct_series")
    result = _run_inference(source, tmp_path / "out", tiny_weights, output_format="dicom_seg")
    assert result.returncode == 0, result.stderr[-3000:]
    seg = hd.seg.segread(str(tmp_path / "out" / "ct_series.seg.dcm"))
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                                                 for p in source.iterdir() if p.name.startswith("CT"))}
    assert len(sources) == 20 and int(seg.NumberOfFrames) == 20 * 2 and (seg.Rows, seg.Columns) == (512, 512)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in sources[uid].ImagePositionPatient])
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert np.allclose([float(v) for v in measures.PixelSpacing],
                       [float(v) for v in next(iter(sources.values())).PixelSpacing])
    with Image.open(tmp_path / "out" / "ct_series_preview.png") as png:
        assert png.size == (4 * TILE, TILE)


def _phantom_volume():
    """RAS image in [0, 1] (x, y, z) with a kidney block and a tumour inside it, on a 2x-coarser label grid."""
    image = np.full((64, 48, 20), 0.5)
    image_affine = np.diag([1.5, 1.5, 4.0, 1.0])
    label = np.zeros((32, 24, 20), np.uint8)  # label grid: 3 mm in-plane, same slices
    label[4:12, 6:18, 5:15] = 1  # on the image: x 8..23 of 64, low x = the patient's left (RAS)
    label[6:9, 8:12, 8:11] = 2
    label_affine = np.diag([3.0, 3.0, 4.0, 1.0])
    return image, image_affine, label, label_affine


def _blend(color, gray=0.5, alpha=0.45):
    return (1 - alpha) * gray * 255 + alpha * np.asarray(color, float)


def test_preview_size_and_overlay_colours():
    image, image_affine, label, label_affine = _phantom_volume()
    sheet = np.asarray(render_preview(image, image_affine, label, label_affine, LABELS))
    assert sheet.shape == (TILE, 4 * TILE, 3)
    for name in LABELS:
        expected = _blend(segment_style(name).color)
        near = np.all(np.abs(sheet.astype(float) - expected) <= 2, axis=2)
        assert near[:, : 3 * TILE].any(), f"no {name} colour in the axial tiles"
        assert near[:, 3 * TILE :].any() or name == "tumor", f"no {name} colour in the coronal tile"
    # colours only where the label is: image x 8..23 of 64 (patient's left) is drawn at columns 160..223 of
    # each axial tile (radiological convention: the patient's left on the image's right)
    coloured = np.abs(sheet[..., 0].astype(int) - sheet[..., 2].astype(int)) > 5
    for tile in range(3):
        columns = np.flatnonzero(coloured[:, tile * TILE : (tile + 1) * TILE].any(axis=0))
        assert columns.size and 156 <= columns.min() and columns.max() <= 228, (tile, columns.min(), columns.max())
    empty = np.asarray(render_preview(image, image_affine, np.zeros_like(label), label_affine, LABELS))
    assert not (np.abs(empty[..., 0].astype(int) - empty[..., 2].astype(int)) > 5).any()


def test_preview_written_atomically_by_writer(tmp_path):
    image, image_affine, label, label_affine = _phantom_volume()
    from monai.data import MetaTensor

    meta = {"filename_or_obj": str(tmp_path / "phantom.nii.gz"), "original_affine": label_affine,
            "spatial_shape": np.asarray(label.shape)}
    data = {"image": MetaTensor(torch.as_tensor(image[None], dtype=torch.float32), affine=torch.as_tensor(image_affine),
                                meta=meta), "pred": torch.as_tensor(label[None])}
    SaveSegmentationd("pred", str(tmp_path / "out"), LABELS, preview=True)(data)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "phantom.nii.gz", "phantom_preview.png", "phantom_volumes.json"]
    with Image.open(tmp_path / "out" / "phantom_preview.png") as png:
        assert png.size == (4 * TILE, TILE) and png.mode == "RGB"


def test_cli_dicom_seg_on_synthetic_series(synthetic_series, tiny_weights, tmp_path):
    """The whole workflow on the synthetic series (always runs): SEG, volumes and preview beside each other."""
    result = _run_inference(synthetic_series, tmp_path, tiny_weights, output_format="dicom_seg")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "series_001.seg.dcm", "series_001_preview.png", "series_001_volumes.json"]
    seg = hd.seg.segread(str(tmp_path / "series_001.seg.dcm"))
    first = pydicom.dcmread(next(synthetic_series.iterdir()))
    assert int(seg.NumberOfFrames) == SLICES * len(LABELS) and (int(seg.Rows), int(seg.Columns)) == (ROWS, COLUMNS)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    volumes = json.loads((tmp_path / "series_001_volumes.json").read_text())
    pixels = seg.get_volume(combine_segments=True).array  # the SEG holds the labels the volumes JSON counted
    voxel_ml = 0.8 * 0.7 * 2.5 / 1000
    for name, value in LABELS.items():
        assert np.isclose(np.count_nonzero(pixels == value) * voxel_ml, volumes[f"{name}_ml"], atol=1e-3), name


def test_cyst_segment_in_both_formats(synthetic_series, tmp_path):
    """``keep_cyst``: a third segment, coded Cyst (SCT 367643001) in the SEG and named in the .seg.nrrd."""
    labels = {"kidney": 1, "tumor": 2, "cyst": 3}
    image = _loaded(synthetic_series)
    label = _label_from_block(image)
    label[label.shape[0] - 3 :, :3, 0] = 3  # a corner of the first slice, outside the block
    for output_format in ("seg_nrrd", "dicom_seg"):
        writer = SaveSegmentationd("pred", str(tmp_path), labels, output_format=output_format)
        writer({"image": image, "pred": torch.as_tensor(label[None])})
    _, header = nrrd.read(str(tmp_path / "series_001.seg.nrrd"))
    assert (header["Segment2_Name"], header["Segment2_LabelValue"]) == ("cyst", "3")
    seg = hd.seg.segread(str(tmp_path / "series_001.seg.dcm"))
    cyst = next(s for s in seg.SegmentSequence if s.SegmentLabel == "cyst")
    assert cyst.SegmentNumber == 3 and cyst.SegmentedPropertyTypeCodeSequence[0].CodeValue == "367643001"
    assert int(seg.NumberOfFrames) == SLICES * 3
    volumes = json.loads((tmp_path / "series_001_volumes.json").read_text())
    assert np.isclose(volumes["cyst_ml"], 3 * 3 * 0.8 * 0.7 * 2.5 / 1000, atol=1e-3)


def _tiny_nifti_case(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 12x10x6 int16 NIfTI scan (oblique-free, 0.8 x 0.7 x 2.5 mm) and a label map with both labels."""
    affine = np.array([[-0.8, 0, 0, 10.0], [0, 0.7, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    folder.mkdir(parents=True)
    source = folder / "case_00007.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 6), np.int16), affine), source)
    label = np.zeros((12, 10, 6), np.uint8)
    label[2:8, 3:7, 1:5] = 1
    label[3:5, 4:6, 2:3] = 2
    return source, label, affine


@pytest.mark.parametrize("output_format", ["nifti", "seg_nrrd"])
def test_write_segmentation_file_formats(tmp_path, output_format):
    """Called directly with a numpy label: the returned path holds the labels in the input's geometry."""
    source, label, affine = _tiny_nifti_case(tmp_path / "in")
    out = tmp_path / "out" / "nested"
    target = write_segmentation(label, affine, str(source), out, output_format=output_format, label_names=LABELS)
    suffix = {"nifti": ".nii.gz", "seg_nrrd": ".seg.nrrd"}[output_format]
    assert target == out / f"case_00007{suffix}"
    assert sorted(p.name for p in out.iterdir()) == [target.name, "case_00007_volumes.json"]
    if output_format == "nifti":
        written = nib.load(target)
        assert written.get_data_dtype() == np.uint8 and np.allclose(written.affine, affine)
        data = np.asarray(written.dataobj)
    else:
        data, header = nrrd.read(str(target))
        lps = ras_to_lps(affine)
        assert np.allclose(header["space directions"], lps[:3, :3].T) and np.allclose(header["space origin"], lps[:3, 3])
    assert np.array_equal(data, label)
    volumes = json.loads((out / "case_00007_volumes.json").read_text())
    voxel_ml = 0.8 * 0.7 * 2.5 / 1000
    assert volumes["case"] == "case_00007" and volumes["source"] == str(source)
    assert volumes["segmentation"] == target.name
    assert np.isclose(volumes["kidney_ml"], np.count_nonzero(label == 1) * voxel_ml, atol=1e-3)
    assert np.isclose(volumes["all_foreground_ml"], np.count_nonzero(label) * voxel_ml, atol=1e-3)


def test_write_segmentation_dicom_seg_and_preview(synthetic_series, tmp_path):
    image = _loaded(synthetic_series)
    label = _label_from_block(image)
    preview = (np.asarray(image[0]), np.asarray(image.affine))
    target = write_segmentation(label, image.meta["original_affine"], str(synthetic_series), tmp_path,
                                output_format="dicom_seg", label_names=LABELS, preview=preview)
    assert target == tmp_path / "series_001.seg.dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "series_001.seg.dcm", "series_001_preview.png", "series_001_volumes.json"]
    seg = hd.seg.segread(str(target))
    assert np.array_equal(np.unique(seg.get_volume(combine_segments=True).array), [0, 1, 2])
    with Image.open(tmp_path / "series_001_preview.png") as png:
        assert png.size == (4 * TILE, TILE)


def test_write_segmentation_refuses_bad_formats(tmp_path):
    source, label, affine = _tiny_nifti_case(tmp_path / "in")
    with pytest.raises(InputError, match="unknown"):
        write_segmentation(label, affine, str(source), tmp_path / "out", output_format="png", label_names=LABELS)
    with pytest.raises(InputError, match="needs a DICOM series"):
        write_segmentation(label, affine, str(source), tmp_path / "out", output_format="dicom_seg", label_names=LABELS)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_save_segmentationd_is_write_segmentation(tmp_path):
    """The MONAI transform unwraps the MetaTensor and writes the very bytes of the function."""
    from monai.data import MetaTensor

    source, label, affine = _tiny_nifti_case(tmp_path / "in")
    meta = {"filename_or_obj": str(source), "original_affine": affine, "spatial_shape": np.asarray(label.shape)}
    SaveSegmentationd("pred", str(tmp_path / "transform"), LABELS)(
        {"image": MetaTensor(torch.zeros((1, *label.shape)), meta=meta), "pred": torch.as_tensor(label[None])})
    write_segmentation(label, affine, str(source), tmp_path / "function", output_format="nifti", label_names=LABELS)
    for name in ("case_00007.nii.gz", "case_00007_volumes.json"):
        assert (tmp_path / "transform" / name).read_bytes() == (tmp_path / "function" / name).read_bytes(), name
