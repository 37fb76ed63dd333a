"""Check that a change keeps the bundle's outputs: run the workflows of one checkout on SYNTHETIC phantoms with fixed
weights, then compare two such runs file by file.

    # once per checkout (e.g. a `git worktree` of the commit before the change, and this one)
    python tools/output_fingerprint.py capture --repo OLD --out /tmp/before --model W.pt --data /tmp/phantoms
    python tools/output_fingerprint.py capture --repo .   --out /tmp/after  --model W.pt --data /tmp/phantoms
    python tools/output_fingerprint.py compare /tmp/before /tmp/after

``capture`` makes the phantoms in ``--data`` when absent (8 training cases, 2 held out, 128x128), trains the demo
network for 2 epochs (training determinism), then with ``--model`` (demo-overlay weights) runs ``evaluating``,
``inferring`` (streaming, MONAI evaluator path, ``.seg.nrrd``), ``pruning`` and ``pruning_structured``. Use the same
``--out`` path for both runs (reports hold absolute paths): move the first folder away before the second capture.
``compare`` is byte for byte except two run-dependent details: a ``.pt`` file (a zip) is compared member by member
(the archive's top folder is the temporary file's name), and pynrrd's ``# on <date>`` line in ``.seg.nrrd`` is ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

DEMO = "configs/demo.json"
TRAIN_ARGS = ["--num_folds", "4", "--num_workers", "0", "--progress_bar", "False", "--slices_per_volume", "4"]
SKIPPED = {".log"}


def _run(repo: Path, log: Path, run_id: str, configs: list[str], *args: str) -> None:
    config_list = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_list, *args]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with open(log, "w") as out:
        if subprocess.run(command, cwd=repo, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
            sys.exit(f"{run_id} failed in {repo}; log: {log}")


def _make_phantoms(repo: Path, data: Path) -> None:
    code = ("import importlib\n"
            "try: m = importlib.import_module('scripts.synthetic.phantoms')\n"
            "except ImportError: m = importlib.import_module('scripts.phantoms')\n"  # checkouts before 0.5.0
            f"m.generate_dataset({str(data / 'train')!r}, num_cases=8, seed=0, in_plane_size=128)\n"
            f"m.generate_dataset({str(data / 'test')!r}, num_cases=2, seed=1, in_plane_size=128, first_case=100)\n")
    subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, check=True)


def capture(repo: Path, out: Path, model: Path, data: Path) -> None:
    """Run the workflows of checkout ``repo`` into ``out`` (replaced) with weights ``model``."""
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    if not (data / "test").is_dir():
        _make_phantoms(repo, data)
    train, test, models = str(data / "train"), str(data / "test"), str(out / "models")
    _run(repo, out / "training.log", "training", ["configs/train.json", DEMO], "--dataset_dir", train, "--epochs", "2",
         "--output_dir", str(out / "training"), "--ckpt_dir", models, *TRAIN_ARGS)
    shutil.copy(out / "models" / "model.pt", out / "train_check_model.pt")
    shutil.copy(model, out / "models" / "model.pt")
    _run(repo, out / "evaluation.log", "evaluating", ["configs/train.json", DEMO, "configs/evaluate.json"],
         "--dataset_dir", test, "--evaluate_all_cases", "True", "--output_dir", str(out / "evaluation"),
         "--num_workers", "0", "--ckpt_dir", models)
    for name, extra in [("inference", []), ("inference_monai", ["--streaming", "False"]),
                        ("inference_nrrd", ["--output_format", "seg_nrrd"])]:
        _run(repo, out / f"{name}.log", "inferring", ["configs/inference.json", DEMO], "--input_path", test,
             "--output_dir", str(out / name), "--model_path", models + "/model.pt", *extra)
    for run_id in ("pruning", "pruning_structured"):
        _run(repo, out / f"{run_id}.log", run_id, ["configs/train.json", DEMO, "configs/prune.json"],
             "--dataset_dir", train, "--finetune_epochs", "1", "--output_dir", str(out / run_id), "--ckpt_dir", models,
             *TRAIN_ARGS)


def fingerprint(path: Path):
    """What must be equal between two runs: the bytes, less the run-dependent details named in the module doc."""
    if path.suffix == ".pt" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return sorted((name.split("/", 1)[-1], hashlib.sha256(archive.read(name)).hexdigest())
                          for name in archive.namelist())
    data = path.read_bytes()
    if path.name.endswith(".seg.nrrd"):
        data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"# on "))
    return hashlib.sha256(data).hexdigest()


def _outputs(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and p.suffix not in SKIPPED and "tensorboard" not in p.parts}


def compare(before: Path, after: Path) -> list[str]:
    """One line per output that differs or exists on one side only; empty when the runs agree."""
    files_before, files_after = _outputs(before), _outputs(after)
    problems = [f"only in {before}: {f}" for f in sorted(files_before - files_after)]
    problems += [f"only in {after}: {f}" for f in sorted(files_after - files_before)]
    problems += [f"differs: {f}" for f in sorted(files_before & files_after)
                 if fingerprint(before / f) != fingerprint(after / f)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("capture", help="run the workflows of one checkout")
    run.add_argument("--repo", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--model", type=Path, required=True, help="demo-overlay weights used by every workflow")
    run.add_argument("--data", type=Path, required=True, help="phantom folder (made when absent)")
    check = commands.add_parser("compare", help="compare two captures")
    check.add_argument("before", type=Path)
    check.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "capture":
        capture(args.repo.resolve(), args.out.resolve(), args.model.resolve(), args.data.resolve())
        return 0
    problems = compare(args.before, args.after)
    print("\n".join(problems) or f"identical: {len(_outputs(args.before))} outputs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
