"""Cohort runs of ``kidney-seg`` (issue 15) on SYNTHETIC phantoms: keep going past bad cases, resume after SIGKILL,
two-process torchrun sharding, a folder of DICOM series, ``--pattern``, and the cohort statistics / QC flags.

The network is the tiny WP-UNet with random weights whose output bias is centred on a phantom, so that all three
classes appear in the outputs (a deterministic stand-in for a trained model: the tests compare runs, not accuracy).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLE_ROOT, TINY_OVERRIDES
from dicom_fixtures import write_synthetic_series

from scripts.common.errors import InputError
from scripts.data.inputs import list_inference_inputs
from scripts.evaluation.cohort import (
    CASE_COLUMNS,
    CohortRecorder,
    KIDNEY_ML_RANGE,
    case_statistics,
    merge_cohort,
)
from scripts.outputs.transaction import case_outputs_complete

GOOD_NIFTI = 8
RUN_COLUMNS = ("seconds", "source")  # differ between runs by nature (time, absolute path of the input)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """A folder of 8 phantom NIfTIs, 2 bad files and one DICOM-series subfolder; tiny weights and their overlay."""
    from scripts.networks import WPUNet
    from scripts.synthetic.phantoms import generate_dataset

    root = tmp_path_factory.mktemp("cohort")
    kits = root / "kits"
    generate_dataset(str(kits), num_cases=GOOD_NIFTI, seed=5, in_plane_size=64, slice_thickness_range=(8.0, 8.0))
    folder = root / "cts"
    folder.mkdir()
    for case in sorted(kits.glob("case_*")):
        shutil.copy(case / "imaging.nii.gz", folder / f"ct_{case.name[-2:]}.nii.gz")
    good = (folder / "ct_00.nii.gz").read_bytes()
    (folder / "bad_truncated.nii.gz").write_bytes(good[: len(good) // 2])
    (folder / "bad_random.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    write_synthetic_series(folder / "patient_dicom" / "series")

    torch.manual_seed(0)
    net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)).eval()
    ct = np.asarray(nib.load(folder / "ct_00.nii.gz").dataobj, dtype=np.float32)
    image = torch.from_numpy(np.clip((ct + 79) / 383, 0, 1)).permute(2, 0, 1)[:, None]  # slices along the last axis
    image = torch.nn.functional.interpolate(image, size=(64, 64), mode="area")
    with torch.no_grad():
        logits = net(image)
        net.decoder.head.bias -= logits.mean(dim=(0, 2, 3))  # centred: every class wins somewhere
    weights = root / "tiny.pt"
    torch.save({"model": net.state_dict()}, weights)
    overlay = root / "tiny.json"
    # fp32 as calibrated: on a bf16 CPU `auto` would run bf16, whose rounding moves these centred random logits
    overlay.write_text(json.dumps({f"{k}": v for k, v in TINY_OVERRIDES.items()}
                                  | {"slice_batch_size": 16, "precision": "fp32"}))
    return {"folder": folder, "weights": weights, "overlay": overlay, "root": root}


def kidney_seg(cohort: dict, output: Path, *extra: str, prefix: tuple[str, ...] = (), env: dict | None = None,
               wait: bool = True, timeout: float = 600):
    args = [*prefix] if prefix else [sys.executable]
    args += ["-m", "scripts.cli", "-i", str(cohort["folder"]), "-o", str(output), "-m", str(cohort["weights"]),
             "--config", str(cohort["overlay"]), *extra]
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(args, cwd=BUNDLE_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(args, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(cohort) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted run over the whole folder."""
    out = cohort["root"] / "reference"
    return out, kidney_seg(cohort, out)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def comparable_rows(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in read_csv(path)]


