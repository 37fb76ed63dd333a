"""Pruning sweep on SYNTHETIC phantoms: Dice vs sparsity, and CPU latency dense vs unstructured vs channel-pruned.

1. Generates KiTS-like phantoms (``scripts/synthetic/phantoms.py``): a training set (split into train/validation folds by the
   bundle) and a held-out test set.
2. Trains the demo-size WP-UNet (``configs/demo.json``) briefly with ``run training``.
3. For every sparsity S in ``--sparsities``: ``run pruning`` (global magnitude over conv kernels, the default) with
   ``--finetune-epochs`` of fine-tuning; plus one all-trainable-scope run and one std-rule run at the defaults; plus
   ``run pruning_structured`` (channel pruning).
4. Evaluates every resulting model on the held-out phantoms with ``run evaluating`` (LCC post-processing, original
   grid) and reads the validation-fold Dice before/after pruning/after fine-tuning from each ``pruning_report.json``.
5. Times the forward pass per slice of the dense, unstructured (S = 0.5) and channel-pruned networks in one process,
   interleaved, median of ``--repeats`` rounds.

Writes ``docs/pruning_sweep.csv``, ``docs/pruning_sweep.png`` and a JSON with every number (latency included)
under ``bench/results/``; ``docs/pruning_latency.csv`` comes from ``bench/prune_structured.py``. Everything here
is synthetic data and demo-size weights: it shows how the method
behaves, not accuracy on real CT. Run from the bundle root: ``OMP_NUM_THREADS=1 .venv/bin/python bench/prune_sweep.py``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE_ROOT))

from bench.common import machine, run_workflow, time_per_slice  # noqa: E402
from scripts.common.atomic import atomic_write_text  # noqa: E402
from scripts.synthetic.phantoms import generate_dataset  # noqa: E402

TRAIN, DEMO, PRUNE = "configs/train.json", "configs/demo.json", "configs/prune.json"
EVALUATE, STRUCTURED = "configs/evaluate.json", "configs/structured.json"


def held_out_dice(out: Path, model_path: Path, test_dir: Path, structured: bool, common: dict) -> dict:
    configs = [TRAIN, DEMO, EVALUATE] + ([STRUCTURED] if structured else [])
    run_workflow("evaluating", configs, out / "evaluate.log", dataset_dir=str(test_dir), evaluate_all_cases=True,
                 model_path=str(model_path), output_dir=str(out / "held_out"), **common)
    metrics = json.loads((out / "held_out" / "metrics_summary.json").read_text())["metrics"]
    return {"kidney": metrics["kidney_dice"]["mean"], "tumour": metrics["tumour_dice"]["mean"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["run"] == "magnitude_kernels_global"]
    s = [r["sparsity"] * 100 for r in sweep]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, region in zip(axes, ("kidney", "tumour")):
        ax.plot(s, [r[f"val_{region}_after_pruning"] for r in sweep], "o--", label="validation, after pruning")
        ax.plot(s, [r[f"val_{region}_after_finetuning"] for r in sweep], "o-", label="validation, after fine-tuning")
        ax.plot(s, [r[f"test_{region}"] for r in sweep], "s-", label="held-out test, after fine-tuning")
        ax.set_title(f"{region} Dice")
        ax.set_xlabel("sparsity of conv kernels (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice")
    axes[0].legend(fontsize=8)
    fig.suptitle("WP-UNet magnitude pruning (global, conv kernels) - SYNTHETIC phantoms, demo-size network")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo_output/prune_sweep", help="git-ignored by default")
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-test", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--structured-finetune-epochs", type=int, default=10)
    parser.add_argument("--channel-ratio", type=float, default=0.5)
    parser.add_argument("--sparsities", default="0,0.25,0.5,0.7,0.8,0.9")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--reuse", action="store_true", help="keep phantoms and trained weights of --workdir")
    args = parser.parse_args()

    work = (BUNDLE_ROOT / args.workdir).resolve()
    if work.exists() and not args.reuse:
        shutil.rmtree(work)
    train_dir, test_dir, ckpt = work / "data" / "train", work / "data" / "test", work / "models"
    common = {"num_workers": 0}
    fold = {"num_folds": 4, "dataset_dir": str(train_dir)}
    t0 = time.perf_counter()
    if not (ckpt / "model.pt").exists():
        generate_dataset(str(train_dir), num_cases=args.num_train, seed=10, in_plane_size=256,
                         slice_thickness_range=(2.5, 5.0))
        generate_dataset(str(test_dir), num_cases=args.num_test, seed=11, in_plane_size=256,
                         slice_thickness_range=(2.5, 5.0), first_case=200)
        run_workflow("training", [TRAIN, DEMO], work / "training.log", epochs=args.epochs,
                     val_interval=args.epochs, ckpt_dir=str(ckpt), output_dir=str(work / "training"),
                     progress_bar=False, resume=False, **fold, **common)
    print(f"base model ready after {time.perf_counter() - t0:.0f} s", flush=True)

    runs = [("magnitude_kernels_global", {"sparsity": float(s)}) for s in args.sparsities.split(",")]
    runs += [("magnitude_all_trainable_per_tensor", {"sparsity": 0.5, "prune_scope": "all_trainable",
                                                     "prune_global": False}),
             ("std_rule_kernels", {"prune_method": "std", "std_ratio": 0.67})]
    rows = []
    for name, overrides in runs:
        tag = f"{name}_{overrides.get('sparsity', 'std')}"
        out = work / tag
        out.mkdir(parents=True, exist_ok=True)
        pruned = ckpt / f"{tag}.pt"
        run_workflow("pruning", [TRAIN, DEMO, PRUNE], out / "pruning.log", ckpt_dir=str(ckpt),
                     output_dir=str(out), pruned_model_path=str(pruned),
                     sparse_model_path=str(ckpt / f"{tag}.sparse.pt"), finetune_epochs=args.finetune_epochs,
                     progress_bar=False, **overrides, **fold, **common)
        report = json.loads((out / "pruning_report.json").read_text())
        test = held_out_dice(out, pruned, test_dir, False, common)
        dice = report["dice"]
        rows.append({"run": name, "sparsity": report["sparsity"] if name != "magnitude_kernels_global"
                     else overrides["sparsity"], "overall_sparsity": report["sparsity"],
                     "nonzero_params": report["nonzero_params"], "total_params": report["total_params"],
                     "dense_bytes": report["file_sizes_bytes"]["dense"],
                     "sparse_bytes": report["file_sizes_bytes"]["sparse"],
                     **{f"val_{r}_{stage}": dice[stage][f"val_{r}_dice"] for r in ("kidney", "tumour")
                        for stage in ("before_pruning", "after_pruning", "after_finetuning")},
                     "test_kidney": test["kidney"], "test_tumour": test["tumour"]})

    out = work / "structured"
    out.mkdir(parents=True, exist_ok=True)
    structured = ckpt / "structured.pt"
    run_workflow("pruning_structured", [TRAIN, DEMO, PRUNE], out / "pruning.log", ckpt_dir=str(ckpt),
                 output_dir=str(out), structured_model_path=str(structured), channel_ratio=args.channel_ratio,
                 finetune_epochs=args.structured_finetune_epochs, progress_bar=False, **fold, **common)
    s_report = json.loads((out / "structured_pruning_report.json").read_text())
    s_test = held_out_dice(out, structured, test_dir, True, common)
    (work / "dense_eval").mkdir(parents=True, exist_ok=True)
    dense_test = held_out_dice(work / "dense_eval", ckpt / "model.pt", test_dir, False, common)

    # latency: the three networks in one process, interleaved
    from scripts.networks import WPUNet
    from scripts.pruning import load_structured

    def demo_net() -> WPUNet:
        return WPUNet(channels=(16, 32, 64, 128, 128), dropout=0.2).eval()

    def loaded(path: Path) -> WPUNet:
        net = demo_net()
        checkpoint = torch.load(path, weights_only=True)
        net.load_state_dict(checkpoint.get("model", checkpoint))  # {"model": ...}; older runs: a bare state dict
        return net

    models = {"dense": loaded(ckpt / "model.pt"), "unstructured_50": loaded(ckpt / "magnitude_kernels_global_0.5.pt"),
              "structured": load_structured(demo_net(), structured).eval()}
    latency = []
    # one thread: the bundle's machine has 2 cores shared with other jobs, where 2-thread timings are noise
    for threads in (1,):
        torch.set_num_threads(threads)
        for size in (128, 256):
            per_slice = time_per_slice(models, size, batch=4, repeats=args.repeats, iters=3 if size == 256 else 8)
            latency.append({"threads": threads, "slice_size": size,
                            **{f"{k}_ms": round(v * 1e3, 3) for k, v in per_slice.items()},
                            "speedup_unstructured": round(per_slice["dense"] / per_slice["unstructured_50"], 3),
                            "speedup_structured": round(per_slice["dense"] / per_slice["structured"], 3)})
            print(latency[-1], flush=True)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}

    docs = BUNDLE_ROOT / args.docs
    header = "# SYNTHETIC phantoms, demo-size WP-UNet (configs/demo.json); not results on real CT\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    atomic_write_text(docs / "pruning_sweep.csv", header + buffer.getvalue())
    # the latency table of docs/pruning.md (docs/pruning_latency.csv) comes from bench/prune_structured.py
    plot(rows, docs / "pruning_sweep.png")
    result = {"synthetic": True, "args": vars(args), "machine": machine(), "rows": rows, "latency": latency,
              "params": params, "dense_test": dense_test, "structured": {
                  "report_dice": s_report["dice"], "test": s_test, "total_params": s_report["total_params"],
                  "params_before": s_report["params_before"]["total_params"]},
              "seconds": round(time.perf_counter() - t0)}
    results = BUNDLE_ROOT / "bench" / "results" / f"prune_sweep_{time.strftime('%Y%m%d')}.json"
    atomic_write_text(results, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("params", "dense_test", "structured", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
