"""Fault injection on the inference / output side (issue 14, "Nothing lost, nothing silent").

All data are SYNTHETIC (small phantoms and label maps made here) and the weights are random (tiny WP-UNet).
Each test reproduces one fault of the issue and asserts its outcome: a case's outputs are the earlier complete set
or the new complete set, never a mix; every refusal is one ``error: ...`` line with exit code 2 and no traceback;
suspicious input warns and still produces outputs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from conftest import BUNDLE_ROOT, TINY_OVERRIDES, run_inference, small_tmpfs
from dicom_fixtures import write_synthetic_series
from scripts.common.errors import InputError, OutputError, find_input_error
from scripts.outputs import transaction
from scripts.outputs.transaction import case_outputs_complete, is_temporary_output, recover_output_folder
from scripts.outputs.writer import write_segmentation

CONFIG = BUNDLE_ROOT / "configs" / "inference.json"
LABELS = {"kidney": 1, "tumor": 2}
AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])
VOXEL_ML = 0.8 * 0.8 * 3.0 / 1000
SHAPE = (16, 16, 6)


# ---------------------------------------------------------------- helpers
def ct_volume(dtype=np.int16) -> np.ndarray:
    """SYNTHETIC CT: air around a soft-tissue block."""
    volume = np.full(SHAPE, -1000, dtype)
    volume[4:12, 4:12] = 40
    return volume


def save_nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return path


def tiny_network(seed: int = 0):
    from scripts.networks import WPUNet

    torch.manual_seed(seed)
    return WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))


def files_of(folder: Path) -> dict[str, str]:
    """Name -> SHA-256 of every file in ``folder`` (dot-files included)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if is_temporary_output(p.name)]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    env.pop("BUNDLE_DEBUG", None)
    overrides = [item for key, value in TINY_OVERRIDES.items() for item in (f"--{key}", json.dumps(value))]
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", str(CONFIG),
                           "--num_workers", "0", *overrides, *args], cwd=BUNDLE_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def input_error(call) -> str:
    """Run ``call``; an InputError must be in the chain; return its one-line message."""
    with pytest.raises(Exception) as info:
        call()
    message = find_input_error(info.value)
    assert message and "\n" not in message, repr(info.value)
    return message


# ---------------------------------------------------------------- kill during output writes
CHILD = r"""
import logging, sys, time
import numpy as np
import scripts.outputs.transaction as t
from scripts.outputs.writer import write_segmentation

out, fmt, first, last, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
logging.basicConfig(level=logging.INFO, format="%(message)s")
real_fsync, real_publish = t._fsync_file, t.publish
def slow_fsync(path):  # widen the write window so that the kill lands inside a case's transaction
    time.sleep(delay); real_fsync(path)
def slow_publish(tmp, final):  # and the rename window, after the commit journal
    time.sleep(delay); real_publish(tmp, final)
t._fsync_file, t.publish = slow_fsync, slow_publish
affine = np.diag([0.8, 0.8, 3.0, 1.0])
print("ready", flush=True)
for generation in range(first, last + 1):
    for case in ("case_a", "case_b", "case_c"):
        label = np.zeros((16, 16, 6), np.uint8)
        label.flat[:generation] = 1  # the number of kidney voxels tells the generation
        image = np.random.default_rng(generation).random((16, 16, 6))
        write_segmentation(label, affine, f"/synthetic/{case}.nii.gz", out, output_format=fmt,
                           label_names={"kidney": 1, "tumor": 2}, preview=(image, affine))
"""


def _child(out: Path, fmt: str, first: int, last: int, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), fmt, str(first), str(last), str(delay)],
                            cwd=BUNDLE_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _generation(out: Path, case: str, fmt: str) -> int:
    """The generation of a complete set: from the volumes JSON, checked against the segmentation's voxels."""
    volumes = json.loads((out / f"{case}_volumes.json").read_text())
    generation = round(volumes["kidney_ml"] / VOXEL_ML)
    if fmt == "nifti":
        label = np.asarray(nib.load(str(out / f"{case}.nii.gz")).dataobj)
    else:
        import nrrd

        label, _ = nrrd.read(str(out / f"{case}.seg.nrrd"))
    assert int(np.count_nonzero(label == 1)) == generation, f"{case}: segmentation and volumes JSON disagree"
    return generation


