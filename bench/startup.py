"""Start-up benchmark (issue 17): what the user waits for before the first slice is computed, per stage.

    python bench/startup.py [--repeats 5] [--slices 20] [--baseline-ref main] [--json OUT.json]

Runs, on a SYNTHETIC CT (``bench/run.py``'s ``build_ct``: 512x512xN phantom) and random Pocket U-Net 2D weights
(latency does not depend on weight values), each as a fresh child process, interleaved ``--repeats`` times:

- ``bundle``: ``python -m monai.bundle run inferring --config_file [inference.json, networks/pocket_unet_2d.json]
  --input_path CT --output_dir OUT --model_path W`` (with a logging file that shows the DEBUG line of
  ``scripts.inference.streaming`` marking the process's first network batch);
- ``kidney-seg``: the console command's entry point (``scripts.cli.main:main``, as the installed ``kidney-seg``
  script calls it) with ``-i CT -o OUT -m W -n pocket_unet_2d``;
- ``lean``: the same with ``--lean`` (no torch or MONAI in the process; its ONNX export is made once before the
  timed runs, as a user's first ``--lean`` run makes it; not run on a baseline tree that has no ``--lean``);
- ``stages``: the same ``ConfigWorkflow`` in a child that stamps each stage (interpreter start, ``import torch``,
  the rest of ``import monai``, ``monai.bundle``, config parsing, ``initialize``, network + weights + fast path,
  the MONAI evaluator the ``run`` expression references, the first network batch, the rest of the run).

Reported: median seconds from process start (the parent's clock just before the child is spawned) to the first
network batch and to exit, and the child's CPU seconds (user + sys; less sensitive than wall time to other load on
a shared machine; the stage child gives both per stage). ``--baseline-ref REF`` also runs every command on
``git archive REF`` unpacked in a temporary folder, interleaved with this checkout (the baseline has no
first-batch log line before issue 17: its first-batch time comes from the ``stages`` child only). Nothing here is
a test: numbers go to ``docs/perf_notes/issue17_startup.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/inference.json", "configs/networks/pocket_unet_2d.json"]
FIRST_BATCH = "first network batch done at unix time "
LOGGING_CONF = """[loggers]
keys=root,streaming
[handlers]
keys=console
[formatters]
keys=plain
[logger_root]
level=INFO
handlers=console
[logger_streaming]
level=DEBUG
handlers=
qualname=scripts.inference.streaming
[handler_console]
class=StreamHandler
level=DEBUG
formatter=plain
args=(sys.stdout,)
[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
KIDNEY_SEG = ("import logging, sys; logging.getLogger('scripts.inference.streaming').setLevel(logging.DEBUG); "
              "from scripts.cli.main import main; sys.exit(main())")


# ------------------------------------------------------------------------------------------------- the stage child
def _stamp() -> tuple[float, float]:
    """(unix time, this process's CPU seconds so far, user + sys)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.time(), usage.ru_utime + usage.ru_stime


def stage_child(spec: dict) -> dict:
    """One in-process run of the ``inferring`` workflow with a stamp (:func:`_stamp`) after each stage."""
    stamps = {"python": _stamp()}
    import torch  # noqa: F401

    stamps["import torch"] = _stamp()
    import monai  # noqa: F401

    stamps["import monai"] = _stamp()
    from monai.bundle import ConfigWorkflow

    stamps["import monai.bundle"] = _stamp()
    workflow = ConfigWorkflow(config_file=[str(Path(spec["root"]) / c) for c in CONFIGS], workflow_type="infer",
                              run_id="inferring", logging_file=False, bundle_root=spec["root"], **spec["overrides"])
    stamps["parse configs"] = _stamp()
    workflow.initialize()
    stamps["initialize"] = _stamp()
    segmenter = workflow.parser.get_parsed_content("segmenter")
    stamps["network, weights, fast path"] = _stamp()
    workflow.parser.get_parsed_content("evaluator")
    stamps["evaluator (resolved by run)"] = _stamp()
    predict = segmenter._predict

    def first_batch(batch):
        labels = predict(batch)
        stamps.setdefault("first batch", _stamp())
        return labels

    segmenter._predict = first_batch
    workflow.run()
    workflow.finalize()
    stamps["rest of run"] = _stamp()
    return stamps


# ------------------------------------------------------------------------------------------------- the parent
def prepare(workdir: Path, slices: int) -> tuple[Path, Path]:
    """A SYNTHETIC 512x512x``slices`` CT and random Pocket U-Net 2D weights in ``workdir``."""
    sys.path.insert(0, str(REPO))
    from monai.bundle import ConfigParser

    from bench.run import build_ct, save_weights

    parser = ConfigParser()
    parser.read_config([str(REPO / c) for c in CONFIGS])
    weights = save_weights(parser.get_parsed_content("network_def"), workdir / "pocket_random.pt")
    return build_ct(workdir, slices), weights


def baseline_tree(ref: str, workdir: Path) -> Path:
    """``git archive ref`` of this repository unpacked under ``workdir`` (the checkout itself is not touched)."""
    target = workdir / f"baseline_{ref.replace('/', '_')}"
    target.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def command(kind: str, root: Path, ct: Path, weights: Path, out: Path, conf: Path) -> list[str]:
    if kind == "bundle":
        return [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", json.dumps(CONFIGS),
                "--input_path", str(ct), "--output_dir", str(out), "--model_path", str(weights),
                "--bundle_root", str(root), "--logging_file", str(conf)]
    if kind in ("kidney-seg", "lean"):
        return [sys.executable, "-c", KIDNEY_SEG, "-i", str(ct), "-o", str(out), "-m", str(weights),
                "-n", "pocket_unet_2d", *(["--lean"] if kind == "lean" else [])]
    spec = {"root": str(root), "overrides": {"input_path": str(ct), "output_dir": str(out),
                                             "model_path": str(weights)}}
    return [sys.executable, str(REPO / "bench" / "startup.py"), "--child-stages", json.dumps(spec)]


def run_once(kind: str, root: Path, ct: Path, weights: Path, out: Path, conf: Path) -> dict:
    """One child process: seconds to the first network batch (when it says) and to exit, and its CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    done = subprocess.run(command(kind, root, ct, weights, out, conf), cwd=root, env=env, capture_output=True,
                          text=True)
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} in {root} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    row = {"exit_s": end - start, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
    text = done.stdout + done.stderr
    if kind == "stages":
        stamps = json.loads(text.split("STARTUP_STAGES ", 1)[1].splitlines()[0])
        previous, previous_cpu = start, 0.0
        for name, (stamp, cpu) in stamps.items():
            row[name], row[f"{name} cpu"] = stamp - previous, cpu - previous_cpu
            previous, previous_cpu = stamp, cpu
        row["first_batch_s"] = stamps["first batch"][0] - start
        row["first_batch_cpu_s"] = stamps["first batch"][1]
    elif FIRST_BATCH in text:
        row["first_batch_s"] = float(text.split(FIRST_BATCH, 1)[1].split()[0]) - start
    return row


def median_rows(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=20, help="slices of the SYNTHETIC 512x512 CT")
    parser.add_argument("--commands", default="stages,bundle,kidney-seg,lean")
    parser.add_argument("--baseline-ref", help="also run the commands on this git ref (e.g. main)")
    parser.add_argument("--json", type=Path, help="write the per-run rows and medians here")
    parser.add_argument("--child-stages", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_stages:
        print("STARTUP_STAGES " + json.dumps(stage_child(json.loads(args.child_stages))), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="startup_") as tmp:
        workdir = Path(tmp)
        ct, weights = prepare(workdir, args.slices)
        conf = workdir / "logging_first_batch.conf"
        conf.write_text(LOGGING_CONF)
        trees = {"this checkout": REPO}
        if args.baseline_ref:
            trees[f"baseline {args.baseline_ref}"] = baseline_tree(args.baseline_ref, workdir)
        kinds = args.commands.split(",")
        runs = [(t, k) for t in trees for k in kinds if not (k == "lean" and t != "this checkout")]
        if "lean" in kinds:  # the export a user's first --lean run makes, once, outside the timed runs
            run_once("lean", REPO, ct, weights, workdir / "out" / "lean_export", conf)
        rows: dict[str, list[dict]] = {f"{t} / {k}": [] for t, k in runs}
        for repeat in range(args.repeats):
            for tree, kind in runs:
                out = workdir / "out" / f"{repeat}_{len(rows)}_{tree.replace(' ', '_')}_{kind}"
                row = run_once(kind, trees[tree], ct, weights, out, conf)
                rows[f"{tree} / {kind}"].append(row)
                print(f"[{repeat + 1}/{args.repeats}] {tree} / {kind}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    medians = {name: median_rows(r) for name, r in rows.items()}
    print("\nmedians (seconds; SYNTHETIC 512x512x%d CT, Pocket U-Net 2D, random weights):" % args.slices)
    for name, row in medians.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    load = os.getloadavg()
    result = {"slices": args.slices, "repeats": args.repeats, "load_average": load, "cores": os.cpu_count(),
              "medians": medians, "runs": rows}
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
