"""Train every 2D network of the family with one recipe on the same SYNTHETIC phantoms and compare held-out Dice
with parameters and CPU latency.

``python -m scripts.reports.network_comparison main`` (after ``source tools/setup_venv.sh``) writes
``docs/network_comparison.csv``, ``docs/network_comparison.md`` and ``docs/network_comparison.png`` (Dice vs parameters). Every network is trained by
the bundle's own ``run training`` with its overlay from ``configs/networks/`` at the demo scale (128x128 slices, first
level 16 features), the same phantoms, seed, epochs and steps, then evaluated by ``run evaluating`` on held-out
phantoms that neither training nor model selection saw; ``... remeasure`` re-times the trained configurations (on an
idle machine) without retraining. Synthetic phantoms: the ranking says how the networks learn
this toy task within a CPU budget, not how they segment real CT.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch

from ..common.atomic import atomic_write_text, publish
from .workflow import BUNDLE_ROOT, bundle_command, run_step
from ..synthetic.phantoms import generate_dataset

__all__ = ["NETWORKS", "main"]

# label -> (overlay in configs/networks/, overrides that bring it to the demo scale: first level 16 features)
NETWORKS = {
    "WP-UNet": ("wp_unet", {"network_def#channels": [16, 32, 64, 128, 128], "network_def#dropout": 0.2}),
    "SD-UNet": ("sd_unet", {"network_def#channels": [16, 32, 64, 128, 256],
                            "network_def#norm": ["group", {"num_groups": 8}], "network_def#dropout": 0.2}),
    "U-Net 16-256": ("full_unet_2d", {}),
    "Pocket U-Net 2D": ("pocket_unet_2d", {}),
}
SLICE_SIZE = [128, 128]


def _network_stats(overlay: str, overrides: dict) -> dict:
    """Parameters, MACs and CPU latency of the trained configuration at one 128x128 slice."""
    from monai.bundle import ConfigParser

    from .complexity import cpu_ms_per_slice
    from ..networks import count_macs, count_parameters

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / "inference.json"), str(BUNDLE_ROOT / "configs" / "networks" / f"{overlay}.json")])
    for key, value in overrides.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    shape = [1, 1, *SLICE_SIZE]
    return {"params": count_parameters(net)["trainable"], "macs": count_macs(net, shape),
            "cpu_ms_per_slice": round(cpu_ms_per_slice(net, shape, repeats=5), 2)}


def _measure_all(rows: list[dict]) -> None:
    """Parameters, MACs and latency of every row's network, all in one pass (so the latencies share one machine state)."""
    overrides = {overlay: extra for overlay, extra in NETWORKS.values()}
    for row in rows:
        row.update(_network_stats(row["overlay"], overrides[row["overlay"]]))


