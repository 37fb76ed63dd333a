"""Issue 17 (memory part): peak RSS of the streaming ``inferring`` run at 200 and 1000 slices in both storage orders.

Reuses ``bench/run.py`` (``build_ct``: a SYNTHETIC 512x512xN int16 phantom CT stored like KiTS or RAS;
``end_to_end``: one ``ConfigWorkflow("inferring")`` per child process, its own ``VmHWM``). The CTs are kept in
``--workdir`` between runs (building the 1000-slice phantom takes minutes). Results go to stdout as one JSON line
per run; the numbers of the issue are in ``docs/perf_notes/issue17_memory.md``.

    nice python bench/memory_issue17.py --slices 200 1000 --storage kits ras [--preview] [--network pocket|pruned]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.run import build_ct, bundle_network, end_to_end, save_weights  # noqa: E402

NETWORKS = {"pocket": ["configs/inference.json", "configs/networks/pocket_unet_2d.json"],
            "pruned": ["configs/inference.json", "configs/structured.json"]}


def weights(workdir: Path, network: str, features: int = 0) -> Path:
    """Random weights of the network's shapes (latency and memory do not depend on the values)."""
    path = workdir / "weights" / f"{network}{features or ''}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        if network == "pocket":
            net = bundle_network("networks/pocket_unet_2d.json")
            if features:
                from scripts.networks import PocketUNet

                net = PocketUNet(spatial_dims=2, in_channels=1, out_channels=3, features=features, depth=4, pocket=True)
        else:
            from bench.run import build_networks

            net = build_networks(quick=True)["WP-UNet channel-pruned 0.5"]["net"]
        save_weights(net, path)
    return path


def cached_ct(workdir: Path, slices: int, storage: str) -> Path:
    """``build_ct``'s CT, built once per (slices, storage) and kept under ``workdir/cts``."""
    target = workdir / "cts" / f"{storage}_{slices}" / "imaging.nii.gz"
    if not target.is_file():
        ct = build_ct(workdir, slices, storage)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(ct), target)
        shutil.rmtree(ct.parent.parent.parent, ignore_errors=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/issue17_memory"))
    parser.add_argument("--slices", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--storage", nargs="+", default=["kits", "ras"], choices=["kits", "ras"])
    parser.add_argument("--network", default="pocket", choices=sorted(NETWORKS))
    parser.add_argument("--preview", action="store_true", help="write the preview PNG too (bench/run.py: off)")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides id=json")
    parser.add_argument("--features", type=int, default=0,
                        help="Pocket U-Net width (default 16); a narrow one makes the 1000-slice runs quick on a "
                             "loaded machine (its activations are a few MB: the RSS differs by that much)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    extra = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    if args.features:
        extra["network_def#features"] = args.features
    model = weights(args.workdir, args.network, args.features)
    for storage in args.storage:
        for slices in args.slices:
            ct = cached_ct(args.workdir, slices, storage)
            name = f"{args.network} {slices} slices {storage}"
            result = end_to_end(name, ct, NETWORKS[args.network],
                                {"model_path": str(model), "preview": args.preview, **extra}, args.workdir)
            print("MEMORY_RESULT " + json.dumps({"storage": storage, "slices": slices, "network": args.network,
                                                 "preview": args.preview, **extra, **result}), flush=True)


if __name__ == "__main__":
    main()