def _write_generation(out: Path, fmt: str, generation: int) -> None:
    """What the child writes, in this process: the 'next run' in the folder (its recovery included)."""
    for case in ("case_a", "case_b", "case_c"):
        label = np.zeros(SHAPE, np.uint8)
        label.flat[:generation] = 1
        image = np.random.default_rng(generation).random(SHAPE)
        write_segmentation(label, AFFINE, f"/synthetic/{case}.nii.gz", out, output_format=fmt, label_names=LABELS,
                           preview=(image, AFFINE))


@pytest.mark.parametrize("fmt", ["nifti"])
def test_sigkill_during_output_writes_leaves_old_or_new_set(tmp_path, fmt, caplog, monkeypatch):
    """SIGKILL at random moments of a writing run (a child process, slowed inside its transactions): every case is
    its earlier or its new complete set, or an interrupted commit; the next run completes those, removes the
    stale temporaries and logs how many."""
    out, rng = tmp_path / "out", random.Random(14)
    _write_generation(out, fmt, 1)
    interrupted = 0
    for trial in range(4):
        start = 10 * (trial + 1)
        child = _child(out, fmt, start, start + 50, 0.02)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        try:
            child.wait(timeout=rng.uniform(0.05, 0.6))
        except subprocess.TimeoutExpired:
            pass
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
        child.stderr.close()
        leftovers = temporaries(out) + [p.name for p in out.glob(f".*{transaction.JOURNAL_SUFFIX}")]
        interrupted += bool(leftovers)
        for case in ("case_a", "case_b", "case_c"):
            pending = (out / f".{case}{transaction.JOURNAL_SUFFIX}").exists()
            assert pending or case_outputs_complete(out, case, fmt), f"trial {trial}: {case} is a mixed set"
            if not pending:
                assert start - 10 < _generation(out, case, fmt) <= start + 50
        monkeypatch.setattr(transaction, "_recovered", set())  # a new process: the folder not yet recovered
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="scripts.outputs.transaction"):
            for case in ("case_a", "case_b", "case_c"):  # roll-forward first: complete sets before the next run
                if (out / f".{case}{transaction.JOURNAL_SUFFIX}").exists():
                    recover_output_folder(out)
                    assert case_outputs_complete(out, case, fmt)
            _write_generation(out, fmt, start + 60)
        if leftovers:
            assert "stale temporary file(s)" in caplog.text or "completed" in caplog.text, caplog.text
        assert temporaries(out) == [] and not list(out.glob(f".*{transaction.JOURNAL_SUFFIX}"))
        for case in ("case_a", "case_b", "case_c"):
            assert case_outputs_complete(out, case, fmt) and _generation(out, case, fmt) == start + 60
    assert interrupted >= 2, "the kills never landed inside a case's writes"


def test_recovery_rolls_an_interrupted_commit_forward_and_spares_user_files(tmp_path, caplog):
    """A kill after the commit journal: the new set is completed; before it: the temporaries are removed.
    Files that only look similar (no random part, no leading dot) are never touched."""
    out = tmp_path / "out"
    old_label, new_label = np.zeros(SHAPE, np.uint8), np.ones(SHAPE, np.uint8)
    write_segmentation(old_label, AFFINE, "/synthetic/case_a.nii.gz", out, output_format="nifti",
                       label_names=LABELS)
    # an interrupted commit of case_a (journal written, nothing renamed yet), as a kill would leave it
    tx = transaction.CaseTransaction(out, "case_a")
    nib.save(nib.Nifti1Image(new_label, AFFINE), str(tx.temp_path("case_a.nii.gz")))
    record = transaction.file_record(tx.files[0][0])
    tx.temp_path("case_a_volumes.json").write_text(json.dumps({"kidney_ml": 1.0, "files": {"case_a.nii.gz": record}}))
    (out / f".case_a{transaction.JOURNAL_SUFFIX}").write_text(json.dumps(
        {"case": "case_a", "renames": [{"temporary": t.name, "final": f.name} for t, f in tx.files]}))
    assert not case_outputs_complete(out, "case_a", preview=False)  # pending: not complete until recovered
    # stale temporaries of a killed run (this version's and earlier versions' names) and look-alike user files
    stale = [".case_b.nii.gz.k2j4h1x9.part.nii.gz", ".case_b.nii.gz.ab_12cd3.nii.gz", ".case_b_volumes.json.zz9y8x7w.tmp",
             ".case_b_preview.png.q1w2e3r4.png", ".case_b.seg.nrrd.a1b2c3d4.tmp"]
    user = ["notes.txt", ".case_b.nii.gz.backup", "case_b.nii.gz.k2j4h1x9.nii.gz", ".hidden.json",
            ".timings.json.a1b2c3d4.tmp"]  # the last: another temporary of the bundle, not a case output
    for name in stale + user:
        (out / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="scripts.outputs.transaction"):
        assert recover_output_folder(out) == (1, len(stale))
    assert "completed 1 case output set(s)" in caplog.text and f"removed {len(stale)} stale" in caplog.text
    assert case_outputs_complete(out, "case_a", preview=False)
    assert np.array_equal(np.asarray(nib.load(str(out / "case_a.nii.gz")).dataobj), new_label)
    assert sorted(p.name for p in out.iterdir()) == sorted(["case_a.nii.gz", "case_a_volumes.json", *user])


