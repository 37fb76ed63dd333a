"""Bundle workflows: config consistency, model-zoo properties, a tiny train -> evaluate -> infer run on
synthetic phantoms, and resuming training after ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out

from conftest import BUNDLE_ROOT, TINY_OVERRIDES, run_bundle

CONFIGS = BUNDLE_ROOT / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = [TRAIN, str(CONFIGS / "evaluate.json")]
INFERENCE = str(CONFIGS / "inference.json")
META = str(CONFIGS / "metadata.json")
SCHEMA = BUNDLE_ROOT.parent / "shared" / "monai_meta_schemas" / "meta_schema_20220324.json"


def _parser(config_files) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_files)
    parser["bundle_root"] = str(BUNDLE_ROOT)
    return parser


def _transform_signature(transform) -> tuple:
    """Class name and the parameters that define a deterministic preprocessing step (keys excluded)."""
    params = {k: v for k, v in vars(transform).items() if not k.startswith("_") and k not in ("keys",)}
    return type(transform).__name__, repr(sorted((k, repr(v)) for k, v in params.items() if "key" not in k))


def test_train_and_inference_share_network_and_preprocessing():
    train, infer = _parser(TRAIN), _parser(INFERENCE)
    assert train.get("network_def") == infer.get("network_def")
    for key in ("hu_window", "slice_size", "keep_cyst", "num_classes"):
        assert train.get(key) == infer.get(key), key
    train_steps = [t for t in train.get_parsed_content("deterministic_transforms")
                   if type(t).__name__ not in ("CheckLabelValuesd", "MapLabelValued")]  # label-only steps
    infer_steps = list(infer.get_parsed_content("preprocessing").transforms)
    # inference computes the HU window + aspect padding + resize in one slice-batch step (issue 19): the same three
    # MONAI steps of train
    steps = ["ScaleIntensityRanged", "PadToAspectd", "Resized"]
    train_names = [type(t).__name__ for t in train_steps]
    at = train_names.index("ScaleIntensityRanged")
    assert train_names[at:at + 3] == steps
    assert (train_names[:at] + ["WindowAndResized"] + train_names[at + 3:]
            == [type(t).__name__ for t in infer_steps])
    train_infer = train.get_parsed_content("validate#inferer")
    infer_inferer = infer.get_parsed_content("inferer")
    assert train_infer.spatial_dim == infer_inferer.spatial_dim
    # the HU window, padding and resize reach the instantiated transforms with the same values
    scaler, padder, resizer = train_steps[at].scaler, train_steps[at + 1].padder, train_steps[at + 2].resizer
    window = next(t for t in infer_steps if type(t).__name__ == "WindowAndResized")
    assert (scaler.a_min, scaler.a_max, scaler.b_min, scaler.b_max, scaler.clip) == (*window.hu_window, 0.0, 1.0, True)
    assert tuple(resizer.spatial_size[:2]) == window.slice_size == tuple(train_infer.roi_size) == padder.slice_size
    assert train_steps[at + 2].mode[0] == "area"


def test_metadata_labels_match_configs_and_schema():
    meta = json.loads(Path(META).read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text())) if SCHEMA.exists() else None
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    infer = _parser(INFERENCE)
    label_names = infer.get_parsed_content("label_names")
    assert channel_def["0"] == "background"
    assert {name: int(value) for value, name in channel_def.items() if value != "0"} == label_names
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == infer.get_parsed_content("num_classes")
    assert list(meta["network_data_format"]["inputs"])[0] == "image"
    assert list(meta["network_data_format"]["outputs"])[0] == "pred"
    assert meta["version"] in meta["changelog"]


def test_metadata_is_valid_against_zoo_schema():
    if not SCHEMA.exists():
        pytest.skip(f"schema copy not available: {SCHEMA}")
    jsonschema.validate(json.loads(Path(META).read_text()), json.loads(SCHEMA.read_text()))


def test_cyst_switch_changes_classes_consistently():
    for files in (TRAIN, INFERENCE):
        parser = _parser(files)
        parser["keep_cyst"] = True
        assert parser.get_parsed_content("num_classes") == 4
        assert parser.get_parsed_content("network_def").decoder.head.out_channels == 4 if hasattr(
            parser.get_parsed_content("network_def").decoder, "head") else True
    train = _parser(TRAIN)
    assert train.get_parsed_content("label_values") == [0, 1, 2, 1]  # default: cyst -> kidney (KiTS19 style)


def test_verify_net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFERENCE, device="cpu", n=1, any=1,
                      **{"network_def#channels": [4, 8, 16, 32, 32]})


@pytest.mark.parametrize(
    "config_file, workflow_type, run_id",
    # evaluate.json extends train.json, so it is checked against the train properties (as the zoo tests do)
    [(TRAIN, "train", "training"), (EVALUATE, "train", "evaluating"), (INFERENCE, "infer", "inferring")],
)
def test_zoo_properties(config_file, workflow_type, run_id, phantom_dir, tiny_weights, tmp_path):
    workflow = ConfigWorkflow(config_file=config_file, meta_file=META, workflow_type=workflow_type, run_id=run_id,
                              bundle_root=str(BUNDLE_ROOT), dataset_dir=str(phantom_dir), model_path=str(tiny_weights),
                              output_dir=str(tmp_path), num_folds=2, input_path=str(phantom_dir), **TINY_OVERRIDES)
    workflow.initialize()
    assert workflow.check_properties() in (None, []), workflow.check_properties()
    workflow.finalize()
    parser = _parser(config_file)
    for run in ("run", run_id, "initialize", "finalize"):
        assert run in parser.config, run
    # the same list, by macro, or by reference (train.json: MONAI Label resolves every id, a copy would run twice)
    assert parser.get(run_id) in ("%run", "@run", parser.get("run"))




@pytest.mark.slow
def test_train_evaluate_infer_end_to_end(phantom_dir, tmp_path):
    """Two epochs on two synthetic phantoms, evaluation on the held-out fold, inference on every case."""
    ckpt = tmp_path / "models"
    common = {"dataset_dir": str(phantom_dir), "num_folds": 2, "ckpt_dir": str(ckpt), "num_workers": 0}
    # val_interval 5 > epochs: model.pt must still come from this run (validation after the last epoch)
    result = run_bundle("training", [TRAIN], epochs=2, val_interval=5, progress_bar=False,
                         output_dir=str(tmp_path / "train"), **common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (ckpt / "model.pt").is_file() and (ckpt / "last_checkpoint_2.pt").is_file()
    assert "Epoch[2] Metrics" in result.stdout + result.stderr
    assert any((tmp_path / "train" / "tensorboard").iterdir())

    result = run_bundle("evaluating", EVALUATE, output_dir=str(tmp_path / "eval"), **common)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "eval" / "metrics_per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case,") and "kidney_dice" in rows[0] and "tumour_hd95_mm" in rows[0]
    assert len(rows) == 1 + 2  # the validation fold: 2 of 4 cases
    assert json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())

    out = tmp_path / "inference"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", INFERENCE, "--bundle_root",
         str(BUNDLE_ROOT), "--input_path", str(phantom_dir), "--output_dir", str(out), "--model_path",
         str(ckpt / "model.pt"), *sum(([f"--{k}", json.dumps(v)] for k, v in TINY_OVERRIDES.items()), [])],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for case in sorted(phantom_dir.glob("case_*")):
        image, seg = nib.load(case / "imaging.nii.gz"), nib.load(out / f"{case.name}.nii.gz")
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        assert json.loads((out / f"{case.name}_volumes.json").read_text())["case"] == case.name


@pytest.mark.slow
def test_training_resumes_after_kill(phantom_dir, tmp_path):
    """kill -9 once a checkpoint exists; the same command then resumes from it and finishes."""
    from scripts.training.checkpoint import find_last_checkpoint

    ckpt, epochs = tmp_path / "models", 8
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--bundle_root",
            str(BUNDLE_ROOT), "--dataset_dir", str(phantom_dir), "--num_folds", "2", "--ckpt_dir", str(ckpt),
            "--output_dir", str(tmp_path / "train"), "--epochs", str(epochs), "--val_interval", "100",
            "--num_workers", "0", "--progress_bar", "False",
            *sum(([f"--{k}", json.dumps(v)] for k, v in TINY_OVERRIDES.items()), [])]
    process = subprocess.Popen(args, cwd=BUNDLE_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while find_last_checkpoint(ckpt) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = find_last_checkpoint(ckpt)
    assert killed_at is not None, "no checkpoint was written"
    done = int(killed_at.stem.rsplit("_", 1)[1])
    assert done < epochs, "training finished before it could be killed"

    result = subprocess.run(args, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"resumed training from {killed_at}" in log
    completed = [int(line.split("Epoch[")[1].split("]")[0]) for line in log.splitlines()
                 if "SupervisedTrainer" in line and "Epoch[" in line and "Complete" in line]
    assert completed == list(range(done + 1, epochs + 1)), completed
    assert sorted(p.name for p in ckpt.glob("last_checkpoint_*.pt")) == [f"last_checkpoint_{epochs}.pt"]
