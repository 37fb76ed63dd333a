"""Fault injection for the training half of issue 14 ("Nothing lost, nothing silent").

Each fault is reproduced and its outcome asserted: ``kill -9`` at random moments while ``models/model.pt`` and
``last_checkpoint_N.pt`` are written (old or new file complete, never half; the best record survives the resume);
a full disk (a small tmpfs, root only); a truncated checkpoint; a NaN loss; a label value 7; out-of-range numeric
options. Command-line failures must exit with code 2 and print exactly one ``error: ...`` line, no traceback.
All images are SYNTHETIC phantoms (``scripts/synthetic``); training runs are 1-3 epochs of the tiny network.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine

from conftest import BUNDLE_ROOT, run_bundle, small_tmpfs
from scripts.common.errors import InputError, find_input_error
from scripts.training.best_model import BestModelCheckpoint
from scripts.training.checkpoint import ResumableCheckpoint, list_last_checkpoints
from scripts.training.saving import save_synced

TRAIN = str(BUNDLE_ROOT / "configs" / "train.json")


# ------------------------------------------------------------------------------------------------------- helpers
def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one ``error:`` line on stderr holding every fragment; returns the line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def train(dataset_dir: Path, ckpt: Path, tmp_path: Path, **overrides) -> subprocess.CompletedProcess:
    """``run training`` of the tiny network on the 2-case training fold of ``dataset_dir``."""
    settings = {"dataset_dir": str(dataset_dir), "num_folds": 2, "ckpt_dir": str(ckpt), "num_workers": 0,
                "output_dir": str(tmp_path / "train_out"), "progress_bar": False, "epochs": 1, **overrides}
    return run_bundle("training", [TRAIN], **settings)


def digest(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (dot-files, i.e. temporary files, included) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory) -> Path:
    """``models/`` after one complete epoch: ``model.pt`` and ``last_checkpoint_1.pt`` (copy it before changing it)."""
    tmp = tmp_path_factory.mktemp("trained")
    result = train(phantom_dir, tmp / "models", tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp / "models").iterdir()) == ["last_checkpoint_1.pt", "model.pt"]
    return tmp / "models"


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill the file system of ``folder`` until about ``leave_bytes`` remain free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave_bytes))


# ------------------------------------------------------------------ kill -9 at random moments during the saves
# The child runs the production handlers on a stand-in trainer: each "epoch" sets every weight of a 2 MB network
# to the epoch number, validates with a made-up metric (a new best most epochs, a worse one every third), then the
# ResumableCheckpoint saves. Almost all of its time is spent writing files, so random kill times land in writes.
_CHILD = r"""
import sys, torch
from ignite.engine import Engine, Events
from scripts.training.best_model import BestModelCheckpoint
from scripts.training.checkpoint import ResumableCheckpoint

folder = sys.argv[1]
net = torch.nn.Linear(1000, 500)
best = BestModelCheckpoint(folder, net)
evaluator = Engine(lambda e, b: None)
best.attach(evaluator)
evaluator.state.key_metric_name = "metric"

def step(engine, batch):
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float(engine.state.epoch))

trainer = Engine(step)

@trainer.on(Events.EPOCH_COMPLETED)
def validate(engine):
    k = engine.state.epoch
    evaluator.state.epoch, evaluator.state.metrics = k, {"metric": METRIC(k)}
    best(evaluator)

ResumableCheckpoint(folder, {"model": net, "best_model": best}).attach(trainer)

@trainer.on(Events.STARTED)
def ready(engine):
    print("started", engine.state.epoch, flush=True)