def segmentations(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {p.name: (np.asarray(nib.load(p).dataobj), nib.load(p).affine) for p in sorted(folder.glob("*.nii.gz"))}


def assert_same_outputs(a: Path, b: Path) -> None:
    seg_a, seg_b = segmentations(a), segmentations(b)
    assert sorted(seg_a) == sorted(seg_b)
    for name in seg_a:
        np.testing.assert_array_equal(seg_a[name][0], seg_b[name][0], err_msg=name)
        np.testing.assert_allclose(seg_a[name][1], seg_b[name][1])
    for volumes in sorted(a.glob("*_volumes.json")):
        first, second = json.loads(volumes.read_text()), json.loads((b / volumes.name).read_text())
        assert first == second, volumes.name
    assert comparable_rows(a / "cohort.csv") == comparable_rows(b / "cohort.csv")
    assert [r["case"] for r in read_csv(a / "failures.csv")] == [r["case"] for r in read_csv(b / "failures.csv")]


# ---------------------------------------------------------------------------------------------- the runs
@pytest.mark.slow
def test_keeps_going_past_bad_cases(cohort, reference):
    """9 good outputs (8 NIfTI + the DICOM series), 2 failures listed with file and reason, exit code 1."""
    out, result = reference
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    names = sorted(p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz"))
    assert names == sorted([f"ct_{k:02d}" for k in range(GOOD_NIFTI)] + ["series"])
    assert all(case_outputs_complete(out, name, "nifti", True) for name in names)
    failures = read_csv(out / "failures.csv")
    assert [(f["case"], Path(f["file"]).name) for f in failures] == [
        ("bad_random", "bad_random.nii.gz"), ("bad_truncated", "bad_truncated.nii.gz")]
    assert all(f["error"] and "\n" not in f["error"] for f in failures)
    # one ERROR line per bad case naming the file, and a last line pointing at failures.csv
    error_lines = [line for line in result.stderr.splitlines() if " - ERROR - " in line]
    assert len(error_lines) == 2 and all("bad_" in line for line in error_lines)
    assert result.stderr.strip().splitlines()[-1].startswith("kidney-seg: 2 of 11 cases failed")
    rows = read_csv(out / "cohort.csv")
    assert [r["case"] for r in rows] == names and list(rows[0]) == list(CASE_COLUMNS)
    assert (out / "cohort_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the outputs are not trivially empty: the calibrated random network labels kidney somewhere
    assert sum(float(r["left_kidney_ml"]) + float(r["right_kidney_ml"]) for r in rows) > 0


@pytest.mark.slow
def test_stop_on_error_stops_at_the_first_bad_case(cohort):
    out = cohort["root"] / "stop"
    result = kidney_seg(cohort, out, "--stop-on-error", "--quiet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("kidney-seg: error: ")
    assert "bad_random.nii.gz" in lines[-1]  # the first case in sorted order, checked before any work
    assert not list(out.glob("*.nii.gz"))


@pytest.mark.slow
def test_sigkill_then_resume_redoes_only_unfinished_cases(cohort, reference):
    out = cohort["root"] / "killed"
    process = kidney_seg(cohort, out, "--quiet", wait=False)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*_volumes.json"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*") if p.is_file()}
    done = sorted(p.name.removesuffix("_volumes.json") for p in out.glob("*_volumes.json"))
    assert 3 <= len(done) < 9, "the kill came too late to test resuming"
    # nothing under a final name is half-written: every segmentation there belongs to a complete case or is absent
    for seg in out.glob("*.nii.gz"):
        assert nib.load(seg).get_fdata().shape  # readable in full
    # complete = outputs complete (volumes JSON last) and the cohort row saved after them
    recorder = CohortRecorder(out, "nifti", preview=True, outputs_complete=case_outputs_complete)
    complete_before = [c for c in done if recorder.is_complete(str(cohort["folder"] / f"{c}.nii.gz"))]
    assert len(complete_before) >= 2
    result = kidney_seg(cohort, out)
    assert result.returncode == 1
    resumed = [line for line in result.stderr.splitlines() if "resume:" in line]
    assert resumed and resumed[0].endswith(f"resume: {len(complete_before)} of 11 cases already complete, "
                                           f"{11 - len(complete_before)} to do"), resumed
    for case in complete_before:  # untouched: same modification times as before the rerun
        for name in (f"{case}.nii.gz", f"{case}_volumes.json", f"{case}_preview.png"):
            assert out.joinpath(name).stat().st_mtime_ns == finished[name], name
    redone = [line for line in result.stderr.splitlines() if " - INFO - [" in line and " slices (" in line]
    assert len(redone) == 9 - len(complete_before)
    assert_same_outputs(reference[0], out)


@pytest.mark.slow
def test_torchrun_two_processes_give_the_same_outputs(cohort, reference):
    out = cohort["root"] / "torchrun"
    prefix = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    result = kidney_seg(cohort, out, "--quiet", prefix=prefix)
    assert result.returncode != 0  # the two bad cases fail, in whichever rank took them
    assert_same_outputs(reference[0], out)
    assert len(read_csv(out / "cohort.csv")) == 9
    logs = result.stdout + result.stderr
    assert "cases failed" in logs


@pytest.mark.slow
def test_num_parts_and_merge(cohort, reference):
    """Scheduler-array style: parts run one after the other (no waiting); ``--merge`` gives the same table."""
    out = cohort["root"] / "parts"
    results = [kidney_seg(cohort, out, "--quiet", "--num-parts", "3", "--part-id", str(k)) for k in range(3)]
    assert sorted(r.returncode for r in results) == [0, 1, 1]  # bad_random in part 0, bad_truncated in part 1
    assert_same_outputs(reference[0], out)
    (out / "cohort.csv").unlink()
    merged = subprocess.run([sys.executable, "-m", "scripts.cli", "--merge", "-o", str(out)], cwd=BUNDLE_ROOT,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)})
    assert merged.returncode == 1 and "9 cases, 2 failures" in merged.stdout
    assert comparable_rows(out / "cohort.csv") == comparable_rows(reference[0] / "cohort.csv")


