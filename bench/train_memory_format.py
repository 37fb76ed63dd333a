"""Training on the CPU in channels_last memory format: faster per step, less accurate BatchNorm (tried, not kept).

One optimiser step (forward, DiceCE loss, backward, Adam) of each network on random data of the shape its training
config feeds it, NCHW (PyTorch's default, what training uses) and channels_last timed in interleaved rounds (medians),
in one child process per CPU class: the machine's own kernels and, emulated, AVX2 only
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``). Each child also measures the relative error of a train-mode
``BatchNorm2d`` against float64 in both formats, the reason the faster format was not adopted (``docs/performance.md``,
"Training in channels_last"). Writes ``bench/results/train_memory_format_<date>.json`` and prints the markdown tables.

    .venv/bin/python bench/train_memory_format.py             # about 10 min on 2 cores
    .venv/bin/python bench/train_memory_format.py --rounds 2 --steps 2  # about 7 min, noisier
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

from common import REPO, load_average, machine

# name -> (class, constructor kwargs, input shape (batch, 1, *spatial)); the demo's batch as the demo feeds it (2 cases x
# 8 slices), the larger networks at batch 4 (at the default 16 slices the paper WP-UNet alone held 5.6 GB and the run
# took over half an hour here),
# 3D: 2 cases x 2 patches of configs/networks/pocket_unet_3d.json
NETWORKS = {
    "WP-UNet demo (configs/demo.json), 128x128": (
        "WPUNet", dict(channels=[16, 32, 64, 128, 128], strides=[2, 2, 2, 2], dropout=0.2), (16, 1, 128, 128)),
    "WP-UNet paper, 256x256": (
        "WPUNet", dict(channels=[64, 128, 256, 512, 512], strides=[2, 2, 2, 2], dropout=0.5), (4, 1, 256, 256)),
    "SD-UNet, 256x256": ("SDUNet", {}, (4, 1, 256, 256)),
    "Pocket U-Net 2D, 256x256": ("PocketUNet", dict(features=16, depth=4, pocket=True), (16, 1, 256, 256)),
    "Pocket U-Net 3D, 128x128x32": (
        "PocketUNet", dict(features=16, depth=4, pocket=True, pool_size=[2, 2, 1], spatial_dims=3), (4, 1, 128, 128, 32)),
}
EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _batchnorm_error() -> dict:
    """Relative error (L2) of a train-mode ``BatchNorm2d`` output against float64, NCHW and channels_last input:
    64 channels, 16 x 32 x 32 ReLU outputs, as in the networks' conv-ReLU-BatchNorm blocks."""
    import torch

    torch.manual_seed(0)
    x = torch.relu(torch.randn(16, 64, 32, 32))
    reference = torch.nn.BatchNorm2d(64).double()(x.double())
    error = {}
    for fmt, memory_format in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        out = torch.nn.BatchNorm2d(64)(x.contiguous(memory_format=memory_format))
        error[fmt] = float((out.double() - reference).norm() / reference.norm())
    return error


def _child(rounds: int, steps: int) -> dict:
    """In this process: median seconds per training step of every network in each memory format."""
    import torch
    from monai.losses import DiceCELoss

    import scripts.networks as networks

    torch.manual_seed(0)
    results = {}
    for name, (cls, kwargs, shape) in NETWORKS.items():
        kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, **kwargs}
        loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        image = torch.rand(shape)
        label = torch.randint(0, 3, (shape[0], 1, *shape[2:]))
        runs = {}
        for fmt in ("nchw", "channels_last"):
            net = getattr(networks, cls)(**kwargs)
            if fmt == "channels_last":
                three_d = len(shape) == 5
                net = net.to(memory_format=torch.channels_last_3d if three_d else torch.channels_last)
            runs[fmt] = (net, torch.optim.Adam(net.parameters(), 1e-3))
        times = {fmt: [] for fmt in runs}

        def step(net, optimiser):
            optimiser.zero_grad(set_to_none=True)
            loss(net(image), label).backward()
            optimiser.step()

        for net, optimiser in runs.values():  # warm-up: oneDNN primitive creation
            step(net, optimiser)
        for _ in range(rounds):
            for fmt, (net, optimiser) in runs.items():
                start = time.perf_counter()
                for _ in range(steps):
                    step(net, optimiser)
                times[fmt].append((time.perf_counter() - start) / steps)
        nchw, last = statistics.median(times["nchw"]), statistics.median(times["channels_last"])
        results[name] = {"batch_shape": list(shape), "nchw_s": round(nchw, 4), "channels_last_s": round(last, 4),
                         "speedup": round(nchw / last, 2)}
        print(f"{name}: NCHW {nchw:.3f} s, channels_last {last:.3f} s", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="training steps per round and format")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"machine": machine(), "steps": _child(args.rounds, args.steps),
                          "batchnorm_error": _batchnorm_error()}))
        return
    report = {"date": datetime.date.today().isoformat(), "load_before": load_average(), "classes": {}}
    for label, extra in (("native", {}), ("AVX2 emulated", EMULATE_AVX2)):
        done = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--steps",
                               str(args.steps)], cwd=REPO / "bench", env={**os.environ, **extra},
                              stdout=subprocess.PIPE, text=True, check=True)  # progress lines on stderr
        report["classes"][label] = json.loads(done.stdout.strip().splitlines()[-1])
    report["load_after"] = load_average()
    out = REPO / "bench" / "results" / f"train_memory_format_{datetime.date.today():%Y%m%d}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("| network, batch | CPU class | NCHW s/step | channels_last s/step | speed-up |\n|---|---|---:|---:|---:|")
    for label, result in report["classes"].items():
        cls = ("bf16 (AVX-512 BF16)" if result["machine"]["bf16_native"] else "AVX2") if label == "native" else label
        for name, row in result["steps"].items():
            print(f"| {name}, {row['batch_shape'][0]} | {cls} | {row['nchw_s']:.3f} | {row['channels_last_s']:.3f} "
                  f"| {row['speedup']:.2f}x |")
    print("\n| CPU class | BatchNorm2d (train) relative error vs float64: NCHW | channels_last |\n|---|---:|---:|")
    for label, result in report["classes"].items():
        error = result["batchnorm_error"]
        print(f"| {label} | {error['nchw']:.1e} | {error['channels_last']:.1e} |")
    print(f"(written {out.relative_to(REPO)}; load {report['load_before']} -> {report['load_after']})")


if __name__ == "__main__":
    main()