trainer.run([0], max_epochs=100000)
"""


def _metric(k: int) -> float:
    return float(k - 2.5) if k % 3 == 0 else float(k)


def _check_after_kill(folder: Path) -> int:
    """The invariants after a kill; returns the epoch of the newest complete checkpoint."""
    checkpoints = list_last_checkpoints(folder)
    assert checkpoints, sorted(p.name for p in folder.iterdir())
    for path in checkpoints:  # every file under a final name is complete and self-consistent
        state = torch.load(path, weights_only=True)
        epoch = int(path.stem.rsplit("_", 1)[1])
        assert state["trainer"]["iteration"] == epoch  # one iteration per epoch
        assert torch.all(state["model"]["weight"] == epoch), path
    newest = int(checkpoints[0].stem.rsplit("_", 1)[1])
    best = torch.load(folder / "model.pt", weights_only=True)
    best_epoch = best["best_epoch"]
    assert torch.all(best["model"]["weight"] == best_epoch) and torch.all(best["model"]["bias"] == best_epoch)
    assert best["best_metric"] == _metric(best_epoch)
    # model.pt holds the best of every validation that finished (all up to the newest checkpoint, maybe one more)
    assert best["best_metric"] == max(_metric(k) for k in range(1, max(newest, best_epoch) + 1)), (newest, best_epoch)
    return newest


def test_kill_during_checkpoint_and_best_model_writes(tmp_path):
    folder = tmp_path / "models"
    child = _CHILD.replace("METRIC(k)", "(float(k - 2.5) if k % 3 == 0 else float(k))")
    rng = random.Random(14)
    newest, temps_seen = 0, 0
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT), "OMP_NUM_THREADS": "1"}
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", child, str(folder)], cwd=BUNDLE_ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = process.stdout.readline().split()
        assert started[:1] == ["started"], process.stderr.read()[-3000:]
        assert int(started[1]) == newest  # resumed from the newest complete checkpoint of the previous round
        time.sleep(rng.uniform(0.3, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        process.stderr.close()
        temps_seen += sum(1 for p in folder.iterdir() if p.name.endswith(".tmp"))
        newest_now = _check_after_kill(folder)
        assert newest_now > newest, "no epoch completed between two kills"
        newest = newest_now
    print(f"{newest} epochs over 6 kills; {temps_seen} half-written temporary files found after the kills")


# ------------------------------------------------------------------------------------------- best model record
def _evaluator_state(epoch: int, value: float) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(epoch=epoch, metrics={"dice": value}, key_metric_name="dice"))


def test_best_model_ignores_nan_metrics_refuses_nan_weights_and_keeps_its_record(tmp_path):
    net = torch.nn.Linear(4, 2)
    saver = BestModelCheckpoint(str(tmp_path), net)
    saver(_evaluator_state(1, math.nan))  # a NaN first validation is no best (MONAI's own record would keep it)
    assert not (tmp_path / "model.pt").exists()
    saver(_evaluator_state(2, 0.5))
    saver(_evaluator_state(3, 0.4))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert (saved["best_metric"], saved["best_epoch"], saved["metric"]) == (0.5, 2, "dice")
    assert set(saved["model"]) == set(net.state_dict())  # {"model": state_dict}: what load_weights reads

    before = (tmp_path / "model.pt").read_bytes()
    resumed = BestModelCheckpoint(str(tmp_path), torch.nn.Linear(4, 2))  # a new process after a crash
    resumed.load_state_dict({"best_metric": None, "best_epoch": -1})
    resumed(_evaluator_state(4, 0.45))  # worse than the best before the crash
    assert (tmp_path / "model.pt").read_bytes() == before
    with torch.no_grad():
        resumed.network.weight[0, 0] = math.nan
    with pytest.raises(InputError, match="epoch 5: training diverged, the weights hold NaN"):
        resumed(_evaluator_state(5, 0.9))
    assert (tmp_path / "model.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left


def test_nan_weights_are_never_saved_as_a_checkpoint(tmp_path):
    """An optimizer step that overflows (finite loss, NaN weights afterwards) stops the run before the epoch's save."""
    net = torch.nn.Linear(4, 2)

    def step(engine, batch):
        if engine.state.epoch == 2:
            with torch.no_grad():
                net.bias[1] = math.inf

    trainer = Engine(step)
    ResumableCheckpoint(str(tmp_path), {"model": net}).attach(trainer)
    with pytest.raises(InputError, match=r"epoch 2: training diverged, the weights hold NaN/Inf \(bias\); refused to "
                                         r"save last_checkpoint_2.pt"):
        trainer.run([0], max_epochs=3)
    assert [p.name for p in tmp_path.iterdir()] == ["last_checkpoint_1.pt"]
    assert all_finite(torch.load(tmp_path / "last_checkpoint_1.pt", weights_only=True)["model"])