# ---------------------------------------------------------------------------------------------- inputs
def test_folder_of_dicom_series_one_case_per_series(tmp_path):
    """Series found by SeriesInstanceUID in any sub-folder depth; a folder mixing two series is one line."""
    export = tmp_path / "export"
    write_synthetic_series(export / "patient_a" / "study" / "ct")
    write_synthetic_series(export / "patient_b" / "CT_1")
    (export / "README.txt").write_text("not DICOM")
    cases = [Path(item["image"]) for item in list_inference_inputs(export)]
    assert [p.relative_to(export).as_posix() for p in cases] == ["patient_a/study/ct", "patient_b/CT_1"]
    write_synthetic_series(export / "patient_b" / "CT_1_second")
    for path in (export / "patient_b" / "CT_1_second").iterdir():
        shutil.move(str(path), export / "patient_b" / "CT_1" / f"x{path.name}")
    with pytest.raises(InputError, match="CT_1: holds files of 2 DICOM series"):
        list_inference_inputs(export)


def test_pattern_selects_cases(cohort):
    names = [Path(i["image"]).name for i in list_inference_inputs(cohort["folder"], "ct_0[12]*", check=False)]
    assert names == ["ct_01.nii.gz", "ct_02.nii.gz"]
    names = [Path(i["image"]).name for i in list_inference_inputs(cohort["folder"], "patient_*", check=False)]
    assert names == ["series"]
    with pytest.raises(InputError, match="no case matches --pattern 'nothing'"):
        list_inference_inputs(cohort["folder"], "nothing", check=False)
    with pytest.raises(InputError, match="bad_random.nii.gz"):  # checked listing: the old stop-at-once behaviour
        list_inference_inputs(cohort["folder"])


