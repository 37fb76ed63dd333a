"""Training on a lent GPU: the slice cache against today's path (issue 16) and the long synthetic recipe (issue 18).

Run once on a machine with a GPU, from the bundle root, with the bundle's requirements installed. All data are
SYNTHETIC (generated here); nothing is read from outside the bundle except the KiTS23 masks folder given by
``--kits_masks`` (read at run time, as the demo does).

Part ``cache`` (issue 16): ``--cases`` KiTS-size volumes (``bench/cache_bench.py``'s generator, 512x512, 100-400
slices, stored like KiTS) are preprocessed into the slice cache, then ``run training`` (train.json, default
WP-UNet at 256x256, AMP) runs ``--iterations`` iterations twice with ``--workers`` DataLoader workers: from the
cache, and today's path (``--cache_rate 0.2``, whole volumes). Training slices/s is timed from the log's iteration
lines (the first ``--warmup`` iterations excluded) and GPU utilisation is sampled with nvidia-smi every 0.5 s.

Part ``synthetic`` (issue 18): the demo's phantoms (half on the KiTS23 training-split kidneys) but ``--phantoms``
of them, trained with the demo's overlays (demo.json, synthetic_train.json) from the cache: a 1-epoch probe times an
epoch (and builds the cache), then the same command runs as many epochs as fit in ``--train_seconds`` (a fresh run:
the cosine learning-rate schedule spans ``--epochs``).
The best weights are copied to ``<out>/model_synthetic_gpu.pt``.

    python bench/gpu_training.py --out OUT --parts cache synthetic
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

ITERATION = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+)")


class GpuSampler:
    """nvidia-smi utilisation (%) and memory (MiB) every 0.5 s while active."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._process = None

    def __enter__(self) -> "GpuSampler":
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                util, mem = (float(v) for v in line.split(","))
                self.samples.append((util, mem))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._process:
            self._process.terminate()

    def summary(self, skip: int = 0) -> dict:
        values = self.samples[skip:]
        if not values:
            return {"gpu_util_mean_pct": None}
        utils = [u for u, _ in values]
        return {"gpu_util_mean_pct": round(sum(utils) / len(utils), 1), "gpu_util_samples": len(utils),
                "gpu_mem_max_mib": max(m for _, m in values)}


def run_timed(args: list[str], log: Path, slices_per_iteration: int, warmup: int, timeout: float) -> dict:
    """Run a training command; slices/s between the ``warmup``-th and last logged iteration; GPU utilisation."""
    stamps: list[float] = []
    started = time.perf_counter()
    with GpuSampler() as gpu, open(log, "w") as out:
        process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first_sample = None
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        for line in process.stdout:
            out.write(line)
            if ITERATION.search(line):
                stamps.append(time.perf_counter())
                if len(stamps) == warmup + 1:
                    first_sample = len(gpu.samples)
        process.wait()
        timer.cancel()
        util = gpu.summary(skip=first_sample or 0)
    result = {"returncode": process.returncode, "wall_s": round(time.perf_counter() - started, 1),
              "iterations_logged": len(stamps), **util}
    if stamps:
        result["first_iteration_s"] = round(stamps[0] - started, 1)
    if len(stamps) > warmup + 1:
        seconds = stamps[-1] - stamps[warmup]
        result["train_slices_per_s"] = round((len(stamps) - 1 - warmup) * slices_per_iteration / seconds, 1)
    return result


def bundle(run_id: str, configs: list[str], **overrides) -> list[str]:
    from scripts.reports.workflow import bundle_command

    return bundle_command(run_id, configs, **overrides)


def _phantoms(task: tuple) -> None:
    from scripts.synthetic.phantoms import generate_dataset

    out_dir, first, seed, masks = task
    generate_dataset(out_dir, num_cases=1, seed=seed, in_plane_size=256, slice_thickness_range=(2.5, 5.0),
                     first_case=first, kidney_masks=masks)


