"""Dice beside each speed-up: every fast-path variant and pruned model vs the dense fp32 model, held-out phantoms.

Used by ``bench/run.py`` (and runnable alone). The weights are the DEMO weights (``bash demo.sh``: WP-UNet
16-32-64-128-128 at 128x128 slices, trained briefly on SYNTHETIC phantoms), the cases are the demo's held-out
SYNTHETIC test phantoms (``demo_output/data/test``, never used in training or model selection). Each variant
segments every case through the bundle's streaming segmenter (``scripts/inference/streaming.py``); kidney (labels 1+2) and
tumour (label 2) Dice are computed per case against the ground truth, and the paired difference to the dense fp32
model is reported in Dice points (mean +- standard error over cases). Tumour Dice is averaged over the cases whose
ground truth has a tumour. Nothing here is evidence of accuracy on real CT.

    .venv/bin/python bench/dice_variants.py --out bench/results/dice_variants.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.common.weights import load_weights  # noqa: E402
from scripts.inference.fast_path import FastPath, choose_fast_path, cpu_supports_bf16  # noqa: E402
from scripts.inference.streaming import StreamingSegmenter  # noqa: E402

DEMO_CHANNELS, DEMO_SLICE = (16, 32, 64, 128, 128), (128, 128)
WITHIN_POINTS = 0.5


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(pred.sum()) + int(truth.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def paired_difference(values: list[float], reference: list[float]) -> tuple[float, float, int]:
    """Mean and standard error (Dice points) of ``values - reference`` over cases where both are defined."""
    diffs = [100.0 * (v - r) for v, r in zip(values, reference) if not (math.isnan(v) or math.isnan(r))]
    if not diffs:
        return float("nan"), float("nan"), 0
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return statistics.fmean(diffs), se, len(diffs)


def summarise(per_case: dict[str, dict[str, list[float]]], agreement: dict[str, float], reference: str) -> dict:
    """Mean Dice per variant, paired differences to ``reference`` and whether neither region loses more than
    0.5 point on average (a NaN tumour difference - no case with a tumour - does not count as a loss)."""
    out = {}
    ref = per_case[reference]
    for name, scores in per_case.items():
        d_kid, se_kid, _ = paired_difference(scores["kidney"], ref["kidney"])
        d_tum, se_tum, n_tum = paired_difference(scores["tumour"], ref["tumour"])
        out[name] = {
            "kidney": statistics.fmean(scores["kidney"]),
            "tumour": statistics.fmean([v for v in scores["tumour"] if not math.isnan(v)] or [float("nan")]),
            "d_kidney_pts": d_kid, "se_kidney_pts": se_kid, "d_tumour_pts": d_tum, "se_tumour_pts": se_tum,
            "tumour_cases": n_tum,
            # the "keeps Dice within 0.5 point": no loss of more than 0.5 point in either region
            "within_0_5": bool(d_kid >= -WITHIN_POINTS and not d_tum < -WITHIN_POINTS),
            "voxel_agreement": agreement[name],
        }
    return out


def _demo_network(channels=DEMO_CHANNELS) -> torch.nn.Module:
    from scripts.networks import WPUNet

    return WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=channels, strides=(2, 2, 2, 2), dropout=0.2)


def variants(weights: Path, pruned: Path | None, channel: Path | None, workdir: Path) -> dict:
    """``{name: (network, FastPath)}``: precision/format variants of the dense model, then the pruned models."""
    from scripts.inference.onnx_backend import OnnxRuntimeNetwork, export_onnx

    dense = load_weights(_demo_network(), weights).eval()
    auto = choose_fast_path(dense, "cpu")
    out = {"dense fp32 (reference)": (dense, FastPath()),
           "channels_last": (dense, FastPath(channels_last=True))}
    if cpu_supports_bf16():
        out["bf16"] = (dense, FastPath("bf16"))
        out["bf16 + channels_last"] = (dense, FastPath("bf16", True))
    out["TorchScript freeze (auto + torchscript)"] = (dense, FastPath(auto.precision, auto.channels_last,
                                                                       auto.fold_batchnorm, "torchscript"))
    onnx = export_onnx(dense, workdir / "demo.onnx", slice_size=DEMO_SLICE)
    out["ONNX Runtime"] = (OnnxRuntimeNetwork(onnx), FastPath())
    out[f"auto ({auto.describe()})"] = (dense, auto)
    if pruned is not None and pruned.is_file():
        net = load_weights(_demo_network(), pruned).eval()
        out[f"unstructured 50 % ({pruned.name}), auto"] = (net, choose_fast_path(net, "cpu"))
    if channel is not None and channel.is_file():
        from scripts.pruning import load_structured

        net = load_structured(_demo_network(), channel).eval()
        out[f"channel-pruned ({channel.name}), fp32"] = (net, FastPath())
        out[f"channel-pruned ({channel.name}), auto"] = (net, choose_fast_path(net, "cpu"))
    return out


def measure(test_dir: Path, weights: Path, pruned: Path | None = None, channel: Path | None = None,
            max_cases: int | None = None) -> dict:
    cases = sorted(p for p in test_dir.iterdir() if (p / "imaging.nii.gz").is_file())[:max_cases]
    if not cases:
        raise SystemExit(f"{test_dir}: no held-out cases (run `bash demo.sh` first)")
    truth = [np.asarray(nib.load(str(c / "segmentation.nii.gz")).dataobj) for c in cases]
    per_case, labels = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (network, path) in variants(weights, pruned, channel, Path(tmp)).items():
            segmenter = StreamingSegmenter(network, "cpu", slice_size=DEMO_SLICE, fast_path=path)
            predictions = [segmenter.segment_file(c / "imaging.nii.gz")[0] for c in cases]
            per_case[name] = {"kidney": [dice(p > 0, t > 0) for p, t in zip(predictions, truth)],
                              "tumour": [dice(p == 2, t == 2) if (t == 2).any() else float("nan")
                                         for p, t in zip(predictions, truth)]}
            labels[name] = predictions
            print(f"  {name}: kidney {statistics.fmean(per_case[name]['kidney']):.4f}", flush=True)
    reference = next(iter(per_case))
    agreement = {name: float(np.mean([np.mean(p == r) for p, r in zip(preds, labels[reference])]))
                 for name, preds in labels.items()}
    return {"synthetic": True, "cases": len(cases), "test_dir": str(test_dir), "reference": reference,
            "weights": {"dense": str(weights), "unstructured": str(pruned) if pruned else None,
                        "channel_pruned": str(channel) if channel else None,
                        "note": "DEMO weights trained briefly on SYNTHETIC phantoms (bash demo.sh)"},
            "variants": summarise(per_case, agreement, reference)}


def markdown(result: dict) -> str:
    rows = ["| variant | kidney Dice | tumour Dice | kidney vs fp32 (points) | tumour vs fp32 (points) | "
            "loses <= 0.5 point | voxels equal to fp32 |", "|---|---:|---:|---:|---:|---|---:|"]
    for name, v in result["variants"].items():
        rows.append(f"| {name} | {v['kidney']:.4f} | {v['tumour']:.4f} | {v['d_kidney_pts']:+.2f} ± "
                    f"{v['se_kidney_pts']:.2f} | {v['d_tumour_pts']:+.2f} ± {v['se_tumour_pts']:.2f} | "
                    f"{'yes' if v['within_0_5'] else '**no**'} | {100 * v['voxel_agreement']:.3f} % |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-dir", type=Path, default=REPO / "demo_output" / "data" / "test")
    parser.add_argument("--weights", type=Path, default=REPO / "models" / "model.pt")
    parser.add_argument("--pruned", type=Path, default=REPO / "models" / "model_pruned.pt")
    parser.add_argument("--channel", type=Path, default=REPO / "models" / "derived" / "model_structured.pt",
                        help="channel-pruned demo model (run pruning_structured with configs/demo.json)")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dice_variants.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = measure(args.test_dir, args.weights, args.pruned, args.channel, args.max_cases)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
