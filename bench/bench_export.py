#!/usr/bin/env python
"""torch vs ONNX Runtime latency of the 2D network on the CPU, in one process and one run (ratios, not absolutes).

For each network (the default WP-UNet of ``configs/inference.json`` and the demo WP-UNet of ``configs/demo.json``,
RANDOM-INIT weights: latency does not depend on the weights' values), exports ONNX with
:func:`scripts.onnx_export.export_onnx`, checks the max abs difference on the benchmark batch, then times
``--repeats`` forward passes of a ``(batch, 1, 256, 256)`` batch of random slices, torch and ORT interleaved (so
both see the same machine load), both with ``--threads`` threads. Writes ``bench/results/export_<date>.json`` and
prints a markdown table for ``docs/export.md``.

Run from the bundle root::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_export.py --repeats 7
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402

from scripts.onnx_export import OnnxRuntimeNetwork, export_onnx  # noqa: E402

NETWORKS = {"default WP-UNet (configs/inference.json)": ["configs/inference.json"],
            "demo WP-UNet (configs/demo.json)": ["configs/inference.json", "configs/demo.json"]}


def _network(config_files: list[str]) -> tuple[torch.nn.Module, list[int]]:
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in config_files])
    parser["bundle_root"] = str(ROOT)
    return parser.get_parsed_content("network_def", instantiate=True).eval(), parser.get_parsed_content("slice_size")


def _time(call, x) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        call(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="slices per forward (the CPU sw_batch_size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, files in NETWORKS.items():
            network, slice_size = _network(files)
            start = time.perf_counter()
            path = export_onnx(network, Path(tmp) / "net.onnx", slice_size)
            export_s = time.perf_counter() - start
            ort = OnnxRuntimeNetwork(path, num_threads=args.threads)
            x = torch.rand(args.batch, 1, *slice_size)
            with torch.no_grad():
                difference = float((network(x) - ort(x)).abs().max())
            _time(network, x), _time(ort, x)  # warm-up
            torch_s, ort_s = [], []
            for _ in range(args.repeats):
                torch_s.append(_time(network, x))
                ort_s.append(_time(ort, x))
            row = {"network": name, "slice_size": slice_size, "batch": args.batch, "threads": args.threads,
                   "export_s": round(export_s, 2), "max_abs_difference": difference,
                   "torch_median_s": statistics.median(torch_s), "ort_median_s": statistics.median(ort_s),
                   "torch_s": torch_s, "ort_s": ort_s}
            row["ort_speedup"] = row["torch_median_s"] / row["ort_median_s"]
            rows.append(row)
            print(f"{name}: torch {row['torch_median_s']:.3f} s, ORT {row['ort_median_s']:.3f} s per batch, "
                  f"torch/ORT {row['ort_speedup']:.2f}, max abs diff {difference:.1e}", flush=True)
    result = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "repeats": args.repeats,
              "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
              "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "load_average": os.getloadavg(), "weights": "random init", "rows": rows}
    out = Path(args.results_dir) / f"export_{_dt.date.today():%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}\n")
    print("| network | batch x slice | torch s/batch | ORT s/batch | torch / ORT | max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['batch']} x {r['slice_size'][0]}x{r['slice_size'][1]} | "
              f"{r['torch_median_s']:.3f} | {r['ort_median_s']:.3f} | {r['ort_speedup']:.2f} | "
              f"{r['max_abs_difference']:.1e} |")


if __name__ == "__main__":
    main()
