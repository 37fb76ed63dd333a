#!/usr/bin/env python
"""torch vs ONNX Runtime latency of the 2D network on the CPU, in one process and one run (ratios, not absolutes).

For each network (the default WP-UNet of ``configs/inference.json`` and the demo WP-UNet of ``configs/demo.json``,
RANDOM-INIT weights: latency does not depend on the weights' values), exports ONNX with
:func:`scripts.inference.onnx_backend.export_onnx`, checks the max abs difference on the benchmark batch, then times
``--repeats`` forward passes of a ``(batch, 1, 256, 256)`` batch of random slices, torch and ORT interleaved (so
both see the same machine load), both with ``--threads`` threads. Writes ``bench/results/export_<date>.json`` and
prints a markdown table for ``docs/export.md``.

With ``--e2e``, also runs the whole inference workflow (``monai.bundle run inferring``, demo network, one
SYNTHETIC phantom from :func:`scripts.synthetic.phantoms.generate_dataset`) with ``--backend torch`` and ``--backend
onnxruntime`` alternately, ``--e2e-repeats`` times each, and reports the wall times (process start included).

Run from the bundle root::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_export.py --repeats 7
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402

from bench.common import load_average, machine, run_workflow  # noqa: E402
from scripts.inference.onnx_backend import OnnxRuntimeNetwork, export_onnx  # noqa: E402

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
    parser.add_argument("--e2e", action="store_true", help="also time the inference workflow with both backends")
    parser.add_argument("--e2e-repeats", type=int, default=2)
    parser.add_argument("--e2e-size", type=int, default=512, help="in-plane size of the synthetic phantom")
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
    e2e = _end_to_end(args) if args.e2e else None
    result = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "repeats": args.repeats,
              "machine": machine(), "onnxruntime": __import__("onnxruntime").__version__,
              "load_average": load_average(), "weights": "random init", "rows": rows, "end_to_end": e2e}
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
    if e2e:
        print(f"\nend to end ({e2e['input']}): torch {e2e['torch_median_s']:.1f} s, ORT {e2e['ort_median_s']:.1f} s, "
              f"torch/ORT {e2e['torch_median_s'] / e2e['ort_median_s']:.2f}; labels equal: {e2e['labels_equal']}")


def _end_to_end(args) -> dict:
    """Wall time of ``monai.bundle run inferring`` (demo network) with each backend, alternating, same phantom."""
    import nibabel as nib
    import numpy as np

    from scripts.synthetic.phantoms import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(str(tmp / "data"), num_cases=1, seed=0, in_plane_size=args.e2e_size,
                         slice_thickness_range=(2.5, 2.5), kits_fraction=0.0)
        case = next((tmp / "data").rglob("*.nii.gz"))
        network, slice_size = _network(NETWORKS["demo WP-UNet (configs/demo.json)"])
        torch.save({"model": network.state_dict()}, tmp / "model.pt")
        export_onnx(network, tmp / "model.onnx", slice_size)
        common = {"input_path": str(case), "model_path": str(tmp / "model.pt"), "onnx_path": str(tmp / "model.onnx"),
                  "num_workers": 0, "preview": False}
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for _ in range(args.e2e_repeats):
            for backend in times:
                child = run_workflow("inferring", NETWORKS["demo WP-UNet (configs/demo.json)"], backend=backend,
                                     output_dir=str(tmp / backend), **common)
                times[backend].append(child.seconds)
        labels = [np.asarray(nib.load(next((tmp / b).glob("*.nii.gz"))).dataobj) for b in times]
        shape = nib.load(case).shape
    return {"input": f"synthetic phantom {shape}", "network": "demo WP-UNet", "torch_s": times["torch"],
            "ort_s": times["onnxruntime"], "torch_median_s": statistics.median(times["torch"]),
            "ort_median_s": statistics.median(times["onnxruntime"]),
            "labels_equal": float(np.mean(labels[0] == labels[1]))}


if __name__ == "__main__":
    main()
