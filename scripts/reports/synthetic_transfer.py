"""Issue 18: do weights trained on SYNTHETIC phantoms find kidneys elsewhere? Writes a section of docs/results.md.

Three evaluations of one weights file, none of them made by the training generator's recipe for the training set:

1. the project's own held-out phantoms (procedural, a seed training never used) - SYNTHETIC;
2. the independent check set (:mod:`scripts.synthetic.checkset`): held-out KiTS23 masks in a differently built
   body with another intensity/noise recipe - SEMI-SYNTHETIC;
3. the real CT ``example_ct_sm`` (and the whole ``example_ct``): kidney **agreement** (Dice of kidney + tumour
   against TotalSegmentator's kidneys, labels 2 and 3, a model's output, not a ground truth) and the mL predicted
   outside the kidneys' axial range; also with the crop padded to wider fields of view (405 and 450 mm).

Every step is the bundle's own command line (``inferring``, ``evaluating``), run as a child process.

    python -m scripts.reports.synthetic_transfer --weights models/model.pt --phantoms demo_output/data/test
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ..common.atomic import replace_marked_block
from ..synthetic.checkset import generate_check_dataset
from ..synthetic.kits_shapes import list_kits_masks, split_kits_masks
from .workflow import BUNDLE_ROOT, bundle_command, run_step

SHARED = BUNDLE_ROOT.parent / "shared" / "data"
REAL_DIR = SHARED / "totalseg_example"
#: TotalSegmentator labels of the right and left kidney in example_seg.nii.gz (shared/data/README.md).
TS_KIDNEYS = (2, 3)
START, END = "<!-- synthetic-transfer:start -->", "<!-- synthetic-transfer:end -->"


def _predict(image: Path, out_dir: Path, weights: Path, overlays: list[str], log: Path) -> tuple[np.ndarray, np.ndarray]:
    """Run ``inferring`` on one CT; returns (label array, affine) of its segmentation, on the input grid."""
    run_step(bundle_command("inferring", ["configs/inference.json", *overlays], input_path=str(image),
                            output_dir=str(out_dir), model_path=str(weights)), log)
    stem = image.name.removesuffix(".nii.gz")
    seg = next(p for p in sorted(out_dir.glob(f"{stem}*.nii.gz")) if "preview" not in p.name)
    img = nib.load(seg)
    return np.asarray(img.dataobj).astype(np.uint8), img.affine


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / denom if denom else float("nan")


def real_ct_numbers(pred_sm: np.ndarray, pred_full: np.ndarray, seg: np.ndarray, voxel_ml: float) -> dict:
    """Agreement with TotalSegmentator's kidneys and mL predicted outside the kidneys' axial range.

    ``example_ct_sm`` is slices 82..111 of ``example_ct`` (same origin in its header); the kidneys of ``seg`` reach
    its slice 0, so on the whole CT only their top is known: slices above it are outside, and so is everything
    more than 13 cm (the longest normal kidney) below it.
    """
    ts = np.isin(seg, TS_KIDNEYS)
    rows = np.flatnonzero(ts.any(axis=(0, 1)))
    top = int(rows[-1])
    off = pred_full.shape[2] - seg.shape[2]
    low_full = off + top - int(round(130 / 3.0))
    fg_sm, fg_full = pred_sm > 0, pred_full > 0
    return {
        "dice_sm": _dice(fg_sm, ts),
        "dice_full_on_sm": _dice(fg_full[:, :, off:], ts),
        "pred_ml_sm": float(fg_sm.sum() * voxel_ml),
        "ts_ml": float(ts.sum() * voxel_ml),
        "outside_ml_sm": float(fg_sm[:, :, top + 1:].sum() * voxel_ml),
        "above_ml_full": float(fg_full[:, :, off + top + 1:].sum() * voxel_ml),
        "below_ml_full": float(fg_full[:, :, :max(low_full, 0)].sum() * voxel_ml),
        "tumour_ml_sm": float((pred_sm == 2).sum() * voxel_ml),
        "kidney_rows": (int(rows[0]), top),
        "low_full": low_full,
    }


def pad_in_plane(ct: np.ndarray, affine: np.ndarray, side: int, value: float = -1024.0):
    """``ct`` padded with air, centred, to ``side`` x ``side`` in-plane: the same anatomy in a wider field of view.
    Returns (array, affine, (x0, y0)); the affine keeps every original voxel at its world position, at ``[x0, y0]``."""
    x0, y0 = (side - ct.shape[0]) // 2, (side - ct.shape[1]) // 2
    if x0 < 0 or y0 < 0:
        raise ValueError(f"side {side} is smaller than the slice {ct.shape[:2]}")
    out = np.full((side, side, ct.shape[2]), value, dtype=ct.dtype)
    out[x0:x0 + ct.shape[0], y0:y0 + ct.shape[1]] = ct
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, 3] - affine[:3, :3] @ np.array([x0, y0, 0])
    return out, shifted, (x0, y0)


def field_of_view_agreement(weights: Path, out_dir: Path, overlays: list[str], fields_mm: tuple[float, ...]) -> dict:
    """Agreement on ``example_ct_sm`` shown in wider fields of view (padded with air to ``fields_mm`` square): the
    slice resize does not normalise pixel spacing, so this measures how much the answer depends on the kidneys'
    size in pixels (clinical fields of view are about 300-500 mm). {field of view mm: (Dice, mL found)}."""
    img = nib.load(REAL_DIR / "example_ct_sm.nii.gz")
    ct = np.asarray(img.dataobj)
    ts = np.isin(np.asarray(nib.load(REAL_DIR / "example_seg.nii.gz").dataobj), TS_KIDNEYS)
    spacing = float(np.linalg.norm(img.affine[:3, 0]))
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    results = {}
    for field in fields_mm:
        side = int(round(field / spacing))
        padded, affine, (x0, y0) = pad_in_plane(ct, img.affine, side)
        case = out_dir / f"fov_{int(field)}"
        case.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(padded, affine), case / "example_ct_sm_fov.nii.gz")
        pred, _ = _predict(case / "example_ct_sm_fov.nii.gz", case / "out", weights, overlays, case / "log.txt")
        fg = pred[x0:x0 + ct.shape[0], y0:y0 + ct.shape[1]] > 0
        results[float(field)] = (_dice(fg, ts), float((pred > 0).sum() * voxel_ml))
    return results


def _evaluate(dataset: Path, out_dir: Path, weights: Path, overlays: list[str], log: Path) -> dict:
    """``evaluating`` with ``evaluate_all_cases`` on a KiTS-layout folder; returns the metrics summary."""
    run_step(bundle_command("evaluating", ["configs/train.json", *overlays, "configs/evaluate.json"],
                            dataset_dir=str(dataset), evaluate_all_cases=True, output_dir=str(out_dir),
                            ckpt_dir=str(weights.parent), model_name=weights.stem, num_workers=0), log)
    return json.loads((out_dir / "metrics_summary.json").read_text())["metrics"]


def _contours(ax, img2d, masks, title: str) -> None:
    ax.imshow(np.clip(img2d.T, -160, 240), cmap="gray", origin="lower")
    for mask, colour in masks:
        if mask.any():
            ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=1.0, origin="lower")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def real_ct_figure(ct_sm, pred_sm, seg, ct_full, pred_full, path: Path) -> None:
    """Axial slices of example_ct_sm and a coronal view of example_ct: TotalSegmentator (green), prediction (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = np.isin(seg, TS_KIDNEYS)
    fig, axes = plt.subplots(1, 4, figsize=(14, 4))
    for ax, k in zip(axes[:3], (4, 12, 20)):
        _contours(ax, ct_sm[:, :, k], [(ts[:, :, k], "lime"), (pred_sm[:, :, k] > 0, "red")], f"example_ct_sm slice {k}")
    y = int(np.argwhere(ts)[:, 1].mean())
    off = ct_full.shape[2] - seg.shape[2]
    ts_full = np.zeros(ct_full.shape, bool)
    ts_full[:, :, off:] = ts
    _contours(axes[3], ct_full[:, y, :], [(ts_full[:, y, :], "lime"), (pred_full[:, y, :] > 0, "red")],
              f"example_ct coronal y={y} (whole scan)")
    axes[3].set_aspect(1.0)
    fig.suptitle("Real CT: TotalSegmentator kidneys (green, a model's output) vs demo weights (red); "
                 "weights trained on SYNTHETIC phantoms only", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _metric(m: dict, name: str) -> str:
    return f"{m[name]['mean']:.3f} +- {m[name]['std']:.3f} ({m[name]['n']})" if m.get(name, {}).get("n") else "-"


def write_section(results_md: Path, text: str) -> None:
    """Replace (or append) the marked section of docs/results.md, atomically."""
    replace_marked_block(results_md, START, END, text.rstrip())


def section_text(n: dict, figure: str) -> str:
    """The generated part of the docs section: the three tables (labelled SYNTHETIC / SEMI-SYNTHETIC / real)."""
    lines = [f"Weights: `{n['weights']}` {n['label']}".rstrip(), "",
             "| set | what it is | kidney Dice | tumour Dice |", "|---|---|---|---|"]
    ph = n["phantoms"]
    lines.append(f"| own held-out phantoms | SYNTHETIC, procedural, seed never trained on | {_metric(ph, 'kidney_dice')} "
                 f"| {_metric(ph, 'tumour_dice')} |")
    if "checkset" in n:
        ck = n["checkset"]
        lines.append(f"| independent check set, seed {n.get('check_seeds', [18])[0]} | SEMI-SYNTHETIC: held-out KiTS23 "
                     f"masks {', '.join(n['check_cases'])} in a second body/noise recipe | {_metric(ck, 'kidney_dice')} "
                     f"| {_metric(ck, 'tumour_dice')} |")
        for seed, extra in zip(n.get("check_seeds", [])[1:], n.get("checkset_more", [])):
            lines.append(f"| same check set, seed {seed} | SEMI-SYNTHETIC: the same masks, other bodies, intensities "
                         f"and noise | {_metric(extra, 'kidney_dice')} | {_metric(extra, 'tumour_dice')} |")
    if "real" in n:
        r = n["real"]
        lines += ["", "Real CT (TotalSegmentator example, 3 mm, unenhanced): **agreement** with TotalSegmentator's kidneys "
                  "(labels 2+3, a model's output), prediction = kidney + tumour:", "",
                  "| measure | value |", "|---|---|",
                  f"| Dice vs TotalSegmentator kidneys, `example_ct_sm` | **{r['dice_sm']:.3f}** |",
                  f"| same, from the whole `example_ct` (slices 82-111) | {r['dice_full_on_sm']:.3f} |",
                  f"| predicted / TotalSegmentator kidney volume in `example_ct_sm` | {r['pred_ml_sm']:.1f} / {r['ts_ml']:.1f} mL |",
                  f"| of it labelled tumour | {r['tumour_ml_sm']:.1f} mL |",
                  f"| mL predicted outside the kidneys' axial range, `example_ct_sm` (slices {r['kidney_rows'][1] + 1}-29) "
                  f"| {r['outside_ml_sm']:.1f} mL |",
                  f"| mL predicted above the kidneys, whole `example_ct` | {r['above_ml_full']:.1f} mL |",
                  f"| mL predicted > 13 cm below the kidneys' top, whole `example_ct` (slices < {r['low_full']}) "
                  f"| {r['below_ml_full']:.1f} mL |",
                  ]
        for field, (dice, found) in sorted(r.get("fields_of_view", {}).items(), key=lambda kv: float(kv[0])):
            lines.append(f"| Dice, `example_ct_sm` padded with air to a {float(field):.0f} mm field of view (mL found) "
                         f"| {dice:.3f} ({found:.1f} mL) |")
        lines += ["", f"![real CT: TotalSegmentator kidneys green, prediction red]({Path(figure).relative_to('docs')})"]
    lines += ["", f"Generated by `python -m scripts.reports.synthetic_transfer` in {n['seconds']:.0f} s."]
    return "\n".join(lines)


def main(weights: str = "models/model.pt", phantoms: str = "demo_output/data/test", out_dir: str = "transfer_output",
         results_md: str = "docs/results.md", figure: str = "docs/images/real_ct_kidneys.png", label: str = "",
         overlays: tuple[str, ...] = ("configs/demo.json",), check_seeds: tuple[int, ...] = (18, 19),
         fields_mm: tuple[float, ...] = (405.0, 450.0)) -> dict:
    """Run the three evaluations of ``weights`` and write the docs section; returns the numbers.

    ``check_seeds``: the check set is built once per seed (same held-out masks, other bodies and intensities), so
    that a change is not judged on one draw of it; the first seed is the table's main row. ``fields_mm``: the real
    crop (366 x 303 mm) is also shown padded to these square fields of view (:func:`field_of_view_agreement`).
    """
    out, w, ov = (BUNDLE_ROOT / out_dir).resolve(), (BUNDLE_ROOT / weights).resolve(), list(overlays)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    numbers: dict = {"weights": str(weights), "label": label}
    numbers["phantoms"] = _evaluate((BUNDLE_ROOT / phantoms).resolve(), out / "phantoms", w, ov, out / "phantoms.log")
    check_masks = split_kits_masks(list_kits_masks(SHARED / "kits23_masks"))[1]
    if check_masks:
        seeds = [int(seed) for seed in check_seeds]
        results = []
        for i, seed in enumerate(seeds):
            tag = "" if i == 0 else f"_seed{seed}"
            generate_check_dataset(str(out / f"checkset_data{tag}"), check_masks, seed=seed)
            results.append(_evaluate(out / f"checkset_data{tag}", out / f"checkset{tag}", w, ov,
                                     out / f"checkset{tag}.log"))
        numbers["checkset"], numbers["checkset_more"], numbers["check_seeds"] = results[0], results[1:], seeds
        numbers["check_cases"] = [p.name.split("_seg")[0] for p in check_masks]
    if (REAL_DIR / "example_ct_sm.nii.gz").is_file():
        pred_sm, aff = _predict(REAL_DIR / "example_ct_sm.nii.gz", out / "real_sm", w, ov, out / "real_sm.log")
        pred_full, _ = _predict(REAL_DIR / "example_ct.nii.gz", out / "real_full", w, ov, out / "real_full.log")
        seg = np.asarray(nib.load(REAL_DIR / "example_seg.nii.gz").dataobj)
        numbers["real"] = real_ct_numbers(pred_sm, pred_full, seg, abs(np.linalg.det(aff[:3, :3])) / 1000)
        ct_sm = np.asarray(nib.load(REAL_DIR / "example_ct_sm.nii.gz").dataobj)
        ct_full = np.asarray(nib.load(REAL_DIR / "example_ct.nii.gz").dataobj)
        real_ct_figure(ct_sm, pred_sm, seg, ct_full, pred_full, BUNDLE_ROOT / figure)
        numbers["real"]["fields_of_view"] = field_of_view_agreement(w, out / "fields_of_view", ov,
                                                                    tuple(float(f) for f in fields_mm))
    numbers["seconds"] = time.perf_counter() - t0
    (out / "numbers.json").write_text(json.dumps(numbers, indent=2, default=float))
    write_section(BUNDLE_ROOT / results_md, section_text(numbers, figure))
    print(json.dumps(numbers, indent=2, default=float))
    return numbers


if __name__ == "__main__":
    import fire

    fire.Fire(main)
