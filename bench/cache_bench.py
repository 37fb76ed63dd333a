"""Training at KiTS23 scale from the slice cache (issue 16): preprocessing, disk, loader throughput, training RSS.

SYNTHETIC data: KiTS-size volumes (512x512, 100-400 slices drawn per case, int16 HU with noise, kidneys and a tumour
as ellipsoids) stored exactly like KiTS (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``, slice axis first),
generated under ``--root`` (default /tmp/kits_bench) and deleted at the end unless ``--keep``. For each N of ``--cases``:

- preprocessing: ``python -m monai.bundle run preprocessing`` on the first N cases into one cache folder (so the run
  for N builds only the cases the smaller N did not; up-to-date entries are skipped): wall time per built case and
  the worker seconds per case;
- cache size on disk of the N cases;
- loader slices/s with ONE worker: train.json's own ``train#dataloader`` with ``--cache_dir`` (class-balanced
  slices + augmentation) against today's path with ``--cache_rate 0.2`` (CacheDataset: 80 % of cases loaded,
  resampled and cropped again every epoch), both on the same cases in the same run;
- peak memory of ``run training`` from the cache (demo-width WP-UNet at 256x256, ``--epoch_length`` iterations,
  validation on the fold's cached volumes): the main process's VmHWM, and the peak of the summed PSS of the process
  and its DataLoader workers (sampled every 0.2 s), then the slope per case and the extrapolation to 489 cases.

Results: ``bench/results/cache_<date>.json`` and the markdown printed last (pasted into docs/performance.md).
Numbers from a shared machine: compare the ratios measured in one run, not absolute times across runs.

    python bench/cache_bench.py --cases 10 20 40
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(BUNDLE_ROOT), str(BUNDLE_ROOT / "bench")]

from common import load_average, machine  # noqa: E402

KITS23_CASES = 489


def make_volume(seed: int, depth: int, size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SYNTHETIC (size, size, depth) RAS HU volume, its label (1 kidney, 2 tumour) and affine.

    Body ellipse (40 HU, noise from a bank of 8 planes of N(0, 15) HU), two kidney ellipsoids (150 HU) and a tumour
    ball (80 HU) on one; cheap to make, so that hundreds of KiTS-size slices are generated in seconds.
    """
    rng = np.random.default_rng(seed)
    c = (np.arange(size) - (size - 1) / 2) / (size / 2)
    body = (c[:, None] / 0.85) ** 2 + (c[None, :] / 0.6) ** 2 < 1
    bank = [np.where(body, 40 + rng.normal(0, 15, (size, size)), -1000).astype(np.int16) for _ in range(8)]
    image = np.empty((size, size, depth), dtype=np.int16)
    for k in range(depth):
        image[..., k] = bank[int(rng.integers(8))]
    label = np.zeros((size, size, depth), dtype=np.uint8)
    z = np.linspace(-1, 1, depth)
    kz = rng.uniform(-0.3, 0.3)
    balls = [(-0.35, 0.1, kz, 0.1, 0.07, 0.25, 1, 150), (0.35, 0.1, kz, 0.1, 0.07, 0.25, 1, 150),
             (0.43, 0.1, kz + 0.1, *(rng.uniform(0.05, 0.1),) * 3, 2, 80)]
    for bx, by, bz, rx, ry, rz, value, hu in balls:
        ks = np.nonzero(np.abs(z - bz) < rz)[0]
        ix = np.nonzero(np.abs(c - bx) < rx)[0]
        iy = np.nonzero(np.abs(c - by) < ry)[0]
        inside = (((c[ix, None, None] - bx) / rx) ** 2 + ((c[None, iy, None] - by) / ry) ** 2
                  + ((z[None, None, ks] - bz) / rz) ** 2) < 1
        box = np.ix_(ix, iy, ks)
        image[box] = np.where(inside, hu + image[box] - 40, image[box])
        label[box] = np.where(inside, value, label[box])
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return image, label, affine


def _write_case(task: tuple) -> None:
    from scripts.synthetic.phantoms import write_kits_case

    data_dir, case, seed, depth = task
    image, label, affine = make_volume(seed * 1000 + case, depth)
    write_kits_case(Path(data_dir), case, image, label, affine, storage="kits")


def generate(data_dir: Path, num_cases: int, seed: int = 0, workers: int = 1) -> list[int]:
    """Write the first ``num_cases`` SYNTHETIC cases (skipping those present, ``workers`` processes); returns their
    slice counts."""
    depths = np.random.default_rng(seed).integers(100, 401, size=num_cases).tolist()
    tasks = [(str(data_dir), case, seed, depth) for case, depth in enumerate(depths)
             if not (data_dir / f"case_{case:05d}" / "segmentation.nii.gz").is_file()]
    if workers > 1:
        import multiprocessing

        with multiprocessing.Pool(workers) as pool:
            pool.map(_write_case, tasks)
    else:
        for task in tasks:
            _write_case(task)
    (data_dir / "SYNTHETIC_README.txt").write_text("SYNTHETIC KiTS-size volumes from bench/cache_bench.py\n")
    return depths


