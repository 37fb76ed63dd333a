"""Channel pruning vs the dense model on SYNTHETIC phantoms: CPU latency per slice and Dice, in one run.

The table of ``docs/pruning.md`` ("Channel pruning: the aim") comes from this script:

1. Phantoms (``scripts/synthetic/phantoms.py``): ``--num-train`` training cases (split into train / validation folds by the
   bundle, fold 0 of 4) and ``--num-test`` held-out cases; the demo-size WP-UNet (``configs/demo.json``) trained
   ``--epochs`` epochs with ``run training``. ``--reuse`` keeps both (and every finished run below).
2. The fair baseline: the **dense** model given the same ``--finetune-epochs`` at ``--finetune-lr`` (cosine) as the
   pruned ones (``run pruning_structured`` with nothing pruned), because on an under-trained base model the
   fine-tuning epochs are also extra training.
3. Unstructured: ``run pruning`` (global magnitude, ``--sparsity`` of the conv kernels), same fine-tuning.
4. Channel pruning: ``run pruning_structured`` for each setting of ``--patterns`` (default: uniform ratio 0.5, kept
   channels a multiple of 8, as ``configs/prune_channels.json``), same fine-tuning.
5. Dice: validation fold (from each run's report: resampled grid, no LCC) and held-out phantoms (``run evaluating``,
   original grid, LCC), with the per-case difference to the dense baseline (mean +- standard error, paired).
6. Latency: every model in one process, interleaved rounds, median ms per slice, one thread, at 128x128 (the demo's
   slice size) and 256x256.

Writes ``docs/pruning_structured.csv``, ``docs/pruning_latency.csv``, the table between the ``prune_structured``
markers of ``docs/pruning.md`` and ``bench/results/prune_structured_<date>.json``. Synthetic data and demo-size
weights: the numbers show how the methods behave, not accuracy on real CT. Run from the bundle root:
``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python bench/prune_structured.py`` (about 50 min on one core).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE_ROOT))

from bench.common import load_average, machine, run_workflow, time_per_slice  # noqa: E402
from bench.prune_sweep import DEMO, EVALUATE, PRUNE, STRUCTURED, TRAIN  # noqa: E402
from scripts.common.atomic import atomic_write_text, replace_marked_block  # noqa: E402
from scripts.synthetic.phantoms import generate_dataset  # noqa: E402

# configs/prune_channels.json's setting (its fine-tuning comes from --finetune-epochs / --finetune-lr)
DEFAULT_PATTERNS = {"uniform_0.5": {"channel_ratio": 0.5, "channel_stage_ratios": {}, "channel_round_to": 8}}
MARKERS = ("<!-- prune_structured:start -->", "<!-- prune_structured:end -->")


def held_out(out: Path, model_path: Path, test_dir: Path, structured: bool) -> dict:
    """``run evaluating`` on every held-out case: mean Dice and the per-case values (for paired differences)."""
    configs = [TRAIN, DEMO, EVALUATE] + ([STRUCTURED] if structured else [])
    run_workflow("evaluating", configs, out / "evaluate.log", dataset_dir=str(test_dir), evaluate_all_cases=True,
                 model_path=str(model_path), output_dir=str(out / "held_out"), num_workers=0)
    summary = json.loads((out / "held_out" / "metrics_summary.json").read_text())["metrics"]
    with open(out / "held_out" / "metrics_per_case.csv") as f:
        cases = {row["case"]: {r: float(row[f"{r}_dice"]) for r in ("kidney", "tumour")} for row in csv.DictReader(f)}
    return {"kidney": summary["kidney_dice"]["mean"], "tumour": summary["tumour_dice"]["mean"], "cases": cases}


def paired(cases: dict, baseline: dict, region: str) -> tuple[float, float]:
    """Mean and standard error of the per-case Dice difference (model - baseline) over the common cases."""
    diffs = [cases[c][region] - baseline[c][region] for c in cases
             if c in baseline and not math.isnan(cases[c][region]) and not math.isnan(baseline[c][region])]
    if len(diffs) < 2:
        return float("nan"), float("nan")
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def run_once(work: Path, tag: str, settings: dict, reuse: bool, runner) -> dict:
    """Run ``runner()`` unless ``--reuse`` and ``<work>/<tag>/row.json`` holds a result of the same settings."""
    out = work / tag
    cached = out / "row.json"
    if reuse and cached.is_file():
        row = json.loads(cached.read_text())
        if row.get("settings") == settings:
            print(f"reusing {cached}", flush=True)
            return row
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    row = {"settings": settings, **runner(out)}
    atomic_write_text(cached, json.dumps(row, indent=2) + "\n")
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| model | params | ms/slice 128x128 (speed-up) | ms/slice 256x256 (speed-up) | val kidney | val tumour "
            "| held-out kidney (vs dense+FT) | held-out tumour (vs dense+FT) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        def diff(region):
            if r["tag"] == "dense_ft":
                return f"{r[f'test_{region}']:.3f}"
            return (f"{r[f'test_{region}']:.3f} ({r[f'test_{region}_diff']:+.3f} +- "
                    f"{r[f'test_{region}_diff_se']:.3f})")
        lines.append(f"| {r['label']} | {r['params']:,} | {r['ms_128']:.2f} ({r['speedup_128']:.2f}x) | "
                     f"{r['ms_256']:.2f} ({r['speedup_256']:.2f}x) | {r['val_kidney']:.3f} | {r['val_tumour']:.3f} | "
                     f"{diff('kidney')} | {diff('tumour')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo_output/prune_structured", help="git-ignored by default")
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-test", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--finetune-epochs", type=int, default=40)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--sparsity", type=float, default=0.5, help="unstructured run (global magnitude, kernels)")
    parser.add_argument("--patterns", type=json.loads, default=DEFAULT_PATTERNS,
                        help="JSON {name: {prune.json id: value}} of channel-pruning settings, e.g. "
                             '\'{"shallow": {"channel_ratio": 0.0, "channel_stage_ratios": {"encoder.stages.0": 0.5}}}\'; '
                             "{} inside = the defaults of configs/prune.json")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--docs", default="docs", help="folder of pruning.md and the CSV files")
    parser.add_argument("--results-dir", default="bench/results", help="folder of the JSON with every number")
    parser.add_argument("--reuse", action="store_true", help="keep phantoms, base weights and finished runs")
    parser.add_argument("--patterns-only", action="store_true",
                        help="run (and cache) only --patterns, no baselines, latency or docs: lets several settings "
                             "run in parallel processes; then rerun with --reuse for the table")
    args = parser.parse_args()

    work = (BUNDLE_ROOT / args.workdir).resolve()
    if work.exists() and not args.reuse:
        shutil.rmtree(work)
    train_dir, test_dir, ckpt = work / "data" / "train", work / "data" / "test", work / "models"
    fold = {"num_folds": 4, "dataset_dir": str(train_dir), "num_workers": 0, "progress_bar": False}
    t0 = time.perf_counter()
    base = ckpt / "model.pt"
    if not base.exists():
        generate_dataset(str(train_dir), num_cases=args.num_train, seed=10, in_plane_size=256,
                         slice_thickness_range=(2.5, 5.0))
        generate_dataset(str(test_dir), num_cases=args.num_test, seed=11, in_plane_size=256,
                         slice_thickness_range=(2.5, 5.0), first_case=200)
        run_workflow("training", [TRAIN, DEMO], work / "training.log", epochs=args.epochs,
                     val_interval=args.epochs, ckpt_dir=str(ckpt), output_dir=str(work / "training"), resume=False,
                     **fold)
    print(f"base model ready after {time.perf_counter() - t0:.0f} s", flush=True)
    finetune = {"finetune_epochs": args.finetune_epochs, "finetune_learning_rate": args.finetune_lr}

    def structured_runner(tag: str, overrides: dict):
        def run(out: Path) -> dict:
            model = ckpt / f"{tag}.pt"
            run_workflow("pruning_structured", [TRAIN, DEMO, PRUNE], out / "pruning.log", ckpt_dir=str(ckpt),
                         output_dir=str(out), structured_model_path=str(model), **finetune, **overrides, **fold)
            report = json.loads((out / "structured_pruning_report.json").read_text())
            return {"model": str(model), "structured": True, "report_dice": report["dice"],
                    "stage_ratios": report["stage_ratios"], "channel_ratio": report["channel_ratio"],
                    "round_to": report["round_to"], "test": held_out(out, model, test_dir, True)}
        return run

    def unstructured_runner(out: Path) -> dict:
        model = ckpt / "unstructured.pt"
        run_workflow("pruning", [TRAIN, DEMO, PRUNE], out / "pruning.log", ckpt_dir=str(ckpt),
                     output_dir=str(out), pruned_model_path=str(model),
                     sparse_model_path=str(ckpt / "unstructured.sparse.pt"), sparsity=args.sparsity, **finetune,
                     **fold)
        report = json.loads((out / "pruning_report.json").read_text())
        return {"model": str(model), "structured": False, "report_dice": report["dice"],
                "test": held_out(out, model, test_dir, False)}

    # the dense baseline runs through the same code path with nothing pruned
    nothing = {"channel_ratio": 0.0, "channel_stage_ratios": {}}
    if args.patterns_only:
        for name, overrides in args.patterns.items():
            run_once(work, name, {**finetune, **overrides}, args.reuse, structured_runner(name, overrides))
        return
    unstructured = run_once(work, "unstructured", {**finetune, "sparsity": args.sparsity}, args.reuse,
                            unstructured_runner)
    runs = {"dense_ft": run_once(work, "dense_ft", {**finetune, **nothing}, args.reuse,
                                 structured_runner("dense_ft", nothing)),
            f"unstructured_{args.sparsity}": unstructured}
    for name, overrides in args.patterns.items():
        runs[name] = run_once(work, name, {**finetune, **overrides}, args.reuse, structured_runner(name, overrides))
    base_test = run_once(work, "dense_base", {}, args.reuse,
                         lambda out: {"model": str(base), "structured": False, "test": held_out(out, base, test_dir, False)})

    # latency: every model in one process, interleaved rounds, one thread
    from scripts.networks import WPUNet
    from scripts.pruning import load_structured

    def load(row: dict) -> torch.nn.Module:
        net = WPUNet(channels=(16, 32, 64, 128, 128), dropout=0.2)
        if row["structured"]:
            return load_structured(net, row["model"]).eval()
        checkpoint = torch.load(row["model"], weights_only=True)
        net.load_state_dict(checkpoint.get("model", checkpoint))
        return net.eval()

    models = {"dense": load(base_test), **{name: load(row) for name, row in runs.items() if name != "dense_ft"}}
    torch.set_num_threads(1)
    latency = {}
    for size in (128, 256):
        per_slice = time_per_slice(models, size, batch=4, repeats=args.repeats, iters=3 if size == 256 else 8)
        latency[size] = {name: seconds * 1e3 for name, seconds in per_slice.items()}
        print(size, {k: round(v, 2) for k, v in latency[size].items()}, flush=True)
    latency_of = {name: ("dense" if name == "dense_ft" else name) for name in runs}

    table = []
    baseline = runs["dense_ft"]["test"]["cases"]
    # the base model itself (no fine-tuning): its validation Dice is the dense run's "before_pruning"
    runs["dense_base"] = {**base_test, "report_dice": {"after_finetuning": runs["dense_ft"]["report_dice"]["before_pruning"]}}
    latency_of["dense_base"] = "dense"
    labels = {"dense_ft": "dense + same fine-tuning (baseline)", "dense_base": "dense base model, no fine-tuning",
              f"unstructured_{args.sparsity}": f"unstructured {args.sparsity:.0%} of conv kernels (zeros)"}
    for name, row in runs.items():
        after = row["report_dice"].get("after_finetuning", row["report_dice"].get("after_pruning"))
        timed = latency_of[name]
        entry = {"tag": name, "label": labels.get(name, f"channel-pruned: {name}"),
                 "params": sum(p.numel() for p in (models[timed] if timed != "dense" else models["dense"]).parameters()),
                 "ms_128": latency[128][timed], "ms_256": latency[256][timed],
                 "speedup_128": latency[128]["dense"] / latency[128][timed],
                 "speedup_256": latency[256]["dense"] / latency[256][timed],
                 "val_kidney": after["val_kidney_dice"], "val_tumour": after["val_tumour_dice"],
                 "test_kidney": row["test"]["kidney"], "test_tumour": row["test"]["tumour"],
                 "settings": json.dumps(row["settings"], sort_keys=True)}
        for region in ("kidney", "tumour"):
            entry[f"test_{region}_diff"], entry[f"test_{region}_diff_se"] = paired(row["test"]["cases"], baseline, region)
        table.append(entry)
    if any(r["tag"] == "dense_ft" for r in table):  # the dense baseline first
        table.sort(key=lambda r: {"dense_ft": 0, "dense_base": 1}.get(r["tag"], 2))

    docs = BUNDLE_ROOT / args.docs
    header = "# SYNTHETIC phantoms, demo-size WP-UNet (configs/demo.json); not results on real CT\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in table)
    atomic_write_text(docs / "pruning_structured.csv", header + buffer.getvalue())
    buffer = io.StringIO()
    buffer.write("threads,slice_size," + ",".join(f"{m}_ms" for m in models) + ","
                 + ",".join(f"speedup_{m}" for m in models if m != "dense") + "\n")
    for size, values in latency.items():
        buffer.write(f"1,{size}," + ",".join(f"{values[m]:.3f}" for m in models) + ","
                     + ",".join(f"{values['dense'] / values[m]:.3f}" for m in models if m != "dense") + "\n")
    atomic_write_text(docs / "pruning_latency.csv", header + buffer.getvalue())
    block = markdown(table)
    replace_marked_block(docs / "pruning.md", *MARKERS, block, append_if_missing=False)
    result = {"synthetic": True, "args": vars(args), "machine": machine(), "load_average": load_average(),
              "dense_base_test": {k: base_test["test"][k] for k in ("kidney", "tumour")},
              "runs": runs, "latency_ms": latency, "table": table, "seconds": round(time.perf_counter() - t0)}
    results = BUNDLE_ROOT / args.results_dir / f"prune_structured_{time.strftime('%Y%m%d')}.json"
    atomic_write_text(results, json.dumps(result, indent=2) + "\n")
    print(block)
    print(f"dense base model (no fine-tuning), held-out: kidney {base_test['test']['kidney']:.3f}, "
          f"tumour {base_test['test']['tumour']:.3f}")


if __name__ == "__main__":
    main()
