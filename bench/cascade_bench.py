"""Issue 17: the kidney-region cascade measured: slices skipped, time and Dice with and without it.

Three sets, each labelled by what it is:

1. SYNTHETIC held-out phantoms of the full-coverage generator (lungs to femoral heads; the demo's test set:
   ``generate_dataset(..., seed=1, first_case=100, in_plane_size=256, slice_thickness_range=(2.5, 5.0))``);
2. the SEMI-SYNTHETIC independent check set (held-out KiTS23 masks, ``scripts.synthetic.checkset``);
3. the real CT ``../shared/data/totalseg_example/example_ct.nii.gz`` (whole), with TotalSegmentator's kidneys
   (labels 2, 3 of ``example_seg.nii.gz``, on slices 82..111) as an *agreement* reference, not ground truth.

For every case the streaming segmenter of ``configs/inference.json`` (+ overlays) runs once without the cascade
and once per cascade setting (``stride:margin_mm``), in-process, each time reading the file again; reported per
case: slices, slices skipped, the range run, seconds (read + segment), whether the labels are identical to the full
run, voxels that differ, and Dice (kidney = labels 1+2, tumour = 2) against the reference. Option (b) of issue 17
(the main network at a low in-plane resolution as the locator) is measured as a locator only: its run time on
every slice and whether its kidney range (found slices +- the margin) covers the full run's foreground. Process
times (``python -m monai.bundle run inferring`` start to exit) with ``--cascade False/True`` are measured for the
real CT and the first phantom.

    python bench/cascade_bench.py --weights models/model.pt --work /tmp/cascade
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_average, machine, run_workflow  # noqa: E402

from scripts.common.atomic import atomic_write_text  # noqa: E402
from scripts.data.ct_reader import read_ct  # noqa: E402
from scripts.inference.cascade import KidneyRangeCascade, kidney_slice_range  # noqa: E402
from scripts.inference.streaming import ras_orientation  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
REAL_CT, REAL_SEG, TS_KIDNEYS, REAL_OFFSET = (SHARED / "totalseg_example" / "example_ct.nii.gz",
                                              SHARED / "totalseg_example" / "example_seg.nii.gz", (2, 3), 82)


def make_segmenter(weights: str, overlays: list[str], slice_size: list[int] | None = None):
    """The config's ``segmenter`` (cascade off) for ``weights``; ``slice_size`` overrides the model resolution."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "inference.json"), *[str(REPO / o) for o in overlays]])
    parser["bundle_root"], parser["model_path"] = str(REPO), str(weights)
    if slice_size is not None:
        parser["slice_size"] = list(slice_size)
    return parser.get_parsed_content("segmenter")


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    denom = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / denom if denom else None