@pytest.mark.slow
def test_resume_keeps_the_best_model(trained, phantom_dir, tmp_path):
    """After a resume, a validation that is not better than the best before the crash leaves model.pt alone.

    The record in model.pt is set to a Dice of 1.0 (constructed precondition: no validation can exceed it), so the
    outcome does not depend on what the tiny network learns in one more epoch."""
    ckpt = tmp_path / "models"
    shutil.copytree(trained, ckpt)
    saved = torch.load(ckpt / "model.pt", weights_only=True)
    torch.save({**saved, "best_metric": 1.0, "best_epoch": 1}, ckpt / "model.pt")
    before = (ckpt / "model.pt").read_bytes()
    result = train(phantom_dir, ckpt, tmp_path, epochs=2)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"resumed training from {ckpt / 'last_checkpoint_1.pt'}" in log
    assert "is not better than 1.0000 (epoch 1)" in log
    assert (ckpt / "model.pt").read_bytes() == before
    last = torch.load(ckpt / "last_checkpoint_2.pt", weights_only=True)
    assert last["best_model"] == {"best_metric": 1.0, "best_epoch": 1}


# ------------------------------------------------------------------------------------------------- full disk
def test_disk_full_while_saving_keeps_the_previous_file(tmp_path):
    with small_tmpfs(tmp_path / "disk", 1024) as disk:
        save_synced({"model": {"w": torch.zeros(10)}}, disk / "model.pt")
        before = (disk / "model.pt").read_bytes()
        fill(disk, 64 * 1024)
        with pytest.raises(InputError) as info:
            save_synced({"model": {"w": torch.zeros(100_000)}}, disk / "model.pt", what="best model")  # 400 kB
        assert f"{disk / 'model.pt'}: cannot save the best model (the disk is full); no earlier file was replaced" in \
            info.value.message
        assert (disk / "model.pt").read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "model.pt"]  # the temporary file is removed


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_keeps_checkpoints(trained, phantom_dir, tmp_path):
    with small_tmpfs(tmp_path / "disk", 1024) as disk:
        ckpt = disk / "models"
        shutil.copytree(trained, ckpt)
        before = digest(ckpt)
        fill(disk, 16 * 1024)  # the next checkpoint (about 100 kB) cannot be written
        result = train(phantom_dir, ckpt, tmp_path, epochs=2)
        line = assert_one_line_error(result, "the disk is full", "no earlier file was replaced or removed")
        assert str(ckpt) in line
        assert digest(ckpt) == before  # model.pt and last_checkpoint_1.pt untouched, no temporary file left