def part_cache(args, out: Path, work: Path, results: dict) -> None:
    from cache_bench import generate  # the same SYNTHETIC KiTS-size cases as the CPU cache benchmark

    data, cache = work / "kits_size", work / "kits_cache"
    started = time.perf_counter()
    depths = generate(data, args.cases, seed=0, workers=args.workers)
    part = {"cases": args.cases, "slices": sum(depths), "generation_s": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    folds = min(5, args.cases)
    subprocess.run(bundle("preprocessing", ["configs/train.json"], dataset_dir=str(data), cache_dir=str(cache),
                          num_folds=folds, preprocessing_workers=args.workers), cwd=REPO, check=True,
                   stdout=open(out / "cache_preprocessing.log", "w"), stderr=subprocess.STDOUT)
    part["preprocessing_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(part), flush=True)
    common = dict(dataset_dir=str(data), num_folds=folds, epochs=1, num_workers=args.workers, progress_bar=False, resume=False,
                  val_interval=1000, **{"train#trainer#epoch_length": args.iterations})
    for name, extra in (("cache", {"cache_dir": str(cache)}), ("cache_rate_0.2", {"cache_rate": 0.2})):
        run = run_timed(bundle("training", ["configs/train.json", *args.overlays], ckpt_dir=str(work / f"ckpt_{name}"),
                               output_dir=str(work / f"train_{name}"), **common, **extra),
                        out / f"train_{name}.log", slices_per_iteration=16, warmup=args.warmup,
                        timeout=args.path_timeout)
        part[name] = run
        print(name, json.dumps(run), flush=True)
    results["cache"] = part


def part_synthetic(args, out: Path, work: Path, results: dict) -> None:
    from scripts.synthetic.kits_shapes import list_kits_masks, split_kits_masks

    masks = split_kits_masks(list_kits_masks(args.kits_masks))[0] if args.kits_masks else []
    data = work / "phantoms"
    started = time.perf_counter()
    # one case per task: a case's seed depends only on its index, so this equals one generate_dataset call
    tasks = [(str(data), c, 0, masks) for c in range(args.phantoms)]
    with multiprocessing.Pool(args.workers) as pool:
        pool.map(_phantoms, tasks)
    part = {"phantoms": args.phantoms, "kits_masks": len(masks), "generation_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(part), flush=True)
    configs = ["configs/train.json", "configs/demo.json", "configs/synthetic_train.json"]
    common = dict(dataset_dir=str(data), cache_dir=str(work / "phantom_cache"), num_folds=6,
                  num_workers=args.workers, preprocessing_workers=args.workers, progress_bar=False,
                  ckpt_dir=str(work / "models"),
                  output_dir=str(work / "synthetic_training"), val_interval=args.val_interval)
    budget_end = time.perf_counter() + args.train_seconds
    # a 1-epoch probe (own checkpoint folder: the cosine schedule's length is fixed by --epochs, so the real run
    # starts fresh) builds the phantoms' cache and times an epoch with its validation
    probe = run_timed(bundle("training", configs, epochs=1, resume=False,
                             **{**common, "ckpt_dir": str(work / "probe"), "output_dir": str(work / "probe")}),
                      out / "synthetic_train_probe.log", slices_per_iteration=16, warmup=3, timeout=args.train_seconds)
    per_epoch = max(1.0, probe["wall_s"] - probe.get("first_iteration_s", 0.0))
    startup = min(probe.get("first_iteration_s", 30.0), 30.0)  # the cache is built by then: the real run skips it
    epochs = int((budget_end - time.perf_counter() - startup) / per_epoch * 0.9)
    epochs = max(args.val_interval, epochs - epochs % args.val_interval)  # end on a validation
    second = run_timed(bundle("training", configs, epochs=epochs, resume=False, **common), out / "synthetic_train.log",
                       slices_per_iteration=16, warmup=3, timeout=max(60, budget_end - time.perf_counter() + 90))
    part.update(probe=probe, seconds_per_epoch_estimate=round(per_epoch, 1), epochs=epochs, run=second)
    best = work / "models" / "model.pt"
    if best.is_file():
        shutil.copy2(best, out / "model_synthetic_gpu.pt")
        import torch

        record = torch.load(best, map_location="cpu", weights_only=True)
        part["best"] = {k: record.get(k) for k in ("best_metric", "best_epoch", "metric")}
    results["synthetic"] = part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_training")
    parser.add_argument("--work", default="/tmp/gpu_training")
    parser.add_argument("--parts", nargs="+", default=["cache", "synthetic"])
    parser.add_argument("--workers", type=int, default=max(1, min(12, (multiprocessing.cpu_count() or 2) - 2)))
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--overlays", nargs="*", default=[], help="config overlays of the cache part (default: none, "
                        "the paper WP-UNet at 256x256; configs/demo.json for a quick CPU smoke run)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--path_timeout", type=float, default=120, help="seconds at most per training path")
    parser.add_argument("--phantoms", type=int, default=192)
    parser.add_argument("--kits_masks", default="")
    parser.add_argument("--train_seconds", type=float, default=240)
    parser.add_argument("--val_interval", type=int, default=5)
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    results = {"synthetic_data": True, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "cpu_count": multiprocessing.cpu_count(), "workers": args.workers, "args": vars(args)}
    for name in args.parts:
        started = time.perf_counter()
        try:
            {"cache": part_cache, "synthetic": part_synthetic}[name](args, out, work, results)
        except Exception as error:  # keep the other part's results
            results[f"{name}_error"] = repr(error)
        results[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        (out / "gpu_training.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