# ---------------------------------------------------------------------------------------------- statistics
def _two_kidneys(shape=(60, 50, 40), spacing=(0.8, 0.8, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """A SYNTHETIC label map: box kidneys left and right of the centre, a tumour on the patient's left one."""
    label = np.zeros(shape, dtype=np.uint8)
    label[5:20, 10:40, 5:35] = 1  # low x: patient's left in RAS (x grows to the right)
    label[40:55, 10:40, 5:35] = 1  # high x: patient's right
    label[8:14, 12:18, 10:16] = 2  # inside the left kidney
    return label, np.diag([*spacing, 1.0])


def test_left_right_volumes_tumours_and_diameter():
    label, affine = _two_kidneys()
    row = case_statistics(label, affine, source="/x/case_00007/imaging.nii.gz")
    voxel_ml = 0.8 * 0.8 * 2.0 / 1000
    assert row["case"] == "case_00007"
    assert row["left_kidney_ml"] == pytest.approx((15 * 30 * 30 - 6 * 6 * 6) * voxel_ml, abs=1e-3)
    assert row["right_kidney_ml"] == pytest.approx(15 * 30 * 30 * voxel_ml, abs=1e-3)
    assert row["tumour_count"] == 1 and row["largest_tumour_ml"] == pytest.approx(216 * voxel_ml, abs=1e-3)
    # corner to corner of the 6x6x6 voxel block, between voxel centres
    assert row["largest_tumour_diameter_mm"] == pytest.approx(np.sqrt(2 * (5 * 0.8) ** 2 + (5 * 2.0) ** 2), abs=0.01)
    assert row["slices"] == 40 and (row["spacing_x_mm"], row["spacing_z_mm"]) == (0.8, 2.0)
    # mirrored in x (an LAS affine): the sides swap with the anatomy, not with the array
    flipped = np.diag([-0.8, 0.8, 2.0, 1.0])
    mirrored = case_statistics(label, flipped)
    assert mirrored["left_kidney_ml"] == row["right_kidney_ml"] and mirrored["right_kidney_ml"] == row["left_kidney_ml"]


def test_qc_flags():
    label, affine = _two_kidneys()
    assert "no_kidney" in case_statistics(np.zeros_like(label), affine)["qc_flags"]
    flags = case_statistics(label, affine)["qc_flags"].split(";")
    # 15x30x30 voxels of 1.28 mm^3 = 17 mL: below the plausible range on both sides
    assert KIDNEY_ML_RANGE[0] > 17 and {"kidney_volume:left", "kidney_volume:right"} <= set(flags)
    away = label.copy()
    away[28:32, 45:48, 36:39] = 2  # tumour touching no kidney voxel
    assert "tumour_outside_kidney" in case_statistics(away, affine)["qc_flags"]
    assert "tumour_outside_kidney" not in case_statistics(label, affine)["qc_flags"]
    assert "spacing" in case_statistics(label, np.diag([0.8, 0.8, 8.0, 1.0]))["qc_flags"]
    assert "spacing" not in case_statistics(label, affine)["qc_flags"]
    pre = label.copy()
    pre[25:35, 0:8, 0:4] = 1  # a third blob of 320 voxels * 1.28 mm^3 = 0.4 mL: below MIN_COMPONENT_ML, not counted
    row = case_statistics(label, affine, pre_lcc_labels=pre, model_affine=affine)
    assert row["components_before_lcc"] == 2 and "components_before_lcc" not in row["qc_flags"]
    pre[25:35, 0:8, 0:20] = 1  # 1600 voxels = 2 mL
    row = case_statistics(label, affine, pre_lcc_labels=pre, model_affine=affine)
    assert row["components_before_lcc"] == 3 and "components_before_lcc" in row["qc_flags"]


def test_mean_hu_from_model_resolution():
    label, affine = _two_kidneys()
    hu = np.where(label == 1, 150.0, np.where(label == 2, 40.0, -1000.0)).astype(np.float16)
    row = case_statistics(label, affine, model_labels=label, model_hu=hu)
    assert (row["kidney_mean_hu"], row["tumour_mean_hu"]) == (150.0, 40.0)


def test_merge_is_atomic_and_sorted(tmp_path):
    folder = tmp_path / "cohort_cases"
    folder.mkdir()
    label, affine = _two_kidneys()
    for name in ("case_b", "case_a"):
        (folder / f"{name}.json").write_text(json.dumps(case_statistics(label, affine, source=f"/d/{name}.nii.gz")))
    (folder / "case_c.failed.json").write_text(json.dumps({"case": "case_c", "file": "/d/c.nii.gz", "error": "x"}))
    assert merge_cohort(tmp_path) == (2, 1)
    assert [r["case"] for r in read_csv(tmp_path / "cohort.csv")] == ["case_a", "case_b"]
    assert read_csv(tmp_path / "failures.csv") == [{"case": "case_c", "file": "/d/c.nii.gz", "error": "x"}]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_file()]  # no temp file left


def test_bounding_box_equals_find_objects():
    from scipy import ndimage

    from scripts.evaluation.cohort import _bbox

    rng = np.random.default_rng(0)
    assert _bbox(np.zeros((5, 6, 7), bool)) is None
    for _ in range(20):
        mask = np.zeros((9, 11, 13), bool)
        lo = rng.integers(0, [9, 11, 13])
        hi = lo + rng.integers(1, 5, size=3)
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = rng.random(tuple(np.minimum(hi, mask.shape) - lo)) > 0.3
        mask[tuple(lo)] = True
        assert _bbox(mask) == ndimage.find_objects(mask.astype(np.uint8))[0]
        labels = mask.astype(np.uint8) * 2  # unsigned labels are read as they are
        assert _bbox(labels) == _bbox(labels.astype(np.int16)) == _bbox(mask)
