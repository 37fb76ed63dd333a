"""configs/multi_gpu_train.json: two CPU processes on gloo (torchrun) train one short epoch on tiny phantoms,
rank 0 alone writes the checkpoints and logs, and both ranks resume from the same checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import BUNDLE_ROOT, TINY_OVERRIDES

CONFIGS = str([str(BUNDLE_ROOT / "configs" / "train.json"), str(BUNDLE_ROOT / "configs" / "multi_gpu_train.json")])


def _torchrun(phantom_dir, tmp_path, epochs: int, port: int, nproc: int = 2) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
            "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS, "--bundle_root", str(BUNDLE_ROOT),
            "--dataset_dir", str(phantom_dir), "--num_folds", "2", "--ckpt_dir", str(tmp_path / "models"),
            "--output_dir", str(tmp_path / "train"), "--epochs", str(epochs), "--num_workers", "0",
            "--progress_bar", "False",
            *sum(([f"--{k}", json.dumps(v)] for k, v in TINY_OVERRIDES.items()), [])]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(args, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_two_process_gloo_training_and_resume(phantom_dir, tmp_path):
    result = _torchrun(phantom_dir, tmp_path, epochs=1, port=29641)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["last_checkpoint_1.pt", "model.pt"]
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert not any(key.startswith("module.") for key in state.get("model", state)), "DDP prefix in model.pt"
    # rank 0 alone logs the epoch, its loss and the (all-rank) validation metrics
    assert log.count("Epoch[1] Metrics") == 1 and log.count("Epoch[1] Complete") == 2  # trainer + evaluator
    assert log.count("train_loss:") == 1
    assert any((tmp_path / "train" / "tensorboard").iterdir())

    result = _torchrun(phantom_dir, tmp_path, epochs=2, port=29642)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert log.count(f"resumed training from {models / 'last_checkpoint_1.pt'}") == 2  # both ranks, same file
    assert sorted(p.name for p in models.iterdir()) == ["last_checkpoint_2.pt", "model.pt"]
    assert log.count("Epoch[2] Metrics") == 1


def test_input_error_under_torchrun_keeps_its_one_line_message(tmp_path):
    """torch.distributed wraps sys.excepthook once the process group exists (it buffers stderr to prefix the
    rank); the bundle's hook must still print its one-line error before exiting."""
    missing = tmp_path / "no_such_dataset"
    result = _torchrun(missing, tmp_path, epochs=1, port=29643, nproc=1)
    assert result.returncode != 0
    assert f"error: {missing}: dataset folder does not exist" in result.stderr, result.stderr[-3000:]
