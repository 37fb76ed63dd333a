"""Tests for scripts/evaluation: KiTS regions, per-case metrics, reports and the evaluation handler (CPU, fast).

Run from the bundle root: ``python -m pytest tests/test_metrics.py -q``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine

from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from scripts.data.layout import case_name
from scripts.evaluation.case_metrics import KiTSCaseMetrics, spacing_from_meta
from scripts.evaluation.handler import KiTSMetricsHandler
from scripts.evaluation.regions import LabelToRegionsd, labels_to_regions, region_definitions
from scripts.evaluation.report import summarise_metrics, write_metrics_csv

KITS23_MASKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kits23_masks"

# ------------------------------------------------------------------------------------------------------------------
# regions


def test_region_definitions():
    assert region_definitions(keep_cyst=False) == {"kidney": (1, 2), "tumour": (2,)}
    assert region_definitions(keep_cyst=True) == {"kidney_and_masses": (1, 2, 3), "masses": (2, 3), "tumour": (2,)}
    # a fresh dict every call, so a caller's edit cannot leak into the defaults
    region_definitions(False)["kidney"] = (9,)
    assert region_definitions(False)["kidney"] == (1, 2)


LABEL_ROW = torch.tensor([0, 1, 2, 3, 1, 0])  # background, kidney, tumour, cyst, kidney, background
REGION_CASES = [
    # keep_cyst, expected channels for LABEL_ROW, region order
    (False, [[0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0]], ["kidney", "tumour"]),
    (
        True,
        [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]],  # the cyst counts in the first two only
        ["kidney_and_masses", "masses", "tumour"],
    ),
]


@pytest.mark.parametrize("keep_cyst, expected, names", REGION_CASES)
def test_labels_to_regions_item_and_batch(keep_cyst, expected, names):
    regions = region_definitions(keep_cyst)
    assert list(regions) == names
    item = LABEL_ROW.reshape(1, 6, 1)  # (1, H, W)
    out = labels_to_regions(item, regions)
    assert out.shape == (len(names), 6, 1) and out.dtype == torch.bool
    assert out[..., 0].int().tolist() == expected

    batch = torch.stack([item, torch.zeros_like(item)])  # (B=2, 1, H, W)
    out_b = labels_to_regions(batch, regions, channel_dim=1, dtype=torch.float32)
    assert out_b.shape == (2, len(names), 6, 1) and out_b.dtype == torch.float32
    assert out_b[0, ..., 0].int().tolist() == expected
    assert out_b[1].sum() == 0


def test_labels_to_regions_float_numpy_and_errors():
    # float label maps (as LoadImage gives) are rounded, numpy input is accepted
    out = labels_to_regions(np.array([[0.0, 2.0000001, 0.9999]]), region_definitions(True))
    assert out.int().tolist() == [[0, 1, 1], [0, 1, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="channel axis of size 1"):
        labels_to_regions(torch.zeros(2, 4, 4), region_definitions(False))
    with pytest.raises(ValueError, match="at least one region"):
        labels_to_regions(torch.zeros(1, 4, 4), {})


def test_label_to_regionsd_keeps_meta_and_other_keys():
    affine = torch.diag(torch.tensor([0.7, 0.8, 5.0, 1.0], dtype=torch.float64))
    seg = MetaTensor(LABEL_ROW.reshape(1, 6, 1, 1), affine=affine, meta={"filename_or_obj": "seg.nii.gz"})
    image = torch.randn(1, 6, 1, 1)
    out = LabelToRegionsd(keys="label", keep_cyst=True)({"label": seg, "image": image})
    assert out["image"] is image
    assert out["label"].shape == (3, 6, 1, 1)
    assert out["label"][1, :, 0, 0].int().tolist() == [0, 0, 1, 1, 0, 0]
    assert isinstance(out["label"], MetaTensor)
    assert torch.allclose(out["label"].affine, affine)
    assert out["label"].meta["filename_or_obj"] == "seg.nii.gz"


# ------------------------------------------------------------------------------------------------------------------
# per-case metrics on hand-made arrays


def _cube(shape, start, size, value=1):
    a = np.zeros(shape, dtype=np.uint8)
    a[tuple(slice(s, s + size) for s in start)] = value
    return a


def test_dice_and_volume_hand_computed():
    spacing = (0.5, 0.8, 2.5)
    pred = np.zeros((5, 5, 5), dtype=np.uint8)
    label = np.zeros_like(pred)
    pred[1, 1, 1:4] = 1  # voxels z = 1, 2, 3
    label[1, 1, 2:5] = 1  # voxels z = 2, 3, 4: overlap 2 of 3 + 3
    row = KiTSCaseMetrics(keep_cyst=False)(pred, label, spacing=spacing)
    assert row["kidney_dice"] == pytest.approx(2 * 2 / (3 + 3))
    assert row["kidney_pred_ml"] == pytest.approx(3 * 0.5 * 0.8 * 2.5 / 1000)
    assert row["kidney_true_ml"] == pytest.approx(3 * 0.5 * 0.8 * 2.5 / 1000)
    assert row["kidney_status"] == "ok"
    # tumour absent on both sides
    assert (row["tumour_dice"], row["tumour_nsd"], row["tumour_hd95_mm"]) == (1.0, 1.0, 0.0)


def test_tumour_counts_inside_kidney_region():
    spacing = (1.0, 1.0, 1.0)
    label = _cube((8, 8, 8), (1, 1, 1), 4)  # 64 kidney voxels
    label[2:4, 2:4, 2:4] = 2  # 8 of them tumour
    pred = label.copy()
    pred[pred == 2] = 1  # tumour predicted as kidney: the kidney HEC is still perfect
    row = KiTSCaseMetrics(keep_cyst=False)(pred, label, spacing=spacing)
    assert row["kidney_dice"] == 1.0 and row["kidney_true_ml"] == pytest.approx(64 / 1000)
    assert row["tumour_dice"] == 0.0 and row["tumour_true_ml"] == pytest.approx(8 / 1000)
    assert row["tumour_status"] == "pred_empty"


HD_CASES = [
    # shift axis, voxels; spacing is anisotropic so a wrong axis order gives a wrong distance
    (0, 1),
    (1, 2),
    (2, 1),
    (2, 3),
]


@pytest.mark.parametrize("axis, k", HD_CASES)
def test_hd95_of_shifted_cubes_is_shift_times_spacing(axis, k):
    spacing = (0.8, 1.5, 5.0)
    start = [3, 3, 3]
    label = _cube((16, 16, 16), start, 6)
    start[axis] += k
    pred = _cube((16, 16, 16), start, 6)
    row = KiTSCaseMetrics(keep_cyst=False)(pred, label, spacing=spacing)
    # every voxel of the far face is exactly k * spacing[axis] from the other cube, and that face is ~1/6 of the
    # surface (> 5 %), so the 95th percentile is that distance
    assert row["kidney_hd95_mm"] == pytest.approx(k * spacing[axis], rel=1e-5)
    assert 0.0 < row["kidney_dice"] < 1.0


@pytest.mark.parametrize("use_subvoxels", [True, False])
def test_surface_dice_tolerance_in_mm(use_subvoxels):
    spacing = (0.8, 0.8, 5.0)
    label = _cube((14, 14, 14), (4, 4, 4), 6)
    metric = KiTSCaseMetrics(keep_cyst=False, tolerance_mm=2.0, use_subvoxels=use_subvoxels)
    assert metric(label, label, spacing=spacing)["kidney_nsd"] == pytest.approx(1.0)
    # one voxel in-plane = 0.8 mm <= 2 mm: every surface element within tolerance
    in_plane = _cube((14, 14, 14), (5, 4, 4), 6)
    assert metric(in_plane, label, spacing=spacing)["kidney_nsd"] == pytest.approx(1.0)
    # one voxel along the 5 mm axis > 2 mm: the displaced faces fail
    through_plane = _cube((14, 14, 14), (4, 4, 5), 6)
    nsd = metric(through_plane, label, spacing=spacing)["kidney_nsd"]
    assert 0.0 < nsd < 1.0
    # a per-region tolerance above 5 mm accepts the same shift
    loose = KiTSCaseMetrics(keep_cyst=False, tolerance_mm={"kidney": 5.5, "tumour": 2.0}, use_subvoxels=use_subvoxels)
    assert loose(through_plane, label, spacing=spacing)["kidney_nsd"] == pytest.approx(1.0)


EDGE_CASES = [
    # pred tumour present, label tumour present, expected (dice, nsd, status); hd95 checked separately
    (False, False, (1.0, 1.0, "both_empty")),
    (False, True, (0.0, 0.0, "pred_empty")),
    (True, False, (0.0, 0.0, "true_empty")),
]


@pytest.mark.parametrize("pred_has, label_has, expected", EDGE_CASES)
def test_empty_region_edge_cases(pred_has, label_has, expected):
    label = _cube((10, 10, 10), (2, 2, 2), 5)
    pred = label.copy()
    if label_has:
        label[3:5, 3:5, 3:5] = 2
    if pred_has:
        pred[4:6, 4:6, 4:6] = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = KiTSCaseMetrics(keep_cyst=False)(pred, label, spacing=(1.0, 1.0, 1.0))
    dice, nsd, status = expected
    assert (row["tumour_dice"], row["tumour_nsd"], row["tumour_status"]) == (dice, nsd, status)
    if status == "both_empty":
        assert row["tumour_hd95_mm"] == 0.0
    else:
        assert math.isnan(row["tumour_hd95_mm"])
    assert row["kidney_status"] == "ok" and row["kidney_dice"] == 1.0
    # empty regions never reach MONAI, so there are no "all 0 ... nan/inf distance" warnings
    assert not [w for w in caught if "all 0" in str(w.message)]


def test_all_empty_case():
    zeros = np.zeros((6, 6, 6), dtype=np.uint8)
    row = KiTSCaseMetrics(keep_cyst=True)(zeros, zeros, spacing=(1.0, 1.0, 1.0))
    for region in ("kidney_and_masses", "masses", "tumour"):
        assert row[f"{region}_dice"] == 1.0 and row[f"{region}_nsd"] == 1.0 and row[f"{region}_hd95_mm"] == 0.0
        assert row[f"{region}_pred_ml"] == 0.0 and row[f"{region}_status"] == "both_empty"


def test_internal_crop_matches_monai_on_full_volume():
    """Masks touching the volume border: cropping first must not change HD95 or surface Dice."""
    spacing = [0.7, 0.9, 3.0]
    rng = np.random.default_rng(0)
    label = np.zeros((20, 18, 12), dtype=np.uint8)
    label[0:9, 3:15, 0:7] = 1  # touches three image faces
    pred = label.copy()
    pred[rng.random(pred.shape) < 0.03] = 1
    pred[7:12, 4:9, 5:9] = 1
    row = KiTSCaseMetrics(keep_cyst=False, tolerance_mm=1.5)(pred, label, spacing=spacing)
    p = torch.from_numpy(pred > 0)[None, None]
    t = torch.from_numpy(label > 0)[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing).item()
        nsd = compute_surface_dice(p, t, [1.5], include_background=True, spacing=spacing, use_subvoxels=True).item()
    assert row["kidney_hd95_mm"] == pytest.approx(hd, rel=1e-6)
    assert row["kidney_nsd"] == pytest.approx(nsd, rel=1e-6)
    assert 0.0 < row["kidney_nsd"] < 1.0


def test_spacing_from_metatensor_affine():
    # KiTS-like affine: array axes (slices, rows, cols) with permuted, negative directions
    affine = torch.tensor(
        [[0.0, 0.0, -0.8, 0.0], [0.0, -0.8, 0.0, 0.0], [-5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    label_np = _cube((12, 12, 12), (3, 3, 3), 5)
    pred_np = _cube((12, 12, 12), (4, 3, 3), 5)  # shifted one slice (5 mm)
    label = MetaTensor(torch.from_numpy(label_np)[None], affine=affine)
    pred = MetaTensor(torch.from_numpy(pred_np)[None], affine=affine)
    assert spacing_from_meta(label) == pytest.approx((5.0, 0.8, 0.8))
    assert spacing_from_meta(torch.zeros(1)) is None
    metric = KiTSCaseMetrics(keep_cyst=False)
    from_meta = metric(pred, label)
    explicit = metric(pred_np, label_np, spacing=(5.0, 0.8, 0.8))
    assert from_meta == explicit
    assert from_meta["kidney_hd95_mm"] == pytest.approx(5.0)
    assert from_meta["kidney_true_ml"] == pytest.approx(125 * 5.0 * 0.8 * 0.8 / 1000)


def test_case_metrics_argument_errors():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="spacing is required"):
        KiTSCaseMetrics()(a, a)
    with pytest.raises(ValueError, match="shapes differ"):
        KiTSCaseMetrics()(a, np.zeros((4, 4, 5), dtype=np.uint8), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="matching the 3-D"):
        KiTSCaseMetrics()(a[None, None], a[None, None], spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="missing"):
        KiTSCaseMetrics(keep_cyst=True, tolerance_mm={"tumour": 1.0})
    with pytest.raises(ValueError, match="finite"):
        KiTSCaseMetrics(tolerance_mm=-1.0)
    # a channel-first (1, H, W, D) map is accepted, and int spacing is fine (MONAI would reject mixed int/float)
    row = KiTSCaseMetrics()(a[None], a[None], spacing=(1, 1, 2.5))
    assert row["kidney_status"] == "both_empty"


def test_label_outside_regions_warns(caplog):
    label = _cube((6, 6, 6), (1, 1, 1), 3, value=3)  # a cyst, but KiTS19 regions
    with caplog.at_level(logging.WARNING, logger="scripts.evaluation.case_metrics"):
        row = KiTSCaseMetrics(keep_cyst=False)(label, label, spacing=(1.0, 1.0, 1.0))
    assert "outside every region" in caplog.text
    assert row["kidney_status"] == "both_empty"


# ------------------------------------------------------------------------------------------------------------------
# reports

ROWS = [
    {"case": "case_00001", "tumour_dice": 0.5, "tumour_hd95_mm": 1.0, "tumour_status": "ok"},
    {"case": "case_00002", "tumour_dice": 0.0, "tumour_hd95_mm": float("nan"), "tumour_status": "pred_empty"},
    {"case": "case_00003", "tumour_dice": 1.0, "tumour_hd95_mm": 3.0, "tumour_status": "ok"},
]


def test_summarise_ignores_nan():
    s = summarise_metrics(ROWS)
    assert s["n_cases"] == 3
    expected_dice = {"mean": 0.5, "std": pytest.approx(np.std([0.5, 0, 1])), "median": 0.5, "n": 3}
    assert s["metrics"]["tumour_dice"] == expected_dice
    assert s["metrics"]["tumour_hd95_mm"]["mean"] == 2.0 and s["metrics"]["tumour_hd95_mm"]["n"] == 2
    assert s["status_counts"] == {"tumour_status": {"ok": 2, "pred_empty": 1}}
    assert "case" not in s["metrics"] and "tumour_status" not in s["metrics"]
    all_nan = summarise_metrics([{"case": "a", "x": float("nan")}])
    assert all_nan["metrics"]["x"]["n"] == 0 and math.isnan(all_nan["metrics"]["x"]["mean"])


def test_write_metrics_csv(tmp_path):
    csv_path, summary_path = tmp_path / "per_case.csv", tmp_path / "summary.csv"
    csv_path.write_text("stale\n")  # replaced, not appended to
    write_metrics_csv(ROWS, csv_path, summary_path)
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["case", "tumour_dice", "tumour_hd95_mm", "tumour_status"]
    assert [r[0] for r in table[1:]] == ["case_00001", "case_00002", "case_00003"]
    assert table[2][2] == "nan" and float(table[1][1]) == 0.5
    with open(summary_path, newline="") as f:
        summary = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(summary["tumour_hd95_mm"]["mean"]) == pytest.approx(2.0)
    assert int(summary["tumour_hd95_mm"]["n"]) == 2
    assert float(summary["tumour_dice"]["median"]) == pytest.approx(0.5)
    js = json.loads(summary_path.with_suffix(".json").read_text())
    assert js["metrics"]["tumour_hd95_mm"]["n"] == 2 and js["status_counts"]["tumour_status"]["pred_empty"] == 1
    nan_only = tmp_path / "nan.csv"
    write_metrics_csv([{"case": "a", "x": float("nan")}], tmp_path / "a.csv", nan_only)
    assert json.loads(nan_only.with_suffix(".json").read_text())["metrics"]["x"]["mean"] is None  # strict JSON
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.csv",
        "nan.csv",
        "nan.json",
        "per_case.csv",
        "summary.csv",
        "summary.json",
    ]
    with pytest.raises(ValueError, match="no 'case'"):
        write_metrics_csv([{"x": 1.0}], tmp_path / "b.csv", tmp_path / "c.csv")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/x/case_00012/imaging.nii.gz", "case_00012"),
        ("/data/kits/case_00210/segmentation.nii.gz", "case_00210"),
        ("/data/img_7.nii.gz", "img_7"),
        ("/data/case_00021_segmentation.nii.gz", "case_00021_segmentation"),
        ("scan.nii", "scan"),
    ],
)
def test_case_name(path, expected):
    assert case_name(path) == expected


# ------------------------------------------------------------------------------------------------------------------
# handler

SPACING = (0.8, 0.8, 2.5)
AFFINE = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))


def _phantom_label():
    label = _cube((16, 16, 8), (3, 3, 1), 6)  # 216 kidney voxels
    label[4:7, 4:7, 2:5] = 2  # 27 tumour voxels inside it
    return label


class OneHotNet(torch.nn.Module):
    """Returns the one-hot of the (rounded) input label map: the prediction is whatever the 'image' holds."""

    def forward(self, x):
        return F.one_hot(x[:, 0].round().long(), 3).permute(0, 4, 1, 2, 3).float()


def test_handler_with_supervised_evaluator(tmp_path, caplog):
    label = _phantom_label()
    no_tumour = label.copy()
    no_tumour[no_tumour == 2] = 1  # case 2: tumour predicted as kidney
    data = []
    for i, predicted in ((1, label), (2, no_tumour)):
        meta = {"filename_or_obj": f"/x/case_0000{i}/imaging.nii.gz"}
        data.append(
            {
                "image": MetaTensor(torch.from_numpy(predicted).float()[None], affine=AFFINE, meta=dict(meta)),
                "label": MetaTensor(torch.from_numpy(label).float()[None], affine=AFFINE, meta=dict(meta)),
            }
        )
    handler = KiTSMetricsHandler(output_dir=tmp_path / "metrics", keep_cyst=False, argmax=True)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2, num_workers=0),
        network=OneHotNet(),
        inferer=SimpleInferer(),
        val_handlers=[handler],
    )
    with caplog.at_level(logging.INFO, logger="scripts.evaluation.handler"):
        evaluator.run()

    out = tmp_path / "metrics"
    with open(out / "metrics_per_case.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["case_00001", "case_00002"]
    voxel_ml = np.prod(SPACING) / 1000
    for case in rows.values():
        assert float(case["kidney_dice"]) == pytest.approx(1.0)
        assert float(case["kidney_true_ml"]) == pytest.approx(216 * voxel_ml, rel=1e-5)  # spacing from the affine
    assert float(rows["case_00001"]["tumour_dice"]) == pytest.approx(1.0)
    assert float(rows["case_00001"]["tumour_hd95_mm"]) == 0.0
    assert float(rows["case_00001"]["tumour_pred_ml"]) == pytest.approx(27 * voxel_ml, rel=1e-5)
    assert rows["case_00002"]["tumour_status"] == "pred_empty"
    assert float(rows["case_00002"]["tumour_dice"]) == 0.0 and rows["case_00002"]["tumour_hd95_mm"] == "nan"

    with open(out / "metrics_summary.csv", newline="") as f:
        summary = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(summary["tumour_dice"]["mean"]) == pytest.approx(0.5)
    assert int(summary["tumour_hd95_mm"]["n"]) == 1
    js = json.loads((out / "metrics_summary.json").read_text())
    assert js["n_cases"] == 2 and js["status_counts"]["tumour_status"] == {"ok": 1, "pred_empty": 1}
    assert handler.summary["metrics"]["kidney_dice"]["mean"] == pytest.approx(1.0)
    assert "KiTS metrics, 2 case(s)" in caplog.text and "tumour" in caplog.text


def test_handler_on_bare_engine_with_label_map_predictions(tmp_path):
    """A plain ignite Engine whose output is already decollated: label-map predictions, no image metadata."""
    label = _phantom_label()
    shifted = np.roll(label, 1, axis=0)  # one voxel along axis 0 (0.8 mm)

    def step(engine, batch):
        return [
            {"pred": torch.from_numpy(p)[None], "label": MetaTensor(torch.from_numpy(label)[None], affine=AFFINE)}
            for p in batch
        ]

    engine = Engine(step)
    handler = KiTSMetricsHandler(output_dir=tmp_path, keep_cyst=False)
    handler.attach(engine)
    engine.run([[label, shifted]], max_epochs=1)
    assert [r["case"] for r in handler.rows] == ["item_00000", "item_00001"]
    assert handler.rows[0]["kidney_dice"] == 1.0
    assert handler.rows[1]["kidney_hd95_mm"] == pytest.approx(0.8, rel=1e-5)
    assert (tmp_path / "metrics_per_case.csv").exists() and (tmp_path / "metrics_summary.json").exists()

    # scores without argmax=True are refused rather than misread
    scores = Engine(lambda e, b: [{"pred": torch.rand(3, 16, 16, 8), "label": torch.from_numpy(label)[None]}])
    KiTSMetricsHandler(output_dir=tmp_path / "x").attach(scores)
    with pytest.raises(ValueError, match="argmax=True"):
        scores.run([0], max_epochs=1)


# ------------------------------------------------------------------------------------------------------------------
# real KiTS23 masks (read from ../shared/data, never copied into the repo)

# the two smallest files; case_00110 also has a cyst, so masses != tumour there
REAL_CASES = ["case_00061", "case_00110"]


def _load_kits_mask(case):
    nib = pytest.importorskip("nibabel")
    path = KITS23_MASKS / f"{case}_segmentation.nii.gz"
    if not path.exists():
        pytest.skip(f"real KiTS23 masks not available at {KITS23_MASKS} (shared data folder absent)")
    img = nib.load(str(path))
    return np.asarray(img.dataobj).astype(np.uint8), img.affine, tuple(float(z) for z in img.header.get_zooms())


@pytest.mark.parametrize("case", REAL_CASES)
def test_real_kits23_mask(case):
    """
    Real anatomy, slices-first (IPL) arrays with 5 mm slices. KiTSCaseMetrics crops to the foreground bounding box
    plus a 1-voxel margin before calling MONAI (test_internal_crop_matches_monai_on_full_volume shows this does not
    change the numbers), so the full 512 x 512 volume is passed as is.
    """
    seg, affine, zooms = _load_kits_mask(case)
    assert zooms[0] == pytest.approx(5.0) and seg.shape[1:] == (512, 512)
    label = MetaTensor(torch.from_numpy(seg)[None], affine=torch.as_tensor(affine))
    assert spacing_from_meta(label) == pytest.approx(zooms, rel=1e-5)  # the affine agrees with the header
    metric = KiTSCaseMetrics(keep_cyst=True, tolerance_mm=2.0)

    same = metric(label, label)
    for region in metric.regions:
        assert same[f"{region}_status"] == "ok"
        assert same[f"{region}_dice"] == 1.0 and same[f"{region}_hd95_mm"] == 0.0 and same[f"{region}_nsd"] == 1.0
        assert same[f"{region}_pred_ml"] == same[f"{region}_true_ml"] > 0
    voxel_ml = np.prod(zooms) / 1000
    assert same["kidney_and_masses_true_ml"] == pytest.approx(np.count_nonzero(seg) * voxel_ml, rel=1e-5)
    assert same["tumour_true_ml"] == pytest.approx(np.count_nonzero(seg == 2) * voxel_ml, rel=1e-5)

    # erode the kidney (with its masses) by one voxel in-plane only: axes 1, 2 here, since slices come first
    from scipy.ndimage import binary_erosion

    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    foreground = seg > 0
    eroded = seg.copy()
    eroded[foreground & ~binary_erosion(foreground, structure=in_plane)] = 0
    row = metric(eroded, seg, spacing=zooms)
    in_plane_mm = zooms[1]
    assert 0.8 < row["kidney_and_masses_dice"] < 1.0
    assert 0.5 * in_plane_mm <= row["kidney_and_masses_hd95_mm"] <= math.sqrt(2) * in_plane_mm + 1e-4
    assert 0.99 < row["kidney_and_masses_nsd"] < 1.0  # nearly all within 2 mm; slices that vanish are 5 mm off
    assert row["kidney_and_masses_pred_ml"] < row["kidney_and_masses_true_ml"]
