"""int8 vs fp32 Dice on the demo's held-out SYNTHETIC phantoms (issue 17): is int8 allowed into ``auto``?

The DEMO WP-UNet (16-32-64-128-128, 128x128 slices; weights trained on SYNTHETIC phantoms) is run through the
bundle's streaming segmenter as torch fp32 (the reference), ONNX Runtime fp32 and ONNX Runtime int8 (static, QDQ,
per-channel, calibrated on preprocessed slices of seed-0 *training* phantoms, ``scripts.inference.quantize``). The
held-out cases are the demo's test set: ``generate_dataset(out, num_cases=8, seed=1, in_plane_size=256,
slice_thickness_range=(2.5, 5.0), first_case=100)``, never used for calibration. Kidney (labels 1+2) and tumour
(label 2) Dice per case, paired differences to fp32 in Dice points (``bench/dice_variants.py``); int8 may be used
by ``auto`` only if neither region loses more than 0.5 point. Network time per slice (segmenter timings, skipped
air slices excluded, 1 thread by default) is given beside it. Nothing here is evidence of accuracy on real CT.

    nice .venv/bin/python bench/int8_dice.py --weights models/model.pt
"""

from __future__ import annotations

import argparse
import json
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

from bench.common import load_average, machine  # noqa: E402
from bench.dice_variants import DEMO_SLICE, _demo_network, dice, markdown, summarise  # noqa: E402
from scripts.common.weights import load_weights  # noqa: E402
from scripts.inference.fast_path import FastPath, cpu_class  # noqa: E402
from scripts.inference.streaming import StreamingSegmenter  # noqa: E402

HU_WINDOW = (-79, 304)


def phantoms(workdir: Path, num_test: int, num_calibration: int) -> tuple[list[Path], list[str]]:
    """(held-out case folders, calibration images): the demo's test set and seed-0 training phantoms."""
    from scripts.synthetic.phantoms import generate_dataset

    def cases(folder: Path, num: int, seed: int, first: int) -> list[Path]:
        found = sorted(p for p in folder.glob("case_*") if (p / "segmentation.nii.gz").is_file())
        if len(found) != num:  # cases are deterministic, so a kept --workdir is reused
            found = [Path(c) for c in generate_dataset(str(folder), num_cases=num, seed=seed, in_plane_size=256,
                                                       slice_thickness_range=(2.5, 5.0), first_case=first)]
        return found

    test = cases(workdir / "test", num_test, 1, 100)
    train = cases(workdir / "train", num_calibration, 0, 0)
    return test, [str(c / "imaging.nii.gz") for c in train]


