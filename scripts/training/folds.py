"""Train every fold of the k-fold split with one command, one fold after the other (issue 16).

nnU-Net trains its five folds and predicts with all of them. Each fold here is the bundle's own
``python -m monai.bundle run training ... --fold k`` in a child process, with its resumable checkpoints in
``<ckpt_dir>/fold_k/`` (so folds never resume from each other's ``last_checkpoint_N.pt``) and its logs in
``<output_dir>/fold_k/``; when it finishes, its best model is published (atomic copy) as ``<ckpt_dir>/model_fold{k}.pt``,
the files ``configs/ensemble.json`` averages. Rerunning the command resumes the unfinished fold and retrains
nothing that is done (a fold whose ``model_fold{k}.pt`` exists is skipped). Arguments it does not know go to every
``run training`` unchanged::

    python -m scripts.training.folds --dataset_dir /data/kits23 --cache_dir /data/kits23_cache --epochs 100
    # each fold on 4 GPUs (DDP, configs/multi_gpu_train.json):
    python -m scripts.training.folds --nproc_per_node 4 --dataset_dir /data/kits23 --cache_dir /data/kits23_cache
    # or one fold per GPU, in parallel:
    for k in 0 1 2 3 4; do CUDA_VISIBLE_DEVICES=$k python -m scripts.training.folds --folds $k ... & done; wait

Build the cache first (``run preprocessing``) when folds run in parallel, so they do not all build it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..common.atomic import atomic_write

__all__ = ["fold_command", "train_folds", "main"]

TRAIN = "configs/train.json"
MULTI_GPU = "configs/multi_gpu_train.json"


def fold_command(fold: int, num_folds: int, dataset_dir: str, ckpt_dir: str | Path, output_dir: str | Path,
                 config_files: Sequence[str], extra: Sequence[str] = (), nproc_per_node: int = 0) -> list[str]:
    """The ``run training`` command line of one fold (under ``torchrun`` when ``nproc_per_node`` > 0)."""
    files = list(config_files) + ([MULTI_GPU] if nproc_per_node and MULTI_GPU not in config_files else [])
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]
                if nproc_per_node else [sys.executable])
    return [*launcher, "-m", "monai.bundle", "run", "training",
            "--config_file", str(files) if len(files) > 1 else files[0],
            "--dataset_dir", str(dataset_dir), "--fold", str(fold), "--num_folds", str(num_folds),
            "--ckpt_dir", str(Path(ckpt_dir) / f"fold_{fold}"), "--output_dir", str(Path(output_dir) / f"fold_{fold}"),
            *extra]


def train_folds(dataset_dir: str, folds: Sequence[int] | None = None, num_folds: int = 5,
                ckpt_dir: str | Path = "models", output_dir: str | Path = "eval", model_name: str = "model",
                config_files: Sequence[str] = (TRAIN,), extra: Sequence[str] = (), nproc_per_node: int = 0,
                run: Callable | None = None) -> list[Path]:
    """Train ``folds`` (default all) one after the other; returns the published ``model_fold{k}.pt`` files.

    Stops at the first fold whose training fails, with its exit status (``SystemExit``).
    """
    folds = list(range(num_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise SystemExit(f"error: --folds {bad}: folds are 0..{num_folds - 1} (--num_folds {num_folds})")
    published = []
    for fold in folds:
        target = Path(ckpt_dir) / f"model_fold{fold}.pt"
        if target.is_file():
            print(f"fold {fold}: {target} exists, skipped (delete it to retrain)", flush=True)
            published.append(target)
            continue
        command = fold_command(fold, num_folds, dataset_dir, ckpt_dir, output_dir, config_files, extra, nproc_per_node)
        print(f"fold {fold}/{num_folds}: {' '.join(command)}", flush=True)
        result = (run or subprocess.run)(command)
        if result.returncode != 0:
            raise SystemExit(result.returncode)
        best = Path(ckpt_dir) / f"fold_{fold}" / f"{model_name}.pt"
        if not best.is_file():
            raise SystemExit(f"error: {best}: fold {fold} finished without a best model")
        atomic_write(target, lambda tmp: shutil.copyfile(best, tmp), suffix=".pt")
        print(f"fold {fold}: best model -> {target}", flush=True)
        published.append(target)
    return published


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--folds", default=None, help="comma-separated folds to train (default: all)")
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--ckpt_dir", default="models")
    parser.add_argument("--output_dir", default="eval")
    parser.add_argument("--model_name", default="model")
    parser.add_argument("--config_file", default=TRAIN, help="a config file or a list as for monai.bundle")
    parser.add_argument("--nproc_per_node", type=int, default=0, help="> 0: each fold under torchrun (DDP)")
    args, extra = parser.parse_known_args(argv)
    configs = args.config_file
    files = [f.strip(" '\"") for f in configs.strip("[]").split(",")] if configs.startswith("[") else [configs]
    folds = None if args.folds is None else [int(k) for k in str(args.folds).split(",") if k.strip()]
    extra = [*extra, "--model_name", args.model_name]
    return train_folds(args.dataset_dir, folds, args.num_folds, args.ckpt_dir, args.output_dir, args.model_name,
                       files, extra, args.nproc_per_node)


if __name__ == "__main__":
    main()