def test_every_temporary_name_is_recognised_and_keeps_its_extension(tmp_path):
    """Recovery can only remove what it recognises; writers choose formats by the extension (nibabel)."""
    tx = transaction.CaseTransaction(tmp_path, "case_00001")
    for final, extension in (("case_00001.nii.gz", ".nii.gz"), ("case_00001.seg.nrrd", ".seg.nrrd"),
                             ("case_00001.seg.dcm", ".seg.dcm"), ("case_00001_preview.png", ".png"),
                             ("case_00001_volumes.json", ".json")):
        name = tx.temp_path(final).name
        assert is_temporary_output(name) and name.startswith(f".{final}.") and name.endswith(f".part{extension}")
    assert not is_temporary_output("case_00001.nii.gz") and not is_temporary_output(".case_00001.nii.gz")


def test_case_outputs_complete_detects_mixed_and_missing_sets(tmp_path):
    out = tmp_path / "out"
    image = np.random.default_rng(0).random(SHAPE)
    for value in (1, 2):
        write_segmentation(np.full(SHAPE, value, np.uint8), AFFINE, f"/synthetic/v{value}.nii.gz", out,
                           output_format="nifti", label_names=LABELS, preview=(image, AFFINE))
    assert case_outputs_complete(out, "v1") and case_outputs_complete(out, "v2")
    assert not case_outputs_complete(out, "v1", output_format="seg_nrrd")  # another format was asked for
    assert not case_outputs_complete(out, "absent")
    (out / "v2.nii.gz").write_bytes((out / "v1.nii.gz").read_bytes())  # a segmentation of another set
    assert not case_outputs_complete(out, "v2")
    assert case_outputs_complete(out, "v2", verify_hashes=False)  # same size: only the hash tells
    (out / "v1_preview.png").unlink()
    assert not case_outputs_complete(out, "v1") and case_outputs_complete(out, "v1", preview=False)


def test_failure_after_the_segmentation_keeps_the_earlier_set(tmp_path, monkeypatch):
    """The issue's data loss: disk full after the segmentation left a new segmentation beside an old volumes
    JSON and preview. Now nothing of the new set is published and no temporary file is left."""
    import scripts.outputs.writer as writer

    out, image = tmp_path / "out", np.random.default_rng(0).random(SHAPE)
    write_segmentation(np.zeros(SHAPE, np.uint8), AFFINE, "/synthetic/case_a.nii.gz", out, output_format="nifti",
                       label_names=LABELS, preview=(image, AFFINE))
    before = files_of(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_write_preview", disk_full)
    with pytest.raises(OutputError) as info:
        write_segmentation(np.ones(SHAPE, np.uint8), AFFINE, "/synthetic/case_a.nii.gz", out, output_format="nifti",
                           label_names=LABELS, preview=(image, AFFINE))
    assert info.value.message.startswith(f"{out}: cannot write the outputs of case_a (No space left on device)")
    assert files_of(out) == before and case_outputs_complete(out, "case_a")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only, where ``mount -t tmpfs`` works; skipped otherwise)."""
    with small_tmpfs(tmp_path / "disk", 1024) as disk:
        yield disk


def test_disk_full_during_output_is_one_line_and_keeps_the_earlier_set(tmp_path, tiny_weights, small_disk):
    """The real command on a full tmpfs: the segmentation fits, the preview does not."""
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    reference = run_cli("--input_path", str(scan), "--output_dir", str(tmp_path / "ref"),
                        "--model_path", str(tiny_weights))
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = small_disk / "out"
    write_segmentation(np.full(SHAPE, 2, np.uint8), AFFINE, str(scan), out, output_format="nifti",
                       label_names=LABELS, preview=(np.random.default_rng(1).random(SHAPE), AFFINE))  # another set
    before = files_of(out)
    assert before["scan.nii.gz"] != files_of(tmp_path / "ref")["scan.nii.gz"]
    page = os.statvfs(small_disk).f_frsize
    seg_pages = -(-(tmp_path / "ref" / "scan.nii.gz").stat().st_size // page)
    free = os.statvfs(small_disk).f_bavail * page
    (small_disk / "filler").write_bytes(b"\0" * (free - seg_pages * page))  # room for the segmentation only
    assert os.statvfs(small_disk).f_bavail == seg_pages
    result = run_cli("--input_path", str(scan), "--output_dir", str(out), "--model_path", str(tiny_weights))
    assert_one_line_error(result, str(out), "No space left on device", "earlier outputs of scan are unchanged")
    assert files_of(out) == before and temporaries(out) == []
    assert case_outputs_complete(out, "scan")


# ---------------------------------------------------------------- weights
def test_non_finite_weights_refused_in_both_paths(tmp_path):
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    for name, key in (("nan.pt", "weight"), ("inf_buffer.pt", "running_var")):
        state = tiny_network().state_dict()
        bad = next(k for k in state if k.endswith(key) and state[k].is_floating_point())
        state[bad].view(-1)[0] = float("nan") if name == "nan.pt" else float("inf")
        torch.save({"model": state}, tmp_path / name)
        for streaming in (True, False):
            message = input_error(lambda: run_inference(scan, tmp_path / "out", tmp_path / name, streaming=streaming))
            assert message.startswith(f"{tmp_path / name}: weights hold NaN or Inf values ({bad}")
        assert not (tmp_path / "out").exists() or temporaries(tmp_path / "out") == []
    assert not (tmp_path / "out" / "scan.nii.gz").exists()


class _Evil:
    """A pickle that would create ``path`` when unpickled without ``weights_only``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.makedirs, (str(self.path),)