def ras_foreground_slices(label: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS axial indices of the slices of ``label`` (input grid) with any foreground."""
    ras = nib.orientations.apply_orientation(label > 0, ras_orientation(affine))
    return np.flatnonzero(ras.any(axis=(0, 1)))


def segment(segmenter, path: Path, cascade) -> tuple[np.ndarray, np.ndarray, float, dict]:
    segmenter.cascade = cascade
    start = time.perf_counter()
    ct = read_ct(path)
    label, _ = segmenter.segment(ct)
    return label, ct.affine, time.perf_counter() - start, dict(segmenter.timings)


def scores(label: np.ndarray, reference: np.ndarray | None, real: bool) -> dict:
    if reference is None:
        return {}
    if real:  # TotalSegmentator's kidneys on slices 82.. of the whole CT: agreement of kidney + tumour
        return {"kidney_agreement": dice(label[:, :, REAL_OFFSET:] > 0, np.isin(reference, TS_KIDNEYS))}
    return {"kidney": dice(np.isin(label, (1, 2)), np.isin(reference, (1, 2, 3))),
            "tumour": dice(label == 2, reference == 2)}


def run_case(segmenter, low_res, path: Path, reference: np.ndarray | None, settings: list[tuple[int, float]],
             real: bool = False) -> dict:
    full, affine, full_s, full_t = segment(segmenter, path, None)
    ras_depth = int(full_t["slices"])
    row = {"case": str(path), "slices": ras_depth, "air_slices": int(full_t["skipped_slices"]),
           "full": {"seconds": full_s, "network_s": full_t["network"], **scores(full, reference, real)}}
    if reference is not None and not real:
        gt = ras_foreground_slices(np.isin(reference, (1, 2, 3)), affine)
        row["reference_range"] = [int(gt.min()), int(gt.max()) + 1] if gt.size else None
    fg = ras_foreground_slices(full, affine)
    row["full_foreground_range"] = [int(fg.min()), int(fg.max()) + 1] if fg.size else None
    for stride, margin in settings:
        label, _, seconds, t = segment(segmenter, path, KidneyRangeCascade(stride, margin))
        diff = int((label != full).sum())
        row[f"cascade_{stride}_{margin:g}"] = {
            "seconds": seconds, "network_s": t["network"], **t["cascade"], "identical": diff == 0,
            "voxels_differing": diff, **scores(label, reference, real)}
    if low_res is not None:  # option (b): the same network at low in-plane resolution, every slice, as a locator
        label, _, seconds, t = segment(low_res, path, None)
        found = ras_foreground_slices(label, affine)
        slice_mm = float(np.linalg.norm((affine @ nib.orientations.inv_ornt_aff(ras_orientation(affine),
                                                                               label.shape))[:3, 2]))
        margin = settings[0][1]
        span = kidney_slice_range(found, ras_depth, 1, slice_mm, margin)
        covers = fg.size == 0 or (span is not None and span[0] <= fg.min() and fg.max() < span[1])
        row["low_res_locator"] = {"seconds": seconds, "network_s": t["network"], "range": span,
                                  "margin_mm": margin, "covers_full_foreground": bool(covers)}
    return row


def reference_located(path: Path, reference: np.ndarray, settings: list[tuple[int, float]], min_area_mm2: float = 50.0,
                      real: bool = False) -> dict:
    """No network: the first pass replaced by the reference labels at the sampled slices (a perfect locator).

    Gives the most the cascade can skip with each ``stride:margin`` and whether the range covers every reference
    kidney slice (the margin is wide enough for the poles a sampled slice of adequate size misses). On the real CT the
    reference (TotalSegmentator, slices 82..111 of the whole scan) stops at slice 82: the kidneys continue below it,
    so there only the top end of the range is known and ``covers_reference`` is not meaningful.
    """
    image = nib.load(str(path))
    ornt = ras_orientation(image.affine)
    if real:
        full = np.zeros(image.shape, dtype=bool)
        full[:, :, REAL_OFFSET:] = np.isin(reference, TS_KIDNEYS)
        kidney = full
    else:
        kidney = np.isin(reference, (1, 2, 3))
    ras = nib.orientations.apply_orientation(kidney, ornt)
    ras_affine = image.affine @ nib.orientations.inv_ornt_aff(ornt, image.shape)
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    depth = ras.shape[2]
    area = ras.sum(axis=(0, 1)) * spacing[0] * spacing[1]
    present = np.flatnonzero(area > 0)
    row = {"case": str(path), "slices": depth, "slice_mm": float(spacing[2]),
           "reference_range": [int(present.min()), int(present.max()) + 1] if present.size else None}
    for stride, margin in settings:
        from scripts.inference.cascade import sampled_slices

        sampled = sampled_slices(depth, stride)
        found = sampled[area[sampled] >= min_area_mm2]
        span = kidney_slice_range(found, depth, stride, spacing[2], margin) or (0, depth)
        run = len(sampled) + sum(1 for z in range(*span) if z not in set(sampled.tolist()))
        row[f"cascade_{stride}_{margin:g}"] = {
            "range": list(span), "network_slices": run, "network_fraction": run / depth,
            "skipped_slices": depth - run,
            "covers_reference": bool(present.size == 0 or (span[0] <= present.min() and present.max() < span[1]))}
    return row


def summarise(rows: list[dict], settings: list[tuple[int, float]], real: bool = False) -> dict:
    out: dict = {"cases": len(rows), "slices": sum(r["slices"] for r in rows),
                 "full_seconds": sum(r["full"]["seconds"] for r in rows),
                 "full_network_s": sum(r["full"]["network_s"] for r in rows)}
    metrics = ["kidney_agreement"] if real else ["kidney", "tumour"]
    for stride, margin in settings:
        key = f"cascade_{stride}_{margin:g}"
        runs = [r[key] for r in rows]
        drops = {m: [r["full"][m] - c[m] for r, c in zip(rows, runs)
                     if r["full"].get(m) is not None and c.get(m) is not None] for m in metrics}
        out[key] = {"skipped_slices": sum(c["skipped_slices"] for c in runs),
                    "not_found_cases": sum(not c["found"] for c in runs),
                    "seconds": sum(c["seconds"] for c in runs), "network_s": sum(c["network_s"] for c in runs),
                    "identical_cases": sum(c["identical"] for c in runs),
                    **{f"max_{m}_drop": max(d) if d else None for m, d in drops.items()}}
    if rows and "low_res_locator" in rows[0]:
        loc = [r["low_res_locator"] for r in rows]
        out["low_res_locator"] = {"seconds": sum(x["seconds"] for x in loc), "network_s": sum(x["network_s"] for x in loc),
                                  "cases_covering_full_foreground": sum(x["covers_full_foreground"] for x in loc)}
    return out


def kits_cases(folder: Path) -> list[tuple[Path, np.ndarray]]:
    return [(c / "imaging.nii.gz", np.asarray(nib.load(c / "segmentation.nii.gz").dataobj))
            for c in sorted(folder.glob("case_*"))]


def ensure_data(work: Path, num_phantoms: int) -> tuple[Path, Path | None]:
    """The held-out phantoms and the check set under ``work`` (generated when absent; SYNTHETIC / SEMI-SYNTHETIC)."""
    from scripts.synthetic.checkset import generate_check_dataset
    from scripts.synthetic.kits_shapes import list_kits_masks, split_kits_masks
    from scripts.synthetic.phantoms import generate_dataset

    phantoms, checkset = work / "phantoms", work / "checkset"
    if len(list(phantoms.glob("case_*"))) < num_phantoms:
        generate_dataset(str(phantoms), num_cases=num_phantoms, seed=1, first_case=100, in_plane_size=256,
                         slice_thickness_range=(2.5, 5.0))
    masks = split_kits_masks(list_kits_masks(SHARED / "kits23_masks"))[1] if (SHARED / "kits23_masks").is_dir() else []
    if not masks:
        return phantoms, None
    if len(list(checkset.glob("case_*"))) < len(masks):
        generate_check_dataset(str(checkset), masks, seed=18)
    return phantoms, checkset


def process_times(weights: str, overlays: list[str], inputs: list[Path], work: Path, margin: float,
                  stride: int) -> list[dict]:
    """Wall seconds of ``run inferring`` (process start to exit) with and without the cascade, alternating."""
    out = []
    for path in inputs:
        row = {"input": str(path)}
        for cascade in (False, True, False, True):
            child = run_workflow("inferring", ["configs/inference.json", *overlays], input_path=str(path),
                                 output_dir=str(work / f"proc_{cascade}"), model_path=weights, cascade=cascade,
                                 cascade_stride=stride, cascade_margin_mm=margin, preview=False)
            row.setdefault(f"cascade_{cascade}_s", []).append(round(child.seconds, 2))
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="", help="trained weights (not needed with --reference_located)")
    p.add_argument("--overlays", nargs="*", default=["configs/demo.json"])
    p.add_argument("--work", default="/tmp/cascade_bench")
    p.add_argument("--num_phantoms", type=int, default=8)
    p.add_argument("--settings", nargs="*", default=["4:40", "4:20", "8:40"], help="stride:margin_mm of each run")
    p.add_argument("--low_res", type=int, default=64, help="option (b) locator in-plane size (0: not measured)")
    p.add_argument("--skip_process", action="store_true", help="no process-time runs")
    p.add_argument("--reference_located", action="store_true",
                   help="no network: the reference labels as a perfect first pass (slices skipped at best, coverage)")
    p.add_argument("--sets", nargs="*", default=["phantoms", "checkset", "real"])
    p.add_argument("--threads", type=int, default=0, help="torch threads in-process (0: torch's default)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "cascade_bench.json"))
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = [(int(s.split(":")[0]), float(s.split(":")[1])) for s in args.settings]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    phantoms, checkset = ensure_data(work, args.num_phantoms)
    result: dict = {"machine": machine(), "load_before": load_average(), "weights": args.weights,
                    "overlays": args.overlays, "settings": args.settings, "sets": {}}
    sets = [("phantoms_SYNTHETIC", kits_cases(phantoms)[:args.num_phantoms], False)] if "phantoms" in args.sets else []
    if checkset is not None and "checkset" in args.sets:
        sets.append(("checkset_SEMI_SYNTHETIC", kits_cases(checkset), False))
    if REAL_CT.is_file() and "real" in args.sets:
        sets.append(("real_ct_totalseg_agreement", [(REAL_CT, np.asarray(nib.load(REAL_SEG).dataobj))], True))
    if args.reference_located:
        result["mode"] = "reference_located: no network, the reference labels as a perfect first pass"
        for name, cases, real in sets:
            rows = [reference_located(path, ref, settings, real=real) for path, ref in cases]
            summary = {"cases": len(rows), "slices": sum(r["slices"] for r in rows)}
            for stride, margin in settings:
                key = f"cascade_{stride}_{margin:g}"
                summary[key] = {"network_slices": sum(r[key]["network_slices"] for r in rows),
                                "network_fraction": sum(r[key]["network_slices"] for r in rows) / summary["slices"],
                                "cases_covering_reference": sum(r[key]["covers_reference"] for r in rows)}
            result["sets"][name] = {"summary": summary, "cases": rows}
            print(name, json.dumps(summary, indent=1), flush=True)
        atomic_write_text(Path(args.out), json.dumps(result, indent=1, default=float))
        print("wrote", args.out)
        return
    segmenter = make_segmenter(args.weights, args.overlays)
    low_res = make_segmenter(args.weights, args.overlays, [args.low_res] * 2) if args.low_res else None
    for name, cases, real in sets:
        rows = []
        for path, reference in cases:
            rows.append(run_case(segmenter, low_res, path, reference, settings, real))
            print(name, json.dumps(rows[-1], default=float), flush=True)
        result["sets"][name] = {"summary": summarise(rows, settings, real), "cases": rows}
        print(name, json.dumps(result["sets"][name]["summary"], indent=1, default=float), flush=True)
    if not args.skip_process:
        inputs = [p for p in (REAL_CT, *[c[0] for c in sets[0][1][:1]]) if p.is_file()]
        result["process_seconds"] = process_times(args.weights, args.overlays, inputs, work, settings[0][1],
                                                  settings[0][0])
        print(json.dumps(result["process_seconds"], indent=1), flush=True)
    result["load_after"] = load_average()
    atomic_write_text(Path(args.out), json.dumps(result, indent=1, default=float))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
