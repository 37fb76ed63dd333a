"""Cohort throughput of ``kidney-seg`` (issue 15): cases per minute with 1 and N processes, peak RSS per process.

    python bench/cohort_bench.py                      # 20 cases of 512x512x200, 1 and 2 processes, writes docs
    python bench/cohort_bench.py --cases 4 --no-docs  # a quick check

The cohort is ``--cases`` copies of one SYNTHETIC phantom CT (``bench/run.py``'s ``build_ct``: 512x512x``--slices``,
int16, stored like KiTS) in one folder. The network is Pocket U-Net 2D (``--fast``'s first choice) with **random
weights** (time depends on shapes, not on weights). One process runs ``kidney-seg`` directly (all cores); N
processes run it under ``torchrun --nproc_per_node N`` (each rank takes every N-th case, one thread each, as
torchrun sets ``OMP_NUM_THREADS=1``), so the run includes start-up, the gloo barrier and rank 0's merge.
Peak RSS is each process's own ``VmHWM`` (``bench/cohort_child.py`` reports it at exit). Results go to
``bench/results/cohort_bench.json`` and, unless ``--no-docs``, to the marked block of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_average, machine, run_child  # noqa: E402

from scripts.common.atomic import atomic_write_text, replace_marked_block  # noqa: E402

BEGIN, END = "<!-- cohort_bench:begin -->", "<!-- cohort_bench:end -->"


def build_cohort(workdir: Path, cases: int, slices: int, size: int) -> Path:
    """``cases`` copies of one SYNTHETIC phantom CT in ``workdir/cohort``."""
    from run import build_ct

    ct = build_ct(workdir, slices, "kits", size=size)
    folder = workdir / "cohort"
    folder.mkdir(exist_ok=True)
    for k in range(cases):
        shutil.copy(ct, folder / f"ct_{k:03d}.nii.gz")
    return folder


def random_pocket_weights(path: Path) -> Path:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "inference.json"), str(REPO / "configs/networks/pocket_unet_2d.json")])
    parser["device"] = "$torch.device('cpu')"
    torch.manual_seed(0)
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, path)
    return path


def one_run(folder: Path, out: Path, weights: Path, processes: int, rss_dir: Path) -> dict:
    child = [str(REPO / "bench" / "cohort_child.py"), "-i", str(folder), "-o", str(out), "-m", str(weights),
             "--network", "pocket_unet_2d", "--no-preview", "--quiet", "--no-resume"]
    if processes > 1:
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                *child]
    else:
        args = [sys.executable, *child]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COHORT_BENCH_RSS_DIR": str(rss_dir)}
    shutil.rmtree(out, ignore_errors=True)
    load = load_average()
    done = run_child(args, env=env)
    rss = sorted(json.loads(p.read_text())["peak_rss_mb"] for p in rss_dir.glob("*.json"))
    cases = len(list(out.glob("*.nii.gz")))
    return {"processes": processes, "cases": cases, "seconds": round(done.seconds, 1),
            "cases_per_minute": round(60.0 * cases / done.seconds, 2), "peak_rss_mb": [round(r) for r in rss],
            "load_average_before": load, "load_average_after": load_average()}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"### Cohort runs (`kidney-seg`, issue 15): {result['cases']} cases of {result['size']}x{result['size']}x"
        f"{result['slices']}", "",
        f"`python bench/cohort_bench.py` on {m.get('cpu', '?')} ({m.get('cores', '?')} cores; SIMD: "
        f"{', '.join(m.get('simd', [])) or '?'}), {result['date']}. **Measured on a shared machine** (other "
        "engineers' jobs ran at the same time: see the load averages); rerun on an idle machine for numbers to "
        "quote. SYNTHETIC phantom copies, Pocket U-Net 2D with random weights, `--no-preview`, wall time including "
        "process start-up.", "",
        "| processes | cases done | wall s | cases / minute | peak RSS per process (MB) | load avg before -> after |",
        "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        lines.append(f"| {run['processes']} | {run['cases']} | {run['seconds']} | {run['cases_per_minute']} | "
                     f"{', '.join(map(str, run['peak_rss_mb']))} | {run['load_average_before'][0]} -> "
                     f"{run['load_average_after'][0]} |")
    lines += ["", "What to expect (not measured here): on 2 cores two single-thread processes can only overlap one "
              "process's reading and writing with the other's network; sharding pays off with more cores or nodes. "
              "On a GPU node the "
              "network is a fraction of a second per CT, so reading and writing dominate: run one process per GPU "
              "(`torchrun --nproc_per_node <GPUs> $(which kidney-seg) ...`, rank k on cuda:k) and expect roughly the "
              "read + write time per case (1-2 s for a 512x512x200 `.nii.gz`), with the next case read while the "
              "network runs (the streaming run starts the read as the current case starts on CUDA)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, help="kept when given (default: a temporary folder)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cohort-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        folder = build_cohort(workdir, args.cases, args.slices, args.size)
        weights = random_pocket_weights(workdir / "pocket.pt")
        runs = []
        for processes in args.processes:
            rss_dir = workdir / f"rss_{processes}"
            shutil.rmtree(rss_dir, ignore_errors=True)
            rss_dir.mkdir()
            runs.append(one_run(folder, workdir / f"out_{processes}", weights, processes, rss_dir))
            print(json.dumps(runs[-1]), flush=True)
        result = {"cases": args.cases, "slices": args.slices, "size": args.size, "machine": machine(),
                  "date": time.strftime("%Y-%m-%d"), "runs": runs}
        atomic_write_text(REPO / "bench" / "results" / "cohort_bench.json", json.dumps(result, indent=2))
        if not args.no_docs:
            replace_marked_block(REPO / "docs" / "performance.md", BEGIN, END, markdown(result))
        print(markdown(result))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
