"""TorchScript (``monai.bundle ckpt_export``) and ONNX export of 2D networks, ONNX Runtime agreeing with torch,
and the inference workflow run through ONNX Runtime (``--backend onnxruntime``)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet

from conftest import BUNDLE_ROOT, TINY_OVERRIDES
from scripts.networks import PlainUNet, PocketUNet, SDUNet, WPUNet
from scripts.inference.onnx_backend import OnnxRuntimeNetwork, export_onnx, max_abs_difference

INFERENCE = str(BUNDLE_ROOT / "configs" / "inference.json")
META = str(BUNDLE_ROOT / "configs" / "metadata.json")
TOLERANCE = 1e-4
SLICE = (64, 64)


def _networks():
    torch.manual_seed(0)
    return {
        "WPUNet": WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)),
        "BasicUNet": BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4)),
        "SDUNet": SDUNet(channels=(4, 8, 16), strides=(2, 2), norm=("group", {"num_groups": 4}), head_channels=4),
        "PlainUNet": PlainUNet(channels=(4, 8, 16)),
        "PocketUNet": PocketUNet(features=4, depth=2),
    }


FAMILY_2D = ["WPUNet", "SDUNet", "PlainUNet", "PocketUNet", "BasicUNet"]


def _overrides() -> list[str]:
    return sum(([f"--{k}", json.dumps(v)] for k, v in TINY_OVERRIDES.items()), [])


@pytest.mark.parametrize("name", FAMILY_2D)
def test_onnx_runtime_matches_torch(name, tmp_path):
    network = _networks()[name].eval()
    path = export_onnx(network, tmp_path / f"{name}.onnx", SLICE)
    torch.manual_seed(1)
    # batch 3 != the export example's 2: the batch axis is dynamic (the slice inferer's last batch is smaller)
    difference = max_abs_difference(network, path, torch.rand(3, 1, *SLICE))
    assert difference <= TOLERANCE, difference
    with torch.no_grad():
        logits = OnnxRuntimeNetwork(path)(torch.rand(1, 1, *SLICE))
    assert logits.shape == (1, 3, *SLICE) and logits.dtype == torch.float32
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # no temporary file left behind


@pytest.mark.parametrize("name", FAMILY_2D)
def test_torchscript_matches_torch(name, tmp_path):
    from monai.networks.utils import convert_to_torchscript

    network = _networks()[name].eval()
    x = torch.rand(2, 1, *SLICE)
    convert_to_torchscript(network, filename_or_obj=str(tmp_path / "net.ts"), use_trace=True, inputs=[x])
    reloaded = torch.jit.load(str(tmp_path / "net.ts"))
    with torch.no_grad():
        assert torch.allclose(reloaded(x), network(x), atol=1e-6)


def test_ckpt_export_and_onnx_cli(tiny_weights, tmp_path):
    """The documented commands: ``monai.bundle ckpt_export`` (TorchScript) and ``scripts.inference.onnx_backend`` (ONNX)."""
    ts = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
         "--ckpt_file", str(tiny_weights), "--meta_file", META, "--config_file", INFERENCE, "--key_in_ckpt", "model",
         "--use_trace", "True", "--input_shape", json.dumps([1, 1, *SLICE]), *_overrides()],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300)
    assert ts.returncode == 0, ts.stderr[-3000:]
    onnx = subprocess.run(
        [sys.executable, "-m", "scripts.inference.onnx_backend", "--config_file", INFERENCE, "--ckpt_file", str(tiny_weights),
         "--onnx_path", str(tmp_path / "model.onnx"), *_overrides()],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300)
    assert onnx.returncode == 0, onnx.stderr[-3000:]
    assert "max abs difference ONNX Runtime vs torch" in onnx.stdout
    network = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))
    network.load_state_dict(torch.load(tiny_weights, weights_only=True)["model"])
    network.eval()
    x = torch.rand(4, 1, *SLICE)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "model.ts"))(x), network(x), atol=1e-6)
    assert max_abs_difference(network, tmp_path / "model.onnx", x) <= TOLERANCE


def _infer(input_path, out, weights, **options) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", INFERENCE, "--bundle_root",
            str(BUNDLE_ROOT), "--input_path", str(input_path), "--output_dir", str(out), "--model_path",
            str(weights), "--num_workers", "0", "--preview", "False", *_overrides()]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return subprocess.run(args, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600)


def test_inference_through_onnxruntime_equals_torch(phantom_dir, tmp_path):
    """Same weights, torch vs ONNX Runtime backend: the same label map. Random weights scaled by 3, so that the
    prediction is not one label everywhere (asserted below; that would make the comparison empty)."""
    network = _networks()["WPUNet"]
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)
    weights = tmp_path / "model.pt"
    torch.save({"model": network.state_dict()}, weights)
    export_onnx(network, tmp_path / "model.onnx", SLICE)
    case = phantom_dir / "case_00002" / "imaging.nii.gz"
    torch_run = _infer(case, tmp_path / "torch", weights, precision="fp32", channels_last=False)  # as ORT: plain fp32
    assert torch_run.returncode == 0, torch_run.stderr[-3000:]
    ort_run = _infer(case, tmp_path / "ort", tmp_path / "missing.pt", backend="onnxruntime",
                     onnx_path=tmp_path / "model.onnx")
    assert ort_run.returncode == 0, ort_run.stderr[-3000:]
    expected = np.asarray(nib.load(tmp_path / "torch" / "case_00002.nii.gz").dataobj)
    actual = nib.load(tmp_path / "ort" / "case_00002.nii.gz")
    assert actual.shape == expected.shape and np.allclose(actual.affine, nib.load(case).affine, atol=1e-5)
    assert len(np.unique(expected)) > 1, "degenerate prediction: the comparison would be empty"
    assert np.mean(np.asarray(actual.dataobj) == expected) >= 0.999


def test_onnxruntime_backend_without_model_is_one_line_error(phantom_dir, tiny_weights, tmp_path):
    missing = tmp_path / "none.onnx"
    result = _infer(phantom_dir / "case_00000" / "imaging.nii.gz", tmp_path / "out", tiny_weights,
                    backend="onnxruntime", onnx_path=missing)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {missing}: no ONNX model; export one with")
    assert "Traceback" not in result.stderr