def subset(data_dir: Path, sets_dir: Path, num_cases: int) -> Path:
    """A folder of symlinks to the first ``num_cases`` case folders."""
    target = sets_dir / f"n{num_cases}"
    target.mkdir(parents=True, exist_ok=True)
    for case in range(num_cases):
        link = target / f"case_{case:05d}"
        if not link.exists():
            link.symlink_to(data_dir / f"case_{case:05d}")
    return target


def bundle(run_id: str, configs: list[str], **overrides) -> list[str]:
    from scripts.reports.workflow import bundle_command

    return bundle_command(run_id, configs, logging_file=None, **overrides)


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(args: list[str], log: Path) -> dict:
    """Run ``args``; wall seconds, the main process's peak VmHWM and the peak summed PSS of its process tree."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(args, cwd=BUNDLE_ROOT, stdout=out, stderr=subprocess.STDOUT)
        peak = {"hwm_kb": 0, "tree_pss_kb": 0}

        def sample():
            while process.poll() is None:
                peak["hwm_kb"] = max(peak["hwm_kb"], _status_kb(process.pid, "VmHWM"))
                peak["tree_pss_kb"] = max(peak["tree_pss_kb"], sum(_pss_kb(p) for p in _tree(process.pid)))
                time.sleep(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        process.wait()
        thread.join()
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(args)}; log {log}")
    return {"seconds": round(time.perf_counter() - started, 1), "main_peak_rss_mb": round(peak["hwm_kb"] / 1024, 1),
            "tree_peak_pss_mb": round(peak["tree_pss_kb"] / 1024, 1)}


def loader_rate(dataset_dir: Path, cache_dir: str, batches: int, cache_rate: float = 1.0) -> dict:
    """Slices/s of train.json's own ``train#dataloader`` with one worker over ``batches`` batches of 16 slices after
    the first (setup and first batch timed apart)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    for key, value in {"dataset_dir": str(dataset_dir), "cache_dir": cache_dir, "num_workers": 1,
                       "cache_rate": cache_rate, "bundle_root": str(BUNDLE_ROOT)}.items():
        parser[key] = value
    started = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    setup = time.perf_counter() - started
    # the first batch (worker start) is timed apart; then epochs are repeated until `batches` batches have come
    slices, batch_count, first, started = 0, 0, None, time.perf_counter()
    while True:
        for batch in loader:
            if first is None:
                first = time.perf_counter() - started
                started = time.perf_counter()
                continue
            slices += int(batch["image"].shape[0])
            batch_count += 1
            if batch_count >= batches:
                break
        if batch_count >= batches or batches == 0:
            break
    seconds = time.perf_counter() - started
    del loader
    return {"setup_s": round(setup, 1), "first_batch_s": round(first or 0.0, 2), "batches": batch_count,
            "slices": slices, "seconds": round(seconds, 1), "slices_per_s": round(slices / max(seconds, 1e-9), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description="slice cache benchmark (issue 16), SYNTHETIC KiTS-size data")
    parser.add_argument("--cases", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--root", default="/tmp/kits_bench")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing workers")
    parser.add_argument("--cached_batches", type=int, default=100, help="batches of 16 slices timed from the cache")
    parser.add_argument("--baseline_cases", type=int, nargs="*", default=None,
                        help="N at which today's cache_rate 0.2 path is timed (default: every N)")
    parser.add_argument("--baseline_batches", type=int, default=4, help="batches timed on today's path")
    parser.add_argument("--epoch_length", type=int, default=40, help="training iterations in the RSS run")
    parser.add_argument("--keep", action="store_true", help="keep the generated volumes and cache")
    args = parser.parse_args()
    root = Path(args.root)
    data_dir, cache_dir, logs = root / "data", root / "cache", root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "load_average_start": load_average(), "synthetic": True, "runs": {}}

    started = time.perf_counter()
    depths = generate(data_dir, max(args.cases), workers=args.workers)
    results["generation_s"] = round(time.perf_counter() - started, 1)
    results["depths"] = depths
    print(f"SYNTHETIC data: {len(depths)} cases, {sum(depths)} slices, generated in {results['generation_s']} s",
          flush=True)
    baseline_at = set(args.cases if args.baseline_cases is None else args.baseline_cases)
    for n in sorted(args.cases):
        dataset = subset(data_dir, root / "sets", n)
        before = {p.stem for p in cache_dir.glob("case_*.json")}
        prep = run_measured(bundle("preprocessing", ["configs/train.json"], dataset_dir=str(dataset),
                                   cache_dir=str(cache_dir), preprocessing_workers=args.workers), logs / f"prep_{n}.log")
        entries = [json.loads((cache_dir / f"case_{c:05d}.json").read_text()) for c in range(n)]
        built = [e for e in entries if e["case"] not in before]
        size = sum((cache_dir / f"case_{c:05d}{ext}").stat().st_size for c in range(n) for ext in (".npy", ".json"))
        source = sum((data_dir / f"case_{c:05d}" / f).stat().st_size for c in range(n)
                     for f in ("imaging.nii.gz", "segmentation.nii.gz"))
        run = {"cases": n, "slices": sum(depths[:n]), "preprocessing": {
            **prep, "built": len(built), "wall_s_per_built_case": round(prep["seconds"] / max(len(built), 1), 2),
            "worker_s_per_case": round(float(np.mean([e["seconds"] for e in built])), 2) if built else None},
            "cache_bytes": size, "cache_bytes_per_slice": round(size / sum(depths[:n]), 1), "source_bytes": source}
        print(f"N={n}: preprocessing {run['preprocessing']}", flush=True)
        run["loader_cached"] = loader_rate(dataset, str(cache_dir), args.cached_batches)
        print(f"N={n}: cached loader {run['loader_cached']}", flush=True)
        if n in baseline_at:
            run["loader_cache_rate_0.2"] = loader_rate(dataset, "", args.baseline_batches, cache_rate=0.2)
            run["loader_speedup"] = round(run["loader_cached"]["slices_per_s"]
                                          / run["loader_cache_rate_0.2"]["slices_per_s"], 1)
            print(f"N={n}: cache_rate 0.2 loader {run['loader_cache_rate_0.2']}, x{run['loader_speedup']}",
                  flush=True)
        out = root / "train" / f"n{n}"
        run["training"] = run_measured(bundle(
            "training", ["configs/train.json", "configs/demo.json"], dataset_dir=str(dataset),
            cache_dir=str(cache_dir), slice_size=[256, 256], epochs=1, num_workers=2, progress_bar=False,
            resume=False, ckpt_dir=str(out / "models"), output_dir=str(out),
            **{"train#trainer#epoch_length": args.epoch_length}), logs / f"train_{n}.log")
        print(f"N={n}: training {run['training']}", flush=True)
        results["runs"][str(n)] = run
    results["load_average_end"] = load_average()
    ns = np.array(sorted(int(n) for n in results["runs"]), dtype=float)
    for key in ("main_peak_rss_mb", "tree_peak_pss_mb"):
        values = np.array([results["runs"][str(int(n))]["training"][key] for n in ns])
        slope, intercept = np.polyfit(ns, values, 1) if len(ns) > 1 else (0.0, values[0])
        results[f"{key}_slope_per_case"] = round(float(slope), 2)
        results[f"{key}_at_489"] = round(float(intercept + slope * KITS23_CASES), 1)
    stamp = datetime.date.today().strftime("%Y%m%d")
    path = BUNDLE_ROOT / "bench" / "results" / f"cache_{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    print(markdown(results))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def markdown(results: dict) -> str:
    rows = ["| cases | slices | preprocessing wall s / case (worker s / case) | cache on disk (MB, B/slice) | "
            "loader slices/s, 1 worker: cache | cache_rate 0.2 | ratio | training peak RSS main (MB) | "
            "tree PSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for n, run in sorted(results["runs"].items(), key=lambda kv: int(kv[0])):
        prep, base = run["preprocessing"], run.get("loader_cache_rate_0.2")
        rows.append(
            f"| {n} | {run['slices']} | {prep['wall_s_per_built_case']} ({prep['worker_s_per_case']}) | "
            f"{run['cache_bytes'] / 1e6:.0f} ({run['cache_bytes_per_slice']:.0f}) | "
            f"{run['loader_cached']['slices_per_s']} | {base['slices_per_s'] if base else '-'} | "
            f"{run.get('loader_speedup', '-')} | {run['training']['main_peak_rss_mb']} | "
            f"{run['training']['tree_peak_pss_mb']} |")
    rows.append("")
    rows.append(f"Peak RSS slope: {results['main_peak_rss_mb_slope_per_case']} MB per case (main process), "
                f"{results['tree_peak_pss_mb_slope_per_case']} MB per case (process + workers, PSS); extrapolated "
                f"to 489 cases: {results['main_peak_rss_mb_at_489']} MB and {results['tree_peak_pss_mb_at_489']} MB.")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
