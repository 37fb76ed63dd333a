"""Issue 17: ``--backend torch`` (the default) vs ``--backend auto``, end to end as the user waits (process time).

On a CPU without native bf16, ``backend auto`` runs ONNX Runtime fp32 with slice batches of 4 (depthwise networks) or
8 (plain), exported once to ``<model_path>.auto.onnx`` (``scripts/inference/fast_path.py``, ``AVX2_RULES``). This
bench times the whole ``inferring`` process (``bench/run.py``'s ``end_to_end``: a fresh child per run) for both
backends on the same SYNTHETIC 512x512x200 CT (``build_ct``), random weights, rounds interleaved so that a shared
machine's load hits both alike. The first ``auto`` run of each network, which exports the ONNX model, is reported
on its own.

    python bench/backend_e2e.py [--rounds 2] [--skip-dense]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import load_average, machine  # noqa: E402
from bench.run import build_ct, bundle_network, end_to_end, save_weights  # noqa: E402


def networks(skip_dense: bool) -> dict[str, tuple[torch.nn.Module, list[str]]]:
    from scripts.pruning.structured import prune_channels

    torch.manual_seed(0)
    wp = bundle_network().eval()
    nets = {
        "WP-UNet channel-pruned 0.5": (prune_channels(wp, torch.rand(1, 1, 256, 256), ratio=0.5, round_to=8).eval(),
                                       ["configs/inference.json", "configs/structured.json"]),
        "Pocket U-Net 2D": (bundle_network("networks/pocket_unet_2d.json").eval(),
                            ["configs/inference.json", "configs/networks/pocket_unet_2d.json"]),
    }
    if not skip_dense:
        torch.manual_seed(0)
        nets["WP-UNet paper (dense)"] = (bundle_network().eval(), ["configs/inference.json"])
    return nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-dense", action="store_true", help="leave out the dense paper WP-UNet (~1 min a run)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / f"backend_e2e_{time.strftime('%Y%m%d')}.json"))
    args = parser.parse_args()
    result = {"machine": machine(), "load_before": load_average(), "synthetic": True, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="backend_e2e_") as tmp:
        work = Path(tmp)
        ct = build_ct(work, 200)
        runs = {}
        for name, (net, configs) in networks(args.skip_dense).items():
            weights = save_weights(net, work / f"{len(runs)}.pt")
            runs[name] = (configs, weights)
            first = end_to_end(f"{name}, backend auto, first run (exports ONNX)", ct, configs,
                               {"model_path": str(weights), "backend": "auto"}, work)
            result["runs"].setdefault(name, {"torch": [], "auto": []})["auto_first_process_s"] = first["process_s"]
        for r in range(args.rounds):
            for name, (configs, weights) in runs.items():
                for backend in ("torch", "auto") if r % 2 == 0 else ("auto", "torch"):
                    one = end_to_end(f"{name}, backend {backend}, round {r}", ct, configs,
                                     {"model_path": str(weights), "backend": backend}, work)
                    result["runs"][name][backend].append(
                        {"process_s": one["process_s"], "run_s": one["run_s"], "peak_rss_mb": one["peak_rss_mb"],
                         "network_s": (one["stages"] or {}).get("network")})
    result["load_after"] = load_average()
    print("\nmedian process s (what the user waits for), torch -> auto:")
    for name, row in result["runs"].items():
        t = statistics.median(x["process_s"] for x in row["torch"])
        a = statistics.median(x["process_s"] for x in row["auto"])
        row["median_process_s"] = {"torch": t, "auto": a, "speed_up": t / a}
        print(f"  {name:30s} {t:7.2f} -> {a:7.2f} s ({t / a:.2f}x); first auto run {row['auto_first_process_s']:.2f} s")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"raw: {args.out}")


if __name__ == "__main__":
    main()
