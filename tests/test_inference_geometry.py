"""Inference writes each segmentation in its input's exact geometry, in the right orientation.

Header checks (shape, affine, qform/sform codes, uint8, labels, volumes JSON) run on every output. Header
equality alone would not catch a flipped or transposed label map, so the orientation checks replace the
network by :class:`ThresholdNet`, a fixed per-slice rule whose answer is known in advance: voxels above
the middle of the HU window are foreground, labelled 2 in the patient's right-posterior quadrant of the
RAS slice and 1 elsewhere, so that a left/right or anterior/posterior flip, a transposed slice or slicing
along the wrong axis changes the answer. The expected label map is computed independently with nibabel
(or ITK for DICOM) from the input array and its affine, and must match the written file voxel for voxel
(exactly where the pipeline resamples nothing, in the interior of each region where it resizes slices).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy.ndimage import binary_dilation, binary_erosion

from conftest import BUNDLE_ROOT, shared_path
from conftest import run_inference as run_tiny_inference
from scripts.data.layout import IMAGE_NAME, LABEL_NAME

CONFIG = BUNDLE_ROOT / "configs" / "inference.json"
LABEL_NAMES = {"kidney": 1, "tumor": 2}
HU_WINDOW = json.loads(CONFIG.read_text())["hu_window"]
THRESHOLD_HU = (HU_WINDOW[0] + HU_WINDOW[1]) / 2  # ThresholdNet's 0.5 on the [0, 1]-scaled input


class ThresholdNet(torch.nn.Module):
    """Stand-in 2D network with a known answer: ``x > 0.5`` is foreground, label 2 in one quadrant, else 1.

    A RAS slice runs left to right along its first axis and posterior to anterior along its second, so
    the quadrant (second half of the first axis, first half of the second) is the patient's right-posterior
    one. Outputs one-hot "logits" ``(B, 3, H, W)`` for input ``(B, 1, H, W)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = (x > 0.5).to(x.dtype)
        quadrant = torch.zeros_like(foreground)
        quadrant[..., x.shape[-2] // 2:, : x.shape[-1] // 2] = 1
        return torch.cat([1 - foreground, foreground * (1 - quadrant), foreground * quadrant], dim=1)


class CountingNet(torch.nn.Module):
    """ThresholdNet that counts the slices it is asked about (``slices``: the batch sizes it saw, summed)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.slices = ThresholdNet(), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slices += x.shape[0]
        return self.inner(x)


@pytest.fixture(scope="module")
def threshold_weights(tmp_path_factory) -> Path:
    """ThresholdNet has no parameters; the checkpoint loader still wants a file."""
    path = tmp_path_factory.mktemp("threshold") / "model.pt"
    torch.save({"model": ThresholdNet().state_dict()}, path)
    return path


def run_inference(input_path: Path, output_dir: Path, model_path: Path, network: torch.nn.Module | None = None,
                  **overrides) -> None:
    if network is not None:
        overrides["network_def"] = network  # an instantiated object is a valid config override
    run_tiny_inference(input_path, output_dir, model_path, **overrides)


def expected_labels(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """ThresholdNet's answer on the array as stored, derived with nibabel's reorientation (not MONAI's)."""
    to_ras = io_orientation(affine)
    foreground = apply_orientation(image > THRESHOLD_HU, to_ras)
    labels = foreground.astype(np.uint8)
    right, posterior = labels.shape[0] // 2, labels.shape[1] // 2  # RAS: left to right, posterior to anterior
    labels[right:, :posterior] *= 2
    back = ornt_transform(axcodes2ornt("RAS"), to_ras)
    assert np.array_equal(apply_orientation(foreground, back), image > THRESHOLD_HU)
    return apply_orientation(labels, back)


def check_output(output_dir: Path, case: str, shape: tuple[int, ...], affine: np.ndarray,
                 header: nib.Nifti1Header | None = None, atol: float = 1e-5) -> np.ndarray:
    """The common contract of every output; returns the label array."""
    seg = nib.load(str(output_dir / f"{case}.nii.gz"))
    assert seg.get_data_dtype() == np.uint8
    assert seg.shape == tuple(shape)
    np.testing.assert_allclose(seg.affine, affine, atol=atol)
    if header is not None:  # a NIfTI input: both transforms and their codes kept exactly
        assert int(seg.header["qform_code"]) == int(header["qform_code"])
        assert int(seg.header["sform_code"]) == int(header["sform_code"])
        np.testing.assert_allclose(seg.header.get_sform(), header.get_sform(), atol=1e-6)
        np.testing.assert_allclose(seg.header.get_qform(), header.get_qform(), atol=1e-6)
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    volumes = json.loads((output_dir / f"{case}_volumes.json").read_text())
    assert volumes["case"] == case and volumes["segmentation"] == f"{case}.nii.gz"
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    for name, value in LABEL_NAMES.items():
        assert volumes[f"{name}_ml"] == pytest.approx(np.count_nonzero(labels == value) * voxel_ml, abs=1e-3)
    assert volumes["all_foreground_ml"] == pytest.approx(np.count_nonzero(labels) * voxel_ml, abs=1e-3)
    return labels


def assert_matches_interior(labels: np.ndarray, expected: np.ndarray, affine: np.ndarray, margin: int = 2) -> None:
    """Where slices are resized (area down, nearest back): exact on every slice axis position, exact in each
    label's in-plane interior, and no foreground further than ``margin`` voxels in-plane from the truth.

    ``margin`` 2 covers a 90 -> 64 resize: adaptive average pooling uses whole-voxel bins, so an edge moves
    by up to ceil(90 / 64) voxels.
    """
    to_ras = io_orientation(affine)
    labels, expected = apply_orientation(labels, to_ras), apply_orientation(expected, to_ras)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # RAS: slices are the last axis
    np.testing.assert_array_equal(labels.any(axis=(0, 1)), expected.any(axis=(0, 1)))  # slices are not resampled
    for value in (1, 2):
        core = binary_erosion(expected == value, in_plane, iterations=margin)
        assert core.sum() > 0
        assert np.all(labels[core] == value), f"label {value}: {np.count_nonzero(labels[core] != value)} core misses"
    halo = binary_dilation(expected > 0, in_plane, iterations=margin)
    assert not np.any(labels[~halo]), "foreground away from the bright box"
    dice = 2 * np.count_nonzero((labels > 0) & (expected > 0)) / (np.count_nonzero(labels) + np.count_nonzero(expected))
    assert dice > 0.9


# ---------------------------------------------------------------- synthetic volumes in three storage orders
RAS_SHAPE = (71, 90, 13)
RAS_AFFINE = np.array([[0.75, 0, 0, -123.4], [0, 0.9, 0, 56.7], [0, 0, 3.0, -890.1], [0, 0, 0, 1]])


def synthetic_case(axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """One anatomy stored in ``axcodes`` order: air with a bright box off-centre on every axis,
    straddling the left/right and anterior/posterior midlines so that both labels appear."""
    ras = np.full(RAS_SHAPE, -1000, np.int16)
    ras[12:52, 25:60, 3:9] = 200
    to_target = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    stored = apply_orientation(ras, to_target)
    affine = RAS_AFFINE @ inv_ornt_aff(to_target, RAS_SHAPE)
    assert "".join(nib.aff2axcodes(affine)) == axcodes
    return np.ascontiguousarray(stored), affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("axcodes, qform_code, sform_code", [("RAS", 1, 1), ("IPL", 0, 2), ("LPS", 1, 2)])
def test_orientation_voxel_for_voxel(tmp_path, threshold_weights, axcodes, qform_code, sform_code):
    """``IPL`` is the KiTS storage order (slice axis first, affine like [[0,0,-0.8],[0,-0.8,0],[-3,0,0]])."""
    stored, affine = synthetic_case(axcodes)
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", stored, affine, qform_code, sform_code)
    source = nib.load(str(scan))
    np.testing.assert_allclose(source.affine, affine, atol=1e-5)  # float32 header storage
    run_inference(scan, tmp_path / "out", threshold_weights, ThresholdNet())
    assert sorted(os.listdir(tmp_path / "out")) == ["scan.nii.gz", "scan_preview.png", "scan_volumes.json"]
    labels = check_output(tmp_path / "out", "scan", stored.shape, source.affine, source.header)
    assert_matches_interior(labels, expected_labels(stored, affine), affine)


# ---------------------------------------------------------------- input layouts, random tiny network
KITS_AFFINE = np.array([[0, 0, -0.8, 11.0], [0, -0.8, 0, -22.0], [-3.0, 0, 0, 33.0], [0, 0, 0, 1]])


def _kits_folder(root: Path) -> tuple[Path, dict[str, Path]]:
    shapes = {"case_00000": (9, 70, 90), "case_00001": (13, 64, 64), "case_00007": (5, 33, 47)}
    sources = {}
    for case, shape in shapes.items():
        volume = np.full(shape, -1000, np.int16)
        volume[:, shape[1] // 4: shape[1] // 2, shape[2] // 3:] = 150
        sources[case] = save_nifti(root / "kits" / case / IMAGE_NAME, volume, KITS_AFFINE, 0, 2)
        save_nifti(root / "kits" / case / LABEL_NAME, np.zeros(shape, np.uint8), KITS_AFFINE, 0, 2)  # ignored
    return root / "kits", sources


def _nifti_folder(root: Path) -> tuple[Path, dict[str, Path]]:
    ras, ras_affine = synthetic_case("RAS")
    lps, lps_affine = synthetic_case("LPS")
    sources = {"a_ras": save_nifti(root / "scans" / "a_ras.nii.gz", ras, ras_affine),
               "b_lps": save_nifti(root / "scans" / "b_lps.nii", lps, lps_affine, 1, 2)}  # uncompressed too
    (root / "scans" / "notes.txt").write_text("not an image: ignored")
    return root / "scans", sources


def _single_case_folder(root: Path) -> tuple[Path, dict[str, Path]]:
    kits, sources = _kits_folder(root)
    return kits / "case_00001", {"case_00001": sources["case_00001"]}


def _single_file(root: Path) -> tuple[Path, dict[str, Path]]:
    stored, affine = synthetic_case("IPL")
    path = save_nifti(root / "ct scan.nii.gz", stored, affine, 0, 2)  # a space in the name
    return path, {"ct scan": path}


@pytest.mark.parametrize("make", [_kits_folder, _nifti_folder, _single_case_folder, _single_file],
                         ids=lambda f: f.__name__.strip("_"))
def test_input_layouts(tmp_path, tiny_weights, make):
    input_path, sources = make(tmp_path / "in")
    run_inference(input_path, tmp_path / "out", tiny_weights)
    expected_files = sorted([f"{case}{suffix}" for case in sources
                            for suffix in (".nii.gz", "_preview.png", "_volumes.json")])
    assert sorted(os.listdir(tmp_path / "out")) == expected_files  # named after the case, no temporary files
    for case, source in sources.items():
        image = nib.load(str(source))
        check_output(tmp_path / "out", case, image.shape, image.affine, image.header)
        volumes = json.loads((tmp_path / "out" / f"{case}_volumes.json").read_text())
        assert volumes["source"] == str(source)


# ---------------------------------------------------------------- real data
def test_real_ct_tiny_network(tmp_path, tiny_weights):
    """The TotalSegmentator example CT (int32, RAS, 122x101x112) and its 30-slice crop (int16)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("example_ct.nii.gz", "example_ct_sm.nii.gz"):
        os.symlink(shared_path("totalseg_example", name), folder / name)
    run_inference(folder, tmp_path / "out", tiny_weights)
    for case in ("example_ct", "example_ct_sm"):
        source = nib.load(str(folder / f"{case}.nii.gz"))
        loaded = LoadImage(image_only=True)(str(folder / f"{case}.nii.gz"))
        assert tuple(loaded.shape) == source.shape
        np.testing.assert_allclose(loaded.affine.numpy(), source.affine, atol=1e-5)
        check_output(tmp_path / "out", case, source.shape, source.affine, source.header)


def test_real_ct_orientation_exact(tmp_path, threshold_weights):
    """On a real header with slices of native size (no resizing), ThresholdNet's answer is exact."""
    scan = shared_path("totalseg_example", "example_ct_sm.nii.gz")
    source = nib.load(str(scan))
    run_inference(scan, tmp_path / "out", threshold_weights, ThresholdNet(),
                  slice_size=list(source.shape[:2]), lcc_enabled=False)
    labels = check_output(tmp_path / "out", "example_ct_sm", source.shape, source.affine, source.header)
    expected = expected_labels(np.asarray(source.dataobj), source.affine)
    assert np.count_nonzero(expected == 1) > 100 and np.count_nonzero(expected == 2) > 100
    np.testing.assert_array_equal(labels, expected)


def _itk_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The series as ITK reads it: voxels in (x, y, z) order and the RAS affine (ITK works in LPS)."""
    itk = pytest.importorskip("itk")
    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(str(folder))
    reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New()
    reader.SetFileNames(names.GetFileNames(names.GetSeriesUIDs()[0]))
    reader.Update()
    image = reader.GetOutput()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()) @ np.diag(np.asarray(image.GetSpacing()))
    lps[:3, 3] = np.asarray(image.GetOrigin())
    array = itk.array_from_image(image).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    assert array.shape == tuple(image.GetLargestPossibleRegion().GetSize())
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.slow
def test_real_dicom_series(tmp_path, threshold_weights):
    """20 slices of 512x512 (LPS in DICOM): geometry as read by MONAI and by ITK, labels exact."""
    folder = shared_path("totalseg_example", "example_ct_dicom")
    loaded = LoadImage(image_only=True)(str(folder))
    hu, affine = _itk_series(folder)
    assert tuple(loaded.shape) == hu.shape
    np.testing.assert_allclose(loaded.affine.numpy(), affine, atol=1e-4)
    np.testing.assert_array_equal(loaded.numpy(), hu)
    run_inference(folder, tmp_path / "out", threshold_weights, ThresholdNet(),
                  slice_size=list(hu.shape[:2]), lcc_enabled=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["example_ct_dicom.nii.gz", "example_ct_dicom_preview.png",
                                                    "example_ct_dicom_volumes.json"]
    # the NIfTI header stores the affine as float32: 1e-4 mm on origins of several hundred mm
    labels = check_output(tmp_path / "out", "example_ct_dicom", hu.shape, affine, atol=1e-4)
    expected = expected_labels(hu, affine)
    assert np.count_nonzero(expected == 1) > 100 and np.count_nonzero(expected == 2) > 100
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.slow
def test_real_kits_header(tmp_path, threshold_weights):
    """A KiTS23 mask dressed as CT (kidney 200 HU, air elsewhere): the real IPL header, slices first."""
    mask_file = shared_path("kits23_masks", "case_00061_segmentation.nii.gz")
    mask = nib.load(str(mask_file))
    assert nib.aff2axcodes(mask.affine) == ("I", "P", "L")
    header = mask.header.copy()
    header.set_data_dtype(np.int16)
    hu = np.where(np.asarray(mask.dataobj) > 0, 200, -1000).astype(np.int16)
    scan = tmp_path / "in" / "case_00061" / IMAGE_NAME
    scan.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(hu, None, header=header), str(scan))
    run_inference(scan.parent, tmp_path / "out", threshold_weights, ThresholdNet(), slice_size=[512, 512],
                  lcc_enabled=False)
    source = nib.load(str(scan))
    labels = check_output(tmp_path / "out", "case_00061", hu.shape, source.affine, source.header)
    expected = expected_labels(hu, source.affine)
    assert np.count_nonzero(expected == 1) > 1000 and np.count_nonzero(expected == 2) > 1000  # both kidneys
    np.testing.assert_array_equal(labels, expected)
