"""End-to-end demo on SYNTHETIC phantoms: data -> training -> evaluation -> pruning -> inference, on this machine.

Every step is the bundle's real command line (printed before it runs), so the demo doubles as a usage
example. Outputs (under ``demo_output/``): the phantoms, training logs and TensorBoard files, the
evaluation CSV/JSON on held-out phantoms, segmentations of a held-out phantom, and ``demo_output/RESULTS.md``;
the trained weights go to ``models/model.pt``. Weights and scores come from synthetic data: they show the
pipeline works, not that it segments real CT.

Run ``bash demo.sh`` (sets up the environment) or ``python -m scripts.demo --epochs 5``.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from .reports.workflow import BUNDLE_ROOT, bundle_command, run_step
from .synthetic.kits_shapes import list_kits_masks, split_kits_masks
from .synthetic.phantoms import generate_dataset

DEMO_OVERLAY = "configs/demo.json"
#: Training-only overlay: intensity/resolution domain randomisation for synthetic training (issue 18).
SYNTHETIC_TRAIN_OVERLAY = "configs/synthetic_train.json"
#: Real KiTS23 masks (CC BY-NC-SA, read at run time, never copied); absent -> procedural kidney shapes only.
KITS_MASKS_DIR = BUNDLE_ROOT.parent / "shared" / "data" / "kits23_masks"


def main(output_dir: str = "demo_output", num_train: int = 48, num_test: int = 8, epochs: int = 30,
         in_plane_size: int = 256, seed: int = 0, num_workers: int = 1, fresh: bool = True,
         sparsity: float = 0.5, finetune_epochs: int = 3, models_dir: str = "models",
         kits_masks_dir: str = str(KITS_MASKS_DIR)) -> str:
    """Run the demo; returns the path of the results page (synthetic phantoms). Weights go to ``models_dir``."""
    out = (BUNDLE_ROOT / output_dir).resolve()
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    models = (BUNDLE_ROOT / models_dir).resolve()
    models.mkdir(parents=True, exist_ok=True)
    for stale in models.glob("last_checkpoint_*.pt"):
        stale.unlink()  # a demo starts training afresh; real runs resume from these
    print("=" * 78)
    print("DEMO ON SYNTHETIC PHANTOMS - not real patients, not evidence of clinical accuracy")
    print(f"network: WP-UNet narrowed by {DEMO_OVERLAY} (channels 16-128, dropout 0.2, 128x128 slices) for a CPU demo;")
    print("the bundle default is the paper's 64-512 network on 256x256 slices")
    print("=" * 78)

    t0 = time.perf_counter()
    train_dir, test_dir = out / "data" / "train", out / "data" / "test"
    # Training kidneys: procedural, plus real KiTS23 shapes for half of the cases when the masks are here
    # (only the training split of the masks; the rest are kept for the independent check set).
    train_masks = split_kits_masks(list_kits_masks(kits_masks_dir))[0]
    kidney_source = (f"procedural + {len(train_masks)} KiTS23 masks ({kits_masks_dir})" if train_masks
                     else "procedural only (KiTS23 masks not found)")
    generate_dataset(str(train_dir), num_cases=num_train, seed=seed, in_plane_size=in_plane_size,
                     slice_thickness_range=(2.5, 5.0), kidney_masks=train_masks)
    generate_dataset(str(test_dir), num_cases=num_test, seed=seed + 1, in_plane_size=in_plane_size,
                     slice_thickness_range=(2.5, 5.0), first_case=100)
    print(f"\nsynthetic phantoms: {num_train} for training/validation in {train_dir}, "
          f"{num_test} held out in {test_dir} ({time.perf_counter() - t0:.0f} s); training kidneys: {kidney_source}")

    timings = {}
    # train from the slice cache (issue 16): each phantom preprocessed once into cache_dir, slices read memory-mapped
    cache_dir = str(out / "cache")
    timings["training"] = run_step(bundle_command(
        "training", ["configs/train.json", DEMO_OVERLAY, SYNTHETIC_TRAIN_OVERLAY], dataset_dir=str(train_dir), epochs=epochs,
        num_folds=6, val_interval=10, output_dir=str(out / "training"), num_workers=num_workers,
        progress_bar=False, ckpt_dir=str(models), cache_dir=cache_dir), out / "training.log")
    timings["evaluation"] = run_step(bundle_command(
        "evaluating", ["configs/train.json", DEMO_OVERLAY, "configs/evaluate.json"], dataset_dir=str(test_dir),
        evaluate_all_cases=True, output_dir=str(out / "evaluation"), num_workers=num_workers, ckpt_dir=str(models)),
        out / "evaluation.log")
    # WP-UNet's post-training magnitude pruning (paper 000): prune, fine-tune with the masks fixed (validation fold
    # of the training phantoms), then evaluate the pruned weights on the same held-out phantoms
    timings["pruning"] = run_step(bundle_command(
        "pruning", ["configs/train.json", DEMO_OVERLAY, SYNTHETIC_TRAIN_OVERLAY, "configs/prune.json"], dataset_dir=str(train_dir),
        num_folds=6, sparsity=sparsity, finetune_epochs=finetune_epochs, output_dir=str(out / "pruning"),
        num_workers=num_workers, progress_bar=False, ckpt_dir=str(models), cache_dir=cache_dir), out / "pruning.log")
    timings["evaluation_pruned"] = run_step(bundle_command(
        "evaluating", ["configs/train.json", DEMO_OVERLAY, "configs/evaluate.json"], dataset_dir=str(test_dir),
        evaluate_all_cases=True, model_name="model_pruned", output_dir=str(out / "evaluation_pruned"),
        num_workers=num_workers, ckpt_dir=str(models)), out / "evaluation_pruned.log")
    first_test_case = sorted(test_dir.glob("case_*"))[0]
    timings["inference"] = run_step(bundle_command(
        "inferring", ["configs/inference.json", DEMO_OVERLAY], input_path=str(first_test_case),
        output_dir=str(out / "inference"), model_path=str(models / "model.pt")), out / "inference.log")

    summary = json.loads((out / "evaluation" / "metrics_summary.json").read_text())
    pruned = {"summary": json.loads((out / "evaluation_pruned" / "metrics_summary.json").read_text()),
              "report": json.loads((out / "pruning" / "pruning_report.json").read_text())}
    report = _write_report(out, summary, timings, first_test_case, models, pruned, kidney_source)
    print("\n" + report)
    return str(out / "RESULTS.md")


def _pruning_lines(pruned: dict, dense_kidney: float, dense_tumour: float) -> list[str]:
    report, metrics = pruned["report"], pruned["summary"]["metrics"]
    kidney, tumour = float(metrics["kidney_dice"]["mean"]), float(metrics["tumour_dice"]["mean"])
    sizes = report["file_sizes_bytes"]
    return [
        "## Pruned model (WP-UNet post-training magnitude pruning)",
        "",
        f"{report['sparsity_target']:.0%} of the conv kernels zeroed by global magnitude "
        f"({report['method']}, scope {report['scope']}), fine-tuned {report['finetune_epochs']} epochs with the masks "
        f"fixed: {report['nonzero_params']:,} of {report['total_params']:,} parameters remain nonzero "
        f"(sparsity {report['sparsity']:.1%}). Weights: {sizes['dense'] / 1e6:.2f} MB dense, "
        f"{sizes['sparse'] / 1e6:.2f} MB as the compressed sparse file.",
        "",
        "| model | kidney Dice | tumour Dice |",
        "|---|---|---|",
        f"| dense | {dense_kidney:.3f} | {dense_tumour:.3f} |",
        f"| pruned + fine-tuned | {kidney:.3f} | {tumour:.3f} |",
        "",
        "Same held-out synthetic phantoms. Unstructured zeros shrink the file, not the CPU time (dense convs);",
        "`docs/pruning.md` has the sparsity sweep and channel pruning. Per-stage Dice on the validation fold:",
        f"{Path('pruning') / 'pruning_report.json'}.",
        "",
    ]


def _write_report(out: Path, summary: dict, timings: dict, case: Path, models: Path,
                  pruned: dict | None = None, kidney_source: str = "procedural") -> str:
    metrics = summary["metrics"]

    def mean(metric: str) -> float:
        return float(metrics[metric]["mean"])

    kidney, tumour = mean("kidney_dice"), mean("tumour_dice")
    with open(out / "evaluation" / "metrics_per_case.csv") as f:
        cases = list(csv.DictReader(f))
    with_tumour = [float(c["tumour_dice"]) for c in cases if c["tumour_status"] in ("ok", "pred_empty")]
    verdict = ("reached" if kidney >= 0.90 and tumour >= 0.60 else "NOT reached") + \
        " the demo target (kidney >= 0.90, tumour >= 0.60)"
    rows = [f"| {name} | {metrics[name]['mean']:.3f} | {metrics[name]['std']:.3f} | {metrics[name]['n']} |"
            for name in metrics if name.endswith(("_dice", "_nsd", "_hd95_mm")) and metrics[name]["n"]]
    text = "\n".join([
        "# Demo results - SYNTHETIC phantoms",
        "",
        "Held-out synthetic phantoms (never seen in training or model selection). These numbers show that",
        "the pipeline works end to end; they say nothing about accuracy on real CT.",
        f"Training kidneys: {kidney_source}; held-out phantoms: procedural.",
        "",
        "| metric | mean | std | n |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Kidney Dice {kidney:.3f}, tumour Dice {tumour:.3f}: {verdict}. Tumour Dice counts a false-positive",
        f"tumour in a case without one as 0 (KiTS convention); over the {len(with_tumour)} cases that have a tumour "
        f"it is {sum(with_tumour) / max(len(with_tumour), 1):.3f}.",
        "",
        *(_pruning_lines(pruned, kidney, tumour) if pruned else []),
        "Time: " + ", ".join(f"{step.replace('_', ' ')} {seconds:.0f} s" for step, seconds in timings.items()) + ".",
        "",
        "Where things are:",
        f"- weights (synthetic demo, narrow network of {DEMO_OVERLAY}): {models / 'model.pt'}; "
        f"pruned: model_pruned.pt beside it, derived/model_pruned.sparse.pt",
        f"- per-case metrics: {out / 'evaluation' / 'metrics_per_case.csv'}",
        f"- segmentation of {case.name}: {out / 'inference' / (case.name + '.nii.gz')} "
        f"(volumes: {case.name}_volumes.json); open it over {case / 'imaging.nii.gz'} in 3D Slicer or ITK-SNAP",
        f"- training log and TensorBoard: {out / 'training.log'}, {out / 'training' / 'tensorboard'}",
    ])
    (out / "RESULTS.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    import fire

    fire.Fire(main)
