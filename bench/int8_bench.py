"""Network latency per backend on this CPU class (issue 17): torch fp32 contiguous / channels_last, ONNX Runtime
fp32 and ONNX Runtime int8 (static, calibrated), at slice batches 1/4/8 and 2 or 1 intra-op threads.

Networks: paper WP-UNet (dense, 64-512), WP-UNet channel-pruned 0.5, Pocket U-Net 2D, SD-UNet; 256x256 slices,
random weights (latency depends on shapes, not weight values). Input: preprocessed slices of a SYNTHETIC phantom
(seed 0, training side); the int8 models are calibrated on slices of other seed-0 phantoms. Timings are medians of
interleaved rounds (every variant sees the same machine load), milliseconds per slice of wall time, argmax
included (``scripts.inference.fast_path.predict_labels``). The result names the CPU class it was measured on
(``bf16`` when the CPU has AVX-512 BF16/AMX, else ``avx2``); ``ATEN_CPU_CAPABILITY=avx2`` and
``ONEDNN_MAX_CPU_ISA=AVX2`` emulate the AVX2 class on a bigger CPU.

    nice .venv/bin/python bench/int8_bench.py --out bench/results/int8_latency.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import load_average, machine  # noqa: E402
from scripts.inference.fast_path import FastPath, cpu_class, predict_labels, prepare_network  # noqa: E402

BATCHES = (1, 4, 8)


def networks(only: list[str] | None) -> dict[str, torch.nn.Module]:
    from bench.run import bundle_network
    from scripts.pruning.structured import prune_channels

    torch.manual_seed(0)
    wp = bundle_network().eval()
    nets = {"Pocket U-Net 2D": bundle_network("networks/pocket_unet_2d.json").eval(),
            "WP-UNet channel-pruned 0.5": prune_channels(copy.deepcopy(wp), torch.rand(1, 1, 256, 256), ratio=0.5,
                                                         round_to=8).eval(),
            "SD-UNet": bundle_network("networks/sd_unet.json").eval(),
            "WP-UNet (paper, dense)": wp}
    return {k: v for k, v in nets.items() if not only or any(o.lower() in k.lower() for o in only)}


def phantom_slices(workdir: Path, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timing slices, calibration slices): preprocessed 256x256 slices of SYNTHETIC seed-0 (training) phantoms."""
    from scripts.inference.quantize import calibration_slices
    from scripts.synthetic.phantoms import generate_dataset

    cases = generate_dataset(str(workdir / "phantoms"), num_cases=3, seed=0, in_plane_size=256,
                             slice_thickness_range=(2.5, 5.0))
    images = [str(Path(c) / "imaging.nii.gz") for c in cases]
    timing = calibration_slices(images[:1], (-79, 304), (256, 256), count)
    calibration = calibration_slices(images[1:], (-79, 304), (256, 256), 32)
    return timing, calibration


def variants(net: torch.nn.Module, workdir: Path, name: str, calibration: torch.Tensor) -> dict:
    """``{variant: (module, FastPath, threads)}`` for one network."""
    from scripts.inference.onnx_backend import OnnxRuntimeNetwork, export_onnx
    from scripts.inference.quantize import quantize_int8

    stem = workdir / name.split(" (")[0].replace(" ", "_")
    fp32 = export_onnx(net, f"{stem}.onnx")
    int8 = quantize_int8(fp32, f"{stem}_int8.onnx", calibration)
    contiguous, channels_last = FastPath(), FastPath(channels_last=True)
    return {"torch fp32": (prepare_network(net, "cpu", contiguous), contiguous, 2),
            "torch channels_last": (prepare_network(net, "cpu", channels_last), channels_last, 2),
            "ORT fp32": (OnnxRuntimeNetwork(fp32, num_threads=2), contiguous, 2),
            "ORT int8": (OnnxRuntimeNetwork(int8, num_threads=2), contiguous, 2),
            "torch channels_last, 1 thread": (prepare_network(net, "cpu", channels_last), channels_last, 1),
            "ORT fp32, 1 thread": (OnnxRuntimeNetwork(fp32, num_threads=1), contiguous, 1)}


def time_variants(models: dict, slices: torch.Tensor, batch: int, repeats: int) -> dict[str, float]:
    """Median ms per slice of each variant over all ``slices`` at ``batch``, interleaved rounds after a warm-up."""
    models = {name: spec for name, spec in models.items() if spec[2] == 2 or batch == 1}
    samples = {name: [] for name in models}
    for module, path, threads in models.values():  # warm-up: one batch each
        torch.set_num_threads(threads)
        predict_labels(module, slices[:batch], path, "cpu")
    for _ in range(repeats):
        for name, (module, path, threads) in models.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            for i in range(0, len(slices), batch):
                predict_labels(module, slices[i:i + batch], path, "cpu")
            samples[name].append(1000 * (time.perf_counter() - start) / len(slices))
    torch.set_num_threads(2)
    return {name: round(statistics.median(v), 2) for name, v in samples.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="substrings of network names to keep")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_latency.json")
    args = parser.parse_args()
    result = {"machine": machine(), "cpu_class": cpu_class(), "load_before": load_average(), "ms_per_slice": {},
              "note": "random weights, SYNTHETIC phantom slices, 256x256; shared machine: compare within a row"}
    with tempfile.TemporaryDirectory() as tmp:
        slices, calibration = phantom_slices(Path(tmp), args.slices)
        for name, net in networks(args.only).items():
            models = variants(net, Path(tmp), name, calibration)
            result["ms_per_slice"][name] = {f"batch {b}": time_variants(models, slices, b, args.repeats)
                                            for b in BATCHES}
            print(name, json.dumps(result["ms_per_slice"][name]), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))  # partial results survive a stopped run
    result["load_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