def remeasure(docs_dir: str = "docs") -> str:
    """Re-time the networks of an existing ``network_comparison.csv`` (e.g. on an idle machine) and rewrite the docs.

    Dice and training times are kept from the CSV; parameters, MACs and CPU latency are measured again, in one pass.
    """
    docs = (BUNDLE_ROOT / docs_dir).resolve()
    with open(docs / "network_comparison.csv") as f:
        rows = list(csv.DictReader(f))
    budget_line = [line for line in (docs / "network_comparison.md").read_text().splitlines()
                   if "training phantoms" in line][0]
    for row in rows:
        for key in ("kidney_dice", "tumour_dice", "tumour_dice_cases_with_tumour", "train_s"):
            row[key] = float(row[key])
    _measure_all(rows)
    _write(rows, docs, budget_line)
    return str(docs / "network_comparison.md")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, marker, label in (("kidney_dice", "o", "kidney"), ("tumour_dice", "s", "tumour")):
        ax.scatter([r["params"] for r in rows], [r[key] for r in rows], marker=marker, label=label, s=40)
    for r in rows:
        ax.annotate(r["network"], (r["params"], r["kidney_dice"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (demo-scale configuration)")
    ax.set_ylabel("held-out Dice")
    ax.set_ylim(0, 1)
    ax.set_title("SYNTHETIC phantoms: held-out Dice vs parameters", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    publish(tmp, path)


def _write(rows: list[dict], docs: Path, budget: str) -> None:
    columns = ["network", "overlay", "params", "macs", "cpu_ms_per_slice", "kidney_dice", "tumour_dice",
               "tumour_dice_cases_with_tumour", "train_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(docs / "network_comparison.csv", buffer.getvalue())
    lines = ["| network | overlay | params | MACs (128x128) | CPU ms/slice | kidney Dice | tumour Dice | tumour Dice "
             "(cases with tumour) | training s |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['network']} | `{r['overlay']}` | {r['params']:,} | {r['macs'] / 1e6:.0f} M | "
                     f"{r['cpu_ms_per_slice']:.1f} | {r['kidney_dice']:.3f} | {r['tumour_dice']:.3f} | "
                     f"{r['tumour_dice_cases_with_tumour']:.3f} | {r['train_s']:.0f} |")
    text = "\n".join([
        "# Network comparison on SYNTHETIC phantoms (generated)",
        "",
        "Written by `python -m scripts.reports.network_comparison main`. Same synthetic phantoms, seed and budget for every network:",
        budget,
        "Each network is its `configs/networks/` overlay at the demo scale (first level 16 features, 128x128 slices;",
        "WP-UNet and SD-UNet narrowed 4x from the papers' 64, the two plain U-Nets at PocketNet's own width, where",
        "`U-Net 16-256` is also the classic U-Net of paper 002 at a quarter of its width). The paper-width classic",
        "U-Net (31M parameters, 48 GMAC per slice) is not trained here: it does not fit a CPU budget.",
        "Dice is measured by `run evaluating` on held-out phantoms in their original voxel grid (KiTS regions:",
        "kidney = kidney + tumour); a predicted tumour in a tumour-free case scores 0. CPU ms/slice: median of 5",
        f"forward passes of one 128x128 slice at batch 1 with {torch.get_num_threads()} torch thread(s), all networks",
        "timed one after the other in the same run (compare ratios, not absolute times).",
        "**These are synthetic toy results**: they compare learning within a small CPU budget, not accuracy on real CT.",
        "",
        *lines,
        "",
        "![Dice vs parameters](network_comparison.png)",
        "",
    ])
    atomic_write_text(docs / "network_comparison.md", text)
    _plot(rows, docs / "network_comparison.png")


def main(work_dir: str = "demo_output/compare", docs_dir: str = "docs", epochs: int = 20, num_train: int = 48,
         num_test: int = 8, seed: int = 0, networks: str | tuple = "", num_workers: int = 1) -> str:
    """Train and evaluate each network (overlay names in ``networks``, comma-separated; default all)."""
    wanted = networks.split(",") if isinstance(networks, str) else list(networks)
    work, docs = (BUNDLE_ROOT / work_dir).resolve(), (BUNDLE_ROOT / docs_dir).resolve()
    selected = {k: v for k, v in NETWORKS.items() if not networks or v[0] in wanted}
    train_dir, test_dir = work / "data" / "train", work / "data" / "test"
    if not (train_dir.exists() and test_dir.exists()):
        generate_dataset(str(train_dir), num_cases=num_train, seed=seed, in_plane_size=256,
                         slice_thickness_range=(2.5, 5.0))
        generate_dataset(str(test_dir), num_cases=num_test, seed=seed + 1, in_plane_size=256,
                         slice_thickness_range=(2.5, 5.0), first_case=100)
    rows = []
    for label, (overlay, overrides) in selected.items():
        out = work / overlay
        ckpt = out / "models"
        ckpt.mkdir(parents=True, exist_ok=True)
        for stale in ckpt.glob("last_checkpoint_*.pt"):
            stale.unlink()  # every network trains from scratch
        files = ["configs/train.json", f"configs/networks/{overlay}.json"]
        common = {"slice_size": SLICE_SIZE, "seed": seed, "num_workers": num_workers, "ckpt_dir": str(ckpt),
                  **overrides}
        train_s = run_step(bundle_command("training", files, dataset_dir=str(train_dir), epochs=epochs, num_folds=6,
                                          val_interval=10, output_dir=str(out / "training"), progress_bar=False,
                                          **common), out / "training.log")
        run_step(bundle_command("evaluating", [*files, "configs/evaluate.json"], dataset_dir=str(test_dir),
                                evaluate_all_cases=True, output_dir=str(out / "evaluation"), **common),
                 out / "evaluation.log")
        summary = json.loads((out / "evaluation" / "metrics_summary.json").read_text())["metrics"]
        with open(out / "evaluation" / "metrics_per_case.csv") as f:
            cases = list(csv.DictReader(f))
        with_tumour = [float(c["tumour_dice"]) for c in cases if c["tumour_status"] in ("ok", "pred_empty")]
        rows.append({"network": label, "overlay": overlay,
                     "kidney_dice": round(float(summary["kidney_dice"]["mean"]), 4),
                     "tumour_dice": round(float(summary["tumour_dice"]["mean"]), 4),
                     "tumour_dice_cases_with_tumour": round(sum(with_tumour) / max(len(with_tumour), 1), 4),
                     "train_s": round(train_s, 1)})
        print(f"{label}: {rows[-1]}", flush=True)
    _measure_all(rows)
    steps = -(-(num_train - num_train // 6) // 2)
    budget = (f"{num_train} training phantoms (1/6 held for model selection), {epochs} epochs x {steps} steps x 16 "
              f"slices (batch 2 volumes x 8 slices), DiceCE + Adam 1e-3 + cosine schedule; {num_test} further "
              f"phantoms held out for the scores below; {os.cpu_count()} CPU cores.")
    _write(rows, docs, budget)
    return str(docs / "network_comparison.md")


if __name__ == "__main__":
    import fire

    fire.Fire({"main": main, "remeasure": remeasure})