# -------------------------------------------------------------------------------------------- damaged checkpoints
def test_damaged_newest_checkpoint_falls_back_to_an_older_complete_one(tmp_path):
    net = torch.nn.Linear(4, 2)
    trainer = Engine(lambda e, b: None)
    handler = ResumableCheckpoint(str(tmp_path), {"model": net})
    handler.attach(trainer)
    trainer.run([0], max_epochs=2)
    good = tmp_path / "last_checkpoint_2.pt"
    older = tmp_path / "last_checkpoint_1.pt"
    shutil.copy(good, older)  # as after a kill between the save of epoch 2 and the deletion of epoch 1
    older_bytes = good.read_bytes()
    good.write_bytes(older_bytes[: len(older_bytes) // 2])  # damaged outside our control (copy, disk)
    fresh = Engine(lambda e, b: None)
    resumed = ResumableCheckpoint(str(tmp_path), {"model": torch.nn.Linear(4, 2)})
    resumed.attach(fresh)
    fresh.run([0], max_epochs=3)
    assert resumed.resumed_from == older
    assert [p.name for p in list_last_checkpoints(tmp_path)] == ["last_checkpoint_3.pt"]  # damaged one removed


@pytest.mark.slow
def test_truncated_last_checkpoint_is_one_line(trained, phantom_dir, tmp_path):
    ckpt = tmp_path / "models"
    shutil.copytree(trained, ckpt)
    damaged = ckpt / "last_checkpoint_1.pt"
    damaged.write_bytes(damaged.read_bytes()[:20_000])
    before = digest(ckpt)
    result = train(phantom_dir, ckpt, tmp_path, epochs=2)
    assert_one_line_error(result, f"{damaged}: cannot resume, the checkpoint is damaged", "--resume False")
    assert digest(ckpt) == before


# ------------------------------------------------------------------------------------------------------ NaN loss
@pytest.mark.slow
def test_nan_loss_stops_with_one_line_naming_the_epoch(trained, phantom_dir, tmp_path):
    """A learning rate of 1e20 (Adam steps by about the rate) makes the weights huge and the loss NaN/Inf."""
    ckpt = tmp_path / "models"
    shutil.copytree(trained, ckpt)
    result = train(phantom_dir, ckpt, tmp_path, epochs=3, learning_rate=1e20, resume=False)
    line = assert_one_line_error(result, "the training loss is", "training stopped")
    assert line.startswith("error: epoch ") and ", iteration " in line
    epoch = int(line.split("epoch ")[1].split(",")[0])
    assert epoch <= 3
    for path in ckpt.glob("*.pt"):  # nothing saved after the loss diverged holds NaN/Inf weights
        state = torch.load(path, weights_only=True)["model"]
        assert all_finite(state), path
    assert list_last_checkpoints(ckpt) and all(int(p.stem.rsplit("_", 1)[1]) < epoch for p in list_last_checkpoints(ckpt))


# -------------------------------------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_label_value_outside_the_classes_names_the_file(phantom_dir, tmp_path):
    data = tmp_path / "kits"
    shutil.copytree(phantom_dir, data)
    label_file = data / "case_00000" / "segmentation.nii.gz"  # training or validation fold: both are checked
    label = nib.load(label_file)
    array = np.asarray(label.dataobj).copy()
    array.flat[0] = 7
    nib.save(nib.Nifti1Image(array, label.affine, label.header), str(label_file))
    result = train(data, tmp_path / "models", tmp_path)
    assert_one_line_error(result, f"{label_file}: label values 7 are not among the allowed values 0, 1, 2, 3")
    assert not (tmp_path / "models" / "model.pt").exists()


def test_negative_epochs_is_one_line(phantom_dir, tmp_path):
    result = train(phantom_dir, tmp_path / "models", tmp_path, epochs=-1)
    assert_one_line_error(result, "--epochs: got -1; it must be 1 or more")


@pytest.mark.parametrize("option, value, expected", [
    ("epochs", 0, "--epochs: got 0; it must be 1 or more"),
    ("epochs", 1.5, "--epochs: got 1.5; it must be a whole number"),
    ("epochs", "ten", "--epochs: got 'ten'; it must be a whole number"),
    ("batch_size", 0, "--batch_size: got 0; it must be 1 or more"),
    ("val_interval", -2, "--val_interval: got -2; it must be 1 or more"),
    ("learning_rate", -0.001, "--learning_rate: got -0.001; it must be greater than 0"),
    ("learning_rate", "nan", "--learning_rate: got 'nan'; it must be a number"),
    ("weight_decay", -1, "--weight_decay: got -1; it must be 0 or more"),
    ("num_workers", -1, "--num_workers: got -1; it must be 0"),
    ("cache_rate", 2, "--cache_rate: got 2; it must be between 0 and 1"),
])
def test_numeric_options_out_of_range(option, value, expected, phantom_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training", bundle_root=str(BUNDLE_ROOT),
                              dataset_dir=str(phantom_dir), ckpt_dir=str(tmp_path / "models"), **{option: value})
    with pytest.raises(Exception) as info:
        workflow.initialize()
    message = find_input_error(info.value)
    assert message is not None and expected in message, (message, info.value)
    assert not (tmp_path / "models").exists()