def train_stand_in(case_dirs: list[Path], minutes: float, out: Path) -> Path:
    """A demo WP-UNet trained for ``minutes`` (Adam, DiceCE, 2/3 of each batch from slices with kidney) on the
    SYNTHETIC training cases, for when the demo weights are not there yet: briefly trained, so only the int8-vs-fp32
    difference it shows means anything, not its Dice."""
    import time

    import torch.nn.functional as F
    from monai.losses import DiceCELoss

    from scripts.data.preprocessing import window_and_resize

    xs, ys = [], []
    for case in case_dirs:
        image = nib.as_closest_canonical(nib.load(str(case / "imaging.nii.gz")))
        label = nib.as_closest_canonical(nib.load(str(case / "segmentation.nii.gz")))
        hu = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 0, 1).copy()
        seg = torch.tensor([0, 1, 2, 1])[torch.from_numpy(np.asarray(label.dataobj, dtype=np.int64).transpose(2, 0, 1))]
        xs.append(torch.from_numpy(window_and_resize(hu, HU_WINDOW, DEMO_SLICE)))
        ys.append(F.interpolate(seg[:, None].float(), size=DEMO_SLICE, mode="nearest-exact").long())
    x, y = torch.cat(xs), torch.cat(ys)
    kidney = torch.nonzero(y.flatten(1).amax(1) > 0).flatten()
    torch.manual_seed(0)
    net = _demo_network().train()
    loss_fn, optimiser = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(net.parameters(), 2e-3)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < 60 * minutes:
        index = torch.cat([kidney[torch.randint(0, len(kidney), (6,))], torch.randint(0, len(x), (2,))])
        optimiser.zero_grad()
        loss = loss_fn(net(x[index]), y[index])
        loss.backward()
        optimiser.step()
        steps += 1
    print(f"stand-in model: {steps} steps in {minutes} min, last loss {float(loss):.3f}", flush=True)
    torch.save({"model": net.state_dict(), "note": f"SYNTHETIC stand-in, {steps} steps"}, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "models" / "model.pt", help="demo weights (bash demo.sh)")
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--calibration-cases", type=int, default=4)
    parser.add_argument("--calibration-slices", type=int, default=64)
    parser.add_argument("--train-minutes", type=float, default=6.0,
                        help="when --weights is missing: train a stand-in demo model this long on the training cases")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--workdir", type=Path, default=None, help="keep phantoms and models here")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_dice.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # OnnxRuntimeNetwork takes torch's thread count
    from scripts.inference.onnx_backend import OnnxRuntimeNetwork, export_onnx
    from scripts.inference.quantize import calibration_slices, quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        cases, calibration_images = phantoms(work, args.test_cases, args.calibration_cases)
        weights = args.weights
        if not weights.is_file():
            print(f"{weights}: missing; training a stand-in demo model on the SYNTHETIC training cases", flush=True)
            weights = train_stand_in([Path(p).parent for p in calibration_images], args.train_minutes,
                                     work / "stand_in.pt")
        dense = load_weights(_demo_network(), weights).eval()
        fp32_onnx = export_onnx(dense, work / "demo_fp32.onnx", DEMO_SLICE)
        slices = calibration_slices(calibration_images, HU_WINDOW, DEMO_SLICE, args.calibration_slices)
        int8_onnx = quantize_int8(fp32_onnx, work / "demo_int8.onnx", slices)
        variants = {"torch fp32 (reference)": (dense, FastPath()),
                    "ONNX Runtime fp32": (OnnxRuntimeNetwork(fp32_onnx), FastPath()),
                    "ONNX Runtime int8 (static, QDQ, per-channel)": (OnnxRuntimeNetwork(int8_onnx), FastPath())}
        truth = [np.asarray(nib.load(str(c / "segmentation.nii.gz")).dataobj) for c in cases]
        per_case, labels, ms = {}, {}, {}
        for name, (network, path) in variants.items():
            segmenter = StreamingSegmenter(network, "cpu", slice_size=DEMO_SLICE, fast_path=path)
            predictions, seconds, count = [], 0.0, 0
            for case in cases:
                predictions.append(segmenter.segment_file(case / "imaging.nii.gz")[0])
                seconds += segmenter.timings["network"]
                count += segmenter.timings["slices"] - segmenter.timings["skipped_slices"]
            per_case[name] = {"kidney": [dice(p > 0, t > 0) for p, t in zip(predictions, truth)],
                              "tumour": [dice(p == 2, t == 2) if (t == 2).any() else float("nan")
                                         for p, t in zip(predictions, truth)]}
            labels[name], ms[name] = predictions, 1000 * seconds / max(1, count)
            print(f"  {name}: kidney {statistics.fmean(per_case[name]['kidney']):.4f}, {ms[name]:.1f} ms/slice",
                  flush=True)
    reference = next(iter(per_case))
    agreement = {name: float(np.mean([np.mean(p == r) for p, r in zip(preds, labels[reference])]))
                 for name, preds in labels.items()}
    result = {"synthetic": True, "cases": len(cases), "weights": str(weights), "cpu_class": cpu_class(),
              "machine": machine(), "load": load_average(), "calibration_slices": len(slices),
              "threads": args.threads,
              "network_ms_per_slice": ms, "variants": summarise(per_case, agreement, reference)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
