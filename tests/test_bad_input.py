"""Bad input gives one clear message naming the file and the problem, and leaves nothing half-written.

Each case runs the ``inferring`` workflow in-process and checks that the error chain holds an
:class:`~scripts.common.errors.InputError` whose message names the file (MONAI wraps errors raised inside config
expressions in a ``RuntimeError``; the command line prints the same message via ``find_input_error``), that
the input files are unchanged (bytes and mtime) and that the output folder holds no file, temporary or not.
A few cases run the real command line and check exit code 2 and the single ``error: ...`` line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLE_ROOT, run_inference
from scripts.common.checks import check_bool_flags
from scripts.common.errors import InputError, find_in_chain, find_input_error, report_input_error
from scripts.data.datalist import load_datalist
from scripts.data.layout import IMAGE_NAME, LABEL_NAME
from scripts.data.checks import check_datalist, check_image_file
from scripts.data.transforms import LoadImageCheckedd
from scripts.outputs.writer import SaveSegmentationd

CONFIG = BUNDLE_ROOT / "configs" / "inference.json"
def ct_volume(shape=(16, 16, 6), dtype=np.int16) -> np.ndarray:
    """A CT-like volume: air around a soft-tissue block."""
    volume = np.full(shape, -1000, dtype)
    volume[4:12, 4:12] = 40
    return volume


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (dot-files included) with its content hash and mtime."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def input_error(call: Callable[[], object]) -> str:
    """Run ``call``; assert an InputError is in the raised exception's chain and return its one-line message."""
    with pytest.raises(Exception) as info:
        call()
    chain, exc = [], info.value
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, InputError) for e in chain), f"no InputError, got {info.value!r}"
    message = find_input_error(info.value)
    assert message and "\n" not in message
    return message


def expect_clean_failure(input_root: Path, input_path: Path, output_dir: Path, weights: Path, *needles: str,
                         **overrides) -> str:
    """Inference on ``input_path`` fails with an InputError containing ``needles``; nothing is written."""
    before = snapshot(input_root)
    message = input_error(lambda: run_inference(input_path, output_dir, weights, **overrides))
    for needle in needles:
        assert needle in message, message
    assert snapshot(input_root) == before, "input files changed"
    assert snapshot(output_dir) == {}, "output folder is not empty"
    return message


# ---------------------------------------------------------------- unreadable or wrong-shaped inputs
def _missing(root: Path) -> tuple[Path, str]:
    return root / "absent.nii.gz", "input path does not exist"


def _empty_folder(root: Path) -> tuple[Path, str]:
    (root / "scans").mkdir()
    return root / "scans", "input folder is empty"


def _zero_bytes(root: Path) -> tuple[Path, str]:
    (root / "scan.nii.gz").write_bytes(b"")
    return root / "scan.nii.gz", "file is empty (0 bytes)"


def _random_bytes(root: Path) -> tuple[Path, str]:
    (root / "scan.nii.gz").write_bytes(np.random.default_rng(0).bytes(4096))
    return root / "scan.nii.gz", "cannot be read as NIfTI"


def _noise_nii_gz() -> bytes:
    """A valid .nii.gz (64x64x40 int16 noise, which compresses little, so cuts land in voxel data)."""
    volume = np.random.default_rng(0).integers(-1000, 500, (64, 64, 40), dtype=np.int16)
    return gzip.compress(nib.Nifti1Image(volume, np.eye(4)).to_bytes())