def test_malicious_pickle_refused_on_every_load_path(tmp_path):
    from scripts.common.weights import load_weights
    from scripts.pruning.storage import load_sparse_state_dict
    from scripts.pruning.structured import load_structured

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"model": _Evil(marker)}, evil)
    sparse = tmp_path / "sparse.pt"
    buffer = io.BytesIO()
    torch.save({"format": "bundle-sparse-bitmask-v1", "tensors": _Evil(marker)}, buffer)
    with zipfile.ZipFile(sparse, "w") as archive:
        archive.writestr("sparse_state_dict.pt", buffer.getvalue())  # the member load_sparse_state_dict reads
    calls = [lambda: load_weights(tiny_network(), evil), lambda: load_structured(tiny_network(), evil),
             lambda: load_sparse_state_dict(sparse)]
    for call in calls:
        with pytest.raises(InputError) as info:
            call()
        message = info.value.message
        assert "refused" in message and "weights_only" not in message and "\n" not in message, message
        assert message.startswith(str(sparse if call is calls[2] else evil)), message
        assert "makedirs" in message
    assert not marker.exists()


def test_cli_malicious_pickle_and_nan_weights_are_one_line(tmp_path):
    scan = save_nifti(tmp_path / "in" / "scan.nii.gz", ct_volume())
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker)}, evil)
    result = run_cli("--input_path", str(scan), "--output_dir", str(tmp_path / "out"), "--model_path", str(evil))
    line = assert_one_line_error(result, str(evil), "refused")
    assert "weights_only" not in result.stderr and len(result.stderr.strip().splitlines()) < 10, result.stderr
    assert not marker.exists() and "weights_only=False" not in line
    state = tiny_network().state_dict()
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pt")
    result = run_cli("--input_path", str(scan), "--output_dir", str(tmp_path / "out"),
                     "--model_path", str(tmp_path / "nan.pt"))
    assert_one_line_error(result, str(tmp_path / "nan.pt"), "NaN or Inf")
    assert not (tmp_path / "out" / "scan.nii.gz").exists()


# ---------------------------------------------------------------- suspicious images
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "monai"])
def test_inf_voxels_warn_once_and_are_the_window_bounds(tmp_path, tiny_weights, streaming):
    volume = ct_volume(np.float32)
    volume[0, 0, :2] = -np.inf
    volume[5, 5, 3] = np.inf
    scan = save_nifti(tmp_path / "in" / "inf.nii.gz", volume)
    with pytest.warns(UserWarning) as record:
        run_inference(scan, tmp_path / "out", tiny_weights, streaming=streaming)
    inf_warnings = [str(w.message) for w in record if "Inf voxels" in str(w.message)]
    assert inf_warnings == [f"{scan}: 2 -Inf and 1 +Inf voxels; treated as the HU window's lower (-Inf) and upper "
                            "(+Inf) bound. Check how the file was converted"]
    assert case_outputs_complete(tmp_path / "out", "inf")


