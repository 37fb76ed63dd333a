"""Complexity report of the network family: parameters, MACs, weight size and CPU latency, paper vs bundle configs.

Run ``python -m monai.bundle run complexity --config_file configs/complexity.json``; it writes
``<output_dir>/complexity.csv`` and ``<output_dir>/complexity.md``. Every number of ours is measured on the built
model in this run; only ``paper_params`` (and its note) is quoted from the papers, for comparison.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from ..common.atomic import atomic_write_text
from ..networks import count_macs, count_nonzero_parameters, count_parameters

__all__ = ["measure_network", "cpu_ms_per_slice", "write_report"]

COLUMNS = [
    "network", "config", "params", "keras_total", "nonzero", "macs", "flops", "macs_input", "weights_mb",
    "cpu_ms_per_slice", "speed_vs_reference", "paper_params", "paper_note",
]


def cpu_ms_per_slice(net: nn.Module, input_shape: Sequence[int], repeats: int = 3) -> float:
    """Median CPU wall time of one eval-mode forward pass, in ms per 2D slice of the input.

    For a 2D input ``(1, C, H, W)`` that is the time of one slice; for a 3D input ``(1, C, H, W, D)`` the time of the
    volume divided by ``D``. One warm-up pass is not counted.
    """
    net = net.to("cpu").eval()
    x = torch.rand(*input_shape)
    slices = input_shape[-1] if len(input_shape) == 5 else 1
    times = []
    with torch.inference_mode():
        net(x)
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / slices


def measure_network(entry: dict, repeats: int) -> dict:
    """One report row for ``entry`` (keys ``network``, ``config``, ``network_def`` (a built module),
    ``input_shape``, ``paper_params``, ``paper_note``)."""
    net: nn.Module = entry["network_def"]
    shape = list(entry["input_shape"])
    counts = count_parameters(net)
    macs = count_macs(net, shape)
    weights_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return {
        "network": entry["network"],
        "config": entry["config"],
        "params": counts["trainable"],
        "keras_total": counts["keras_total"],
        "nonzero": count_nonzero_parameters(net),
        "macs": macs,
        "flops": 2 * macs,
        "macs_input": "x".join(str(s) for s in shape),
        "weights_mb": round(weights_bytes / 2**20, 3),
        "cpu_ms_per_slice": round(cpu_ms_per_slice(net, shape, repeats), 2),
        "paper_params": entry.get("paper_params", ""),
        "paper_note": entry.get("paper_note", ""),
    }


def _markdown(rows: list[dict], reference: str, repeats: int) -> str:
    header = ("| network | config | params | Keras total | MACs | input | weights MB | CPU ms/slice | speed vs "
              f"{reference} | paper | note |")
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        paper = f"{r['paper_params']:,}" if isinstance(r["paper_params"], int) else r["paper_params"]
        lines.append(
            f"| {r['network']} | {r['config']} | {r['params']:,} | {r['keras_total']:,} | {r['macs'] / 1e9:.3f} G | "
            f"{r['macs_input']} | {r['weights_mb']:.2f} | {r['cpu_ms_per_slice']:.1f} | {r['speed_vs_reference']:.2f}x "
            f"| {paper} | {r['paper_note']} |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "\n".join([
        "# Network complexity (generated)",
        "",
        "Written by `python -m monai.bundle run complexity --config_file configs/complexity.json`; every value but",
        "`paper` is measured on the built model in the same run. `paper` rows use the paper's head (1 or 2 outputs);",
        "`bundle` rows the bundle's KiTS head (3 outputs). MACs count conv/conv-transpose multiply-accumulates only",
        "(FLOPs = 2 x MACs) for one 1x1x256x256 slice (2D) or one 1x1x128x128x128 volume (3D). `Keras total` adds the",
        "BatchNorm running statistics, which Keras counts as parameters. CPU ms/slice: median of "
        f"{repeats} eval-mode forward passes at batch 1 (3D: volume time / 128 slices) with "
        f"{torch.get_num_threads()} torch threads on {platform.processor() or platform.machine()}, 1-min load "
        f"average {load:.1f} at the end of the run; `speed vs` divides {reference}'s time by each row's, so it",
        "holds better than the absolute times on a shared machine.",
        "",
        *lines,
        "",
    ])


def write_report(networks: Sequence[dict], output_dir: str, repeats: int = 3, reference: str = "WP-UNet/bundle") -> list[dict]:
    """Measure every entry of ``networks`` and write ``complexity.csv`` and ``complexity.md`` to ``output_dir``.

    ``reference`` (``"<network>/<config>"``) is the row that ``speed_vs_reference`` compares against. Returns the rows.
    """
    rows = []
    for entry in networks:
        row = measure_network(entry, repeats)
        print(f"{row['network']:>26} {row['config']:>6}: {row['params']:>11,} params, {row['macs'] / 1e9:7.3f} GMAC, "
              f"{row['cpu_ms_per_slice']:8.1f} ms/slice", flush=True)
        rows.append(row)
    ref = [r for r in rows if f"{r['network']}/{r['config']}" == reference]
    if not ref:
        raise ValueError(f"reference {reference!r} is not among the networks: "
                         f"{[r['network'] + '/' + r['config'] for r in rows]}")
    for r in rows:
        r["speed_vs_reference"] = round(ref[0]["cpu_ms_per_slice"] / r["cpu_ms_per_slice"], 3)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "complexity.csv", buffer.getvalue())
    atomic_write_text(out / "complexity.md", _markdown(rows, reference, repeats))
    return rows