def _truncated_gzip(root: Path) -> tuple[Path, str]:
    """Header readable, compressed data cut in the middle (an interrupted download)."""
    data = _noise_nii_gz()
    (root / "scan.nii.gz").write_bytes(data[: len(data) // 2])
    return root / "scan.nii.gz", "truncated"


def _truncated_nii(root: Path) -> tuple[Path, str]:
    full = save_nifti(root / "scan.nii", ct_volume())
    full.write_bytes(full.read_bytes()[:600])
    return full, "truncated"


def _image_2d(root: Path) -> tuple[Path, str]:
    return save_nifti(root / "scan.nii.gz", np.zeros((8, 8), np.int16)), "2D image"


def _image_4d(root: Path) -> tuple[Path, str]:
    return save_nifti(root / "scan.nii.gz", np.zeros((8, 8, 4, 3), np.int16)), "4D image with shape (8, 8, 4, 3)"


def _nan_voxels(root: Path) -> tuple[Path, str]:
    volume = ct_volume(dtype=np.float32)
    volume[0, 0, :3] = np.nan
    return save_nifti(root / "scan.nii.gz", volume), "contains 3 NaN voxels"


@pytest.mark.parametrize("make", [_missing, _empty_folder, _zero_bytes, _random_bytes, _truncated_gzip,
                                  _truncated_nii, _image_2d, _image_4d, _nan_voxels],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_image_named(tmp_path, tiny_weights, make):
    (tmp_path / "in").mkdir()
    input_path, problem = make(tmp_path / "in")
    message = expect_clean_failure(tmp_path / "in", input_path, tmp_path / "out", tiny_weights, str(input_path),
                                   problem)
    assert message.startswith(str(input_path))


def _lost_middle(root: Path) -> tuple[Path, str]:
    """Header and gzip trailer intact, compressed data in between lost: the size check cannot see it."""
    data = _noise_nii_gz()
    (root / "scan.nii.gz").write_bytes(data[: len(data) // 2] + data[-8:])  # trailer: CRC32, uncompressed size
    return root / "scan.nii.gz", "cannot be read"


def _not_dicom_folder(root: Path) -> tuple[Path, str]:
    (root / "series").mkdir()
    (root / "series" / "readme.txt").write_text("not a DICOM file")
    return root / "series", "cannot be read"


def _damaged_nrrd(root: Path) -> tuple[Path, str]:
    (root / "scan.nrrd").write_bytes(np.random.default_rng(1).bytes(3000))
    return root / "scan.nrrd", "cannot be read"


@pytest.mark.parametrize("make", [_lost_middle, _not_dicom_folder, _damaged_nrrd], ids=lambda f: f.__name__.strip("_"))
def test_damage_seen_by_the_reader_named(tmp_path, tiny_weights, make):
    (tmp_path / "in").mkdir()
    input_path, problem = make(tmp_path / "in")
    expect_clean_failure(tmp_path / "in", input_path, tmp_path / "out", tiny_weights, str(input_path), problem)


@pytest.mark.parametrize("make", [_lost_middle, _not_dicom_folder, _damaged_nrrd, _truncated_gzip],
                         ids=lambda f: f.__name__.strip("_"))
def test_checked_loader_names_file(tmp_path, make):
    input_path, _ = make(tmp_path)
    with pytest.raises(InputError) as info:
        LoadImageCheckedd("image", image_only=True)({"image": str(input_path)})
    assert info.value.message.startswith(f"{input_path}: cannot be read (")


def test_truncated_gzip_header_check_is_cheap_and_exact(tmp_path):
    """The gzip trailer check rejects a cut file but accepts a valid multi-member gzip (bgzip-style)."""
    path, _ = _truncated_gzip(tmp_path)
    with pytest.raises(InputError, match="truncated or damaged"):
        check_image_file(path)
    volume = ct_volume()
    raw = save_nifti(tmp_path / "plain.nii", volume).read_bytes()
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    assert check_image_file(multi) == volume.shape
    np.testing.assert_array_equal(nib.load(str(multi)).get_fdata(), volume)


def test_good_case_kept_when_a_later_case_fails(tmp_path, tiny_weights):
    """A folder whose second case has NaNs: the first output is complete, nothing at all for the second."""
    save_nifti(tmp_path / "in" / "a_good.nii.gz", ct_volume())
    _nan_voxels(tmp_path / "in" / "b")
    (tmp_path / "in" / "b" / "scan.nii.gz").rename(tmp_path / "in" / "b_nan.nii.gz")
    (tmp_path / "in" / "b").rmdir()
    before = snapshot(tmp_path / "in")
    message = input_error(lambda: run_inference(tmp_path / "in", tmp_path / "out", tiny_weights))
    assert message.startswith(str(tmp_path / "in" / "b_nan.nii.gz")) and "NaN" in message
    assert snapshot(tmp_path / "in") == before
    assert sorted(snapshot(tmp_path / "out")) == ["a_good.nii.gz", "a_good_preview.png", "a_good_volumes.json"]
    assert nib.load(str(tmp_path / "out" / "a_good.nii.gz")).shape == (16, 16, 6)


# ---------------------------------------------------------------- datalists (training / evaluation)
def test_label_shape_mismatch(tmp_path):
    image = save_nifti(tmp_path / "image.nii.gz", ct_volume((8, 8, 4)))
    label = save_nifti(tmp_path / "label.nii.gz", np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(InputError) as info:
        check_datalist([{"image": str(image), "label": str(label)}])
    assert info.value.message.startswith(str(label))
    assert "label shape (8, 8, 5) does not match image shape (8, 8, 4)" in info.value.message

    kits = tmp_path / "kits"
    for index in range(4):
        save_nifti(kits / f"case_{index:05d}" / IMAGE_NAME, ct_volume((8, 8, 4)))
        save_nifti(kits / f"case_{index:05d}" / LABEL_NAME, np.zeros((8, 8, 4), np.uint8))
    bad_label = save_nifti(kits / "case_00002" / LABEL_NAME, np.zeros((8, 9, 4), np.uint8))
    with pytest.raises(InputError) as info:
        load_datalist(str(kits), num_folds=2)
    assert str(bad_label) in info.value.message and "does not match image shape" in info.value.message


def test_missing_label_file(tmp_path):
    image = save_nifti(tmp_path / "image.nii.gz", ct_volume((8, 8, 4)))
    missing = tmp_path / "label.nii.gz"
    with pytest.raises(InputError) as info:
        check_datalist([{"image": str(image), "label": str(missing)}])
    assert info.value.message == f"{missing}: label file does not exist"
    with pytest.raises(InputError, match="has no label file"):
        check_datalist([{"image": str(image)}])
    for index in range(2):
        save_nifti(tmp_path / "kits" / f"case_{index:05d}" / IMAGE_NAME, ct_volume((8, 8, 4)))
    save_nifti(tmp_path / "kits" / "case_00000" / LABEL_NAME, np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(InputError) as info:
        load_datalist(str(tmp_path / "kits"), num_folds=2)
    assert info.value.message == f"{tmp_path / 'kits' / 'case_00001' / LABEL_NAME}: label file does not exist"


# ---------------------------------------------------------------- outputs, weights, flags
def test_output_folder_not_writable(tmp_path, tiny_weights):
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    (tmp_path / "file.txt").write_text("a regular file")
    output_dir = tmp_path / "file.txt" / "out"
    message = expect_clean_failure(tmp_path / "in", scan, output_dir, tiny_weights, str(output_dir),
                                   "output folder cannot be written")
    assert (tmp_path / "file.txt").read_text() == "a regular file"
    assert message.startswith(str(output_dir))


def test_writer_failure_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A failing save (disk full) removes its temporary file and names the target."""
    from monai.data import MetaTensor

    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    image = MetaTensor(np.zeros((1, 16, 16, 6), np.float32),
                       meta={"filename_or_obj": str(scan), "original_affine": np.diag([0.8, 0.8, 3.0, 1.0]),
                             "spatial_shape": np.array([16, 16, 6])})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", disk_full)
    writer = SaveSegmentationd("pred", output_dir=str(tmp_path / "out"), label_names={"kidney": 1, "tumor": 2})
    with pytest.raises(InputError) as info:
        writer({"image": image, "pred": np.zeros((1, 16, 16, 6), np.uint8)})
    assert info.value.message == (f"{tmp_path / 'out'}: cannot write the outputs of scan (No space left on device); "
                                  "the earlier outputs of scan are unchanged; free some space or choose another "
                                  "--output_dir")
    assert os.listdir(tmp_path / "out") == []


def test_refuses_to_overwrite_input(tmp_path, tiny_weights):
    """``--output_dir`` equal to the folder of ``scan.nii.gz`` would write ``scan.nii.gz`` over the input."""
    folder = tmp_path / "scans"
    scan = save_nifti(folder / "scan.nii.gz", ct_volume())
    before = snapshot(folder)
    message = input_error(lambda: run_inference(scan, folder, tiny_weights))
    assert message == f"{scan}: refusing to overwrite the input; choose another --output_dir"
    assert snapshot(folder) == before  # no output, no volumes JSON, no temporary file


def test_missing_weights(tmp_path):
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    weights = tmp_path / "models" / "model.pt"
    expect_clean_failure(tmp_path / "in", scan, tmp_path / "out", weights, str(weights),
                                   "no trained weights", "configs/train.json", "--model_path")
    assert not (tmp_path / "out").exists()  # checked before the output folder is created


def test_bool_flag_given_as_text(tmp_path, tiny_weights):
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    message = expect_clean_failure(tmp_path / "in", scan, tmp_path / "out", tiny_weights, "--lcc_enabled",
                                   "'false'", "True or False", lcc_enabled="false")
    assert message.startswith("--lcc_enabled")
    with pytest.raises(InputError, match="--keep_cyst: got 0"):
        check_bool_flags(keep_cyst=0)
    assert check_bool_flags(keep_cyst=False, lcc_enabled=True)


def test_mr_like_intensities_warn_and_complete(tmp_path, tiny_weights):
    scan = save_nifti(tmp_path / "in" / "mr.nii.gz",
                      np.random.default_rng(0).integers(0, 1000, (16, 16, 6), dtype=np.int16))
    before = snapshot(tmp_path / "in")
    with pytest.warns(UserWarning, match="does not look like CT") as record:
        run_inference(scan, tmp_path / "out", tiny_weights)
    assert any(str(scan) in str(w.message) and "hold no air" in str(w.message) for w in record)
    assert snapshot(tmp_path / "in") == before
    assert sorted(os.listdir(tmp_path / "out")) == ["mr.nii.gz", "mr_preview.png", "mr_volumes.json"]
    assert json.loads((tmp_path / "out" / "mr_volumes.json").read_text())["case"] == "mr"


# ---------------------------------------------------------------- the command line
def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    env.pop("BUNDLE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", str(CONFIG), *args],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in last, last


@pytest.mark.slow
def test_cli_missing_input(tmp_path, tiny_weights):
    missing = tmp_path / "absent.nii.gz"
    result = run_cli("--input_path", str(missing), "--output_dir", str(tmp_path / "out"),
                     "--model_path", str(tiny_weights))
    assert_one_line_error(result, str(missing), "does not exist")


@pytest.mark.slow
def test_cli_truncated_gzip(tmp_path, tiny_weights):
    (tmp_path / "in").mkdir()
    scan, _ = _truncated_gzip(tmp_path / "in")
    result = run_cli("--input_path", str(scan), "--output_dir", str(tmp_path / "out"),
                     "--model_path", str(tiny_weights))
    assert_one_line_error(result, str(scan), "truncated")
    assert snapshot(tmp_path / "out") == {}


@pytest.mark.slow
def test_cli_missing_weights(tmp_path):
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    weights = tmp_path / "model.pt"
    result = run_cli("--input_path", str(scan), "--output_dir", str(tmp_path / "out"), "--model_path", str(weights))
    assert_one_line_error(result, str(weights), "no trained weights", "--model_path")


@pytest.mark.parametrize("overrides, needle", [({"precision": "fp16"}, "--precision fp16: only on a CUDA device"),
                                               ({"slice_batch_size": 0}, "--slice_batch_size: expected 'auto'")])
def test_bad_fast_path_values_are_one_line_errors(tmp_path, phantom_dir, tiny_weights, overrides, needle):
    if torch.cuda.is_available() and "precision" in overrides:
        pytest.skip("fp16 is valid on a CUDA device")
    image = phantom_dir / "case_00000" / "imaging.nii.gz"
    expect_clean_failure(phantom_dir, image, tmp_path / "out", tiny_weights, needle, **overrides)


def test_error_chain_helpers_find_wrapped_errors(capsys, monkeypatch):
    """MONAI wraps what a config expression raises: the helpers walk the cause/context chain (cycles included)."""
    monkeypatch.delenv("BUNDLE_DEBUG", raising=False)
    try:
        try:
            raise InputError("/data/case_00001/imaging.nii.gz: truncated file")
        except InputError as inner:
            raise RuntimeError("config expression failed") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert isinstance(find_in_chain(wrapped, InputError), InputError)
    assert find_in_chain(wrapped, KeyError) is None
    assert report_input_error(wrapped, prefix="kidney-seg: ") == 2
    assert capsys.readouterr().err == "kidney-seg: error: /data/case_00001/imaging.nii.gz: truncated file\n"

    cyclic = RuntimeError("a")
    cyclic.__context__ = ValueError("b")
    cyclic.__context__.__context__ = cyclic
    assert find_in_chain(cyclic, KeyError) is None
    assert report_input_error(cyclic) is None  # not bad input: the caller re-raises with the traceback
    monkeypatch.setenv("BUNDLE_DEBUG", "1")
    assert report_input_error(wrapped) is None