def test_inf_maps_to_the_window_bounds_in_both_preprocessings():
    from monai.transforms import ScaleIntensityRange

    from scripts.data.preprocessing import window_and_resize

    hu = torch.tensor([[[-np.inf, -79.0, 304.0, np.inf]]])
    assert window_and_resize(hu.numpy(), (-79, 304), (1, 4)).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    scaled = ScaleIntensityRange(a_min=-79, a_max=304, b_min=0.0, b_max=1.0, clip=True)(hu)
    assert torch.as_tensor(scaled).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def _series(folder: Path, modality: str) -> Path:
    write_synthetic_series(folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality = modality
        ds.save_as(path)
    return folder


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "monai"])
def test_mr_series_warns_and_completes(tmp_path, tiny_weights, streaming):
    series = _series(tmp_path / "series_001", "MR")
    with pytest.warns(UserWarning) as record:
        run_inference(series, tmp_path / "out", tiny_weights, streaming=streaming)
    modality = [str(w.message) for w in record if "Modality" in str(w.message)]
    assert modality == [f"{series}: DICOM series has Modality MR, not CT; the networks were trained on CT in "
                        "Hounsfield units, so its labels will be unreliable"]
    assert case_outputs_complete(tmp_path / "out", "series_001")


def test_non_image_series_refused(tmp_path, tiny_weights):
    series = _series(tmp_path / "series_001", "RTSTRUCT")
    message = input_error(lambda: run_inference(series, tmp_path / "out", tiny_weights))
    assert message.startswith(f"{series}: DICOM series has Modality RTSTRUCT, not an image series")


# ---------------------------------------------------------------- non-regular inputs
def test_fifo_input_is_one_line_and_never_hangs(tmp_path, tiny_weights):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    result = run_cli("--input_path", str(fifo), "--output_dir", str(tmp_path / "out"),
                     "--model_path", str(tiny_weights), timeout=240)
    assert_one_line_error(result, str(fifo), "named pipe (FIFO), not a regular file")


def test_devices_and_sockets_are_refused(tmp_path):
    from scripts.data.inputs import list_inference_inputs

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        cases = [(tmp_path / "sock", "a socket")]
        if Path("/dev/zero").exists():
            cases.append((Path("/dev/zero"), "a device"))
        for path, kind in cases:
            with pytest.raises(InputError) as info:
                list_inference_inputs(path)
            assert info.value.message.startswith(f"{path}: --input_path is {kind}, not a regular file")
    finally:
        server.close()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sub").mkdir()
    with pytest.raises(InputError, match="input folder (is empty or )?holds no NIfTI"):
        list_inference_inputs(tmp_path / "empty")


# ---------------------------------------------------------------- damaged case in a folder run
def _noise_nii_gz() -> bytes:
    """A valid .nii.gz (64x64x40 int16 noise, which compresses little, so a cut lands in voxel data); SYNTHETIC."""
    volume = np.random.default_rng(0).integers(-1000, 500, (64, 64, 40), dtype=np.int16)
    return gzip.compress(nib.Nifti1Image(volume, np.eye(4)).to_bytes())


def test_damaged_case_in_folder_named_and_earlier_outputs_intact(tmp_path, tiny_weights):
    """A case damaged inside its compressed data (header and gzip trailer intact): the error names the file; the
    outputs written before - of this case by an earlier run, and of the other cases - stay complete."""
    folder, out = tmp_path / "in", tmp_path / "out"
    save_nifti(folder / "a_good.nii.gz", ct_volume())
    data = _noise_nii_gz()
    (folder / "b_damaged.nii.gz").write_bytes(data)
    save_nifti(folder / "c_later.nii.gz", ct_volume())
    run_inference(folder, out, tiny_weights)
    before = files_of(out)
    (folder / "b_damaged.nii.gz").write_bytes(data[: len(data) // 2] + data[-8:])  # middle lost, trailer kept
    message = input_error(lambda: run_inference(folder, out, tiny_weights))
    assert message.startswith(f"{folder / 'b_damaged.nii.gz'}: cannot be read")
    assert files_of(out) == before
    for case in ("a_good", "b_damaged", "c_later"):
        assert case_outputs_complete(out, case)
