"""CPU forward latency per slice: dense vs unstructured-pruned vs channel-pruned WP-UNet, random weights.

Latency does not depend on the weight values, so this needs no data and no training: it builds the network
(default: the paper-size WP-UNet 64-512), makes an unstructured copy (global magnitude, ``--sparsity`` of conv
kernels, made permanent) and channel-pruned copies (``--channel-ratio``, ``--stage-ratios``, ``--round-to``; or
several named settings at once with ``--patterns``), and times them in one process in interleaved rounds (median
seconds per slice, one thread unless ``--threads``). Dice needs trained weights: see
``bench/prune_sweep.py``. Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/prune_latency.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import time_per_slice  # noqa: E402
from scripts.networks import WPUNet  # noqa: E402
from scripts.pruning import apply_pruning, make_permanent, prune_channels  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="64,128,256,512,512")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--channel-ratio", type=float, default=0.5)
    parser.add_argument("--stage-ratios", type=json.loads, default={},
                        help='JSON {module-name prefix: ratio}, e.g. \'{"encoder.stages.0": 0.5}\'')
    parser.add_argument("--round-to", type=int, default=8, help="kept channels are a multiple of this (1: none)")
    parser.add_argument("--patterns", type=json.loads, default=None,
                        help='JSON {name: {"ratio": r, "stage_ratios": {...}, "round_to": n}}: several channel-pruned '
                             'settings timed together (replaces --channel-ratio/--stage-ratios/--round-to)')
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    channels = tuple(int(c) for c in args.channels.split(","))
    dense = WPUNet(channels=channels).eval()
    unstructured = copy.deepcopy(dense)
    apply_pruning(unstructured, "magnitude", args.sparsity, "kernels")
    make_permanent(unstructured)
    patterns = args.patterns or {"structured": {"ratio": args.channel_ratio, "stage_ratios": args.stage_ratios,
                                                "round_to": args.round_to}}
    example = torch.zeros(1, 1, args.size, args.size)
    models = {"dense": dense, "unstructured": unstructured}
    widths = {}
    for name, pattern in patterns.items():
        models[name] = prune_channels(copy.deepcopy(dense), example, pattern.get("ratio", 0.0),
                                      stage_ratios=pattern.get("stage_ratios"), round_to=pattern.get("round_to", 1))
        widths[name] = [m.out_channels for m in models[name].modules() if isinstance(m, torch.nn.Conv2d)
                        and m.groups == 1]
    x = torch.rand(args.batch, 1, args.size, args.size)
    with torch.inference_mode():
        for model in models.values():
            assert model(x).shape == (args.batch, 3, args.size, args.size)
    median = time_per_slice(models, args.size, args.batch, args.repeats, args.iters)
    result = {"channels": channels, "size": args.size, "threads": args.threads, "sparsity": args.sparsity,
              "patterns": patterns, "widths": widths,
              "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
              "ms_per_slice": {k: round(v * 1e3, 2) for k, v in median.items()},
              "speedup": {k: round(median["dense"] / v, 2) for k, v in median.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
