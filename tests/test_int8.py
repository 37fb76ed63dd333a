"""int8 static quantisation (ONNX Runtime) and the backend rule of ``auto`` per CPU class (issue 17).

All data here are SYNTHETIC phantoms (``conftest.phantom_dir``: four cases, seed 3, 96x96 in-plane); slices of
cases 0-2 train a tiny WP-UNet on a synthetic intensity task for a few seconds and calibrate the int8 model, case 3
is held out for the agreement checks. Kidney/tumour Dice of int8 vs fp32 with trained weights is a benchmark
(``bench/int8_dice.py``), not a test.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.common.errors import InputError

BUNDLE_ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime.quantization")

SLICE = (64, 64)
HU_WINDOW = (-79, 304)


def _cases(phantom_dir: Path) -> list[Path]:
    return sorted(p for p in phantom_dir.iterdir() if (p / "imaging.nii.gz").is_file())


@pytest.fixture(scope="module")
def calibration(phantom_dir) -> torch.Tensor:
    """Preprocessed body slices of the SYNTHETIC training cases 0-2 (never of the held-out case 3)."""
    from scripts.inference.quantize import calibration_slices

    return calibration_slices([str(c / "imaging.nii.gz") for c in _cases(phantom_dir)[:3]], HU_WINDOW, SLICE, 48)


@pytest.fixture(scope="module")
def trained(calibration):
    """A tiny WP-UNet (4-8-16, depthwise separable convs like the paper's) trained 60 Adam steps to split the
    windowed SYNTHETIC slices into three intensity classes (fat/air, soft tissue, contrast/bone).

    A random network's argmax is one class everywhere (eval-mode BatchNorm), which would make any agreement check
    trivial; this synthetic task gives many class boundaries in a few seconds, which is what int8 can disturb.
    """
    from monai.losses import DiceCELoss

    from scripts.networks import WPUNet

    torch.manual_seed(0)
    net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2), dropout=0.0)
    target = (calibration > 0.3).long() + (calibration > 0.7).long()
    loss_fn, optimiser = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        index = torch.randint(0, len(calibration), (8,))
        optimiser.zero_grad()
        loss_fn(net(calibration[index]), target[index]).backward()
        optimiser.step()
    return net.eval()


@pytest.fixture(scope="module")
def int8_model(trained, calibration, tmp_path_factory):
    from scripts.inference.quantize import quantize_network

    out = tmp_path_factory.mktemp("int8")
    return quantize_network(trained, out / "model_int8.onnx", calibration, SLICE, fp32_onnx=out / "model_fp32.onnx")


def _labels(network, case: Path, fast_path=None) -> np.ndarray:
    from scripts.inference.fast_path import FastPath
    from scripts.inference.streaming import StreamingSegmenter

    segmenter = StreamingSegmenter(network, "cpu", slice_size=SLICE, fast_path=fast_path or FastPath(),
                                   lcc_enabled=False)
    return segmenter.segment_file(case / "imaging.nii.gz")[0]


def test_calibration_slices_are_preprocessed_body_slices(phantom_dir):
    from scripts.inference.quantize import calibration_slices

    slices = calibration_slices([str(_cases(phantom_dir)[0] / "imaging.nii.gz")], HU_WINDOW, SLICE, num_slices=6)
    assert slices.shape[1:] == (1, *SLICE) and 1 <= len(slices) <= 6
    assert slices.min() >= 0.0 and slices.max() <= 1.0
    assert bool((slices.flatten(1).amax(1) > 0).all())  # no all-air slice
    with pytest.raises(InputError, match="no training images"):
        calibration_slices([], HU_WINDOW, SLICE)


def test_int8_model_is_quantised_and_agrees_with_fp32(trained, int8_model, phantom_dir):
    """On the held-out SYNTHETIC case the int8 labels equal fp32's on >= 99 % of voxels, and their foreground
    (classes 1-2) overlaps fp32's with Dice >= 0.9.

    Why these thresholds: int8 changes a label only where fp32's two best logits are within the quantisation error
    of each other, i.e. on class boundaries (about 0.3 % of voxels here); the foreground is about 5 % of the
    voxels, so the voxel agreement alone would pass a model that loses most of it, hence the Dice on the
    foreground. A broken quantisation (wrong scales, uncalibrated activations) flips whole regions and fails both.
    """
    import onnx

    from scripts.inference.onnx_backend import OnnxRuntimeNetwork

    model = onnx.load(str(int8_model))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert any(p.key == "bundle_calibration_slices" for p in model.metadata_props)
    held_out = _cases(phantom_dir)[3]
    reference = _labels(trained, held_out)
    labels = _labels(OnnxRuntimeNetwork(int8_model, num_threads=1), held_out)
    assert labels.shape == reference.shape
    assert 0.005 < (reference > 0).mean() < 0.5, "the trained network should find foreground on the held-out case"
    agreement = float((labels == reference).mean())
    overlap = 2 * np.logical_and(labels > 0, reference > 0).sum() / ((labels > 0).sum() + (reference > 0).sum())
    assert agreement >= 0.99, agreement
    assert overlap >= 0.90, overlap


def test_int8_artefact_written_atomically(trained, tmp_path, monkeypatch, phantom_dir):
    """A quantisation that fails half way leaves the previous artefact as it was and no temporary files."""
    import onnxruntime.quantization as ortq

    from scripts.inference import quantize

    target = tmp_path / "derived" / "model_int8.onnx"
    target.parent.mkdir()
    target.write_bytes(b"previous artefact")

    def fail(*args, **kwargs):
        Path(args[1]).write_bytes(b"half written")
        raise RuntimeError("calibration interrupted")

    monkeypatch.setattr(ortq, "quantize_static", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        quantize.quantize_network(trained, target, torch.rand(4, 1, *SLICE), SLICE)
    assert target.read_bytes() == b"previous artefact"
    assert sorted(os.listdir(target.parent)) == ["model_int8.onnx"]


def test_damaged_int8_artefact_is_refused_with_one_line(int8_model, tmp_path):
    from scripts.inference.onnx_backend import OnnxRuntimeNetwork

    damaged = tmp_path / "model_int8.onnx"
    data = Path(int8_model).read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        OnnxRuntimeNetwork(damaged)
    message = str(info.value)
    assert str(damaged) in message and "\n" not in message


# ---------------------------------------------------------------------------------------- backend "auto" per CPU class
def _cpu(monkeypatch, cls: str) -> None:
    """Report this CPU as AVX2-only or as having native bf16, whatever it really is."""
    from scripts.inference import fast_path

    monkeypatch.setattr(fast_path, "cpu_supports_bf16", lambda: cls == "bf16")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")


def test_auto_backend_follows_the_measured_rule_per_cpu_class(trained, monkeypatch):
    from scripts.inference.fast_path import AVX2_RULES, choose_backend, cpu_class
    from scripts.networks import PocketUNet

    pocket = PocketUNet(spatial_dims=2, out_channels=3, features=4, depth=2)
    _cpu(monkeypatch, "avx2")
    assert cpu_class() == "avx2"
    assert choose_backend(trained, "cpu") == AVX2_RULES["depthwise"]
    assert choose_backend(pocket, "cpu") == AVX2_RULES["plain"]
    assert choose_backend(trained, "cuda")[0] == "torch"
    assert choose_backend(trained, "cpu", "torch") == ("torch", None)  # an explicit choice is kept
    _cpu(monkeypatch, "bf16")
    assert cpu_class() == "bf16"
    assert choose_backend(trained, "cpu") == ("torch", None)  # bf16 + channels_last measured fastest there
    with pytest.raises(InputError, match="--backend 'int4'"):
        choose_backend(trained, "cpu", "int4")


def test_auto_backend_on_avx2_matches_torch_fp32_labels(trained, phantom_dir, tmp_path, monkeypatch):
    """On a CPU reported as AVX2-only, ``backend auto`` runs what the rule picks (ONNX Runtime fp32 for this
    depthwise network) and its labels equal torch fp32's on >= 99.9 % of the held-out SYNTHETIC case's voxels
    (fp32 in both: only float summation order differs). The export is cached and redone for other weights."""
    from scripts.inference.fast_path import AVX2_RULES, FastPath
    from scripts.inference.onnx_backend import OnnxRuntimeNetwork, check_backend
    from scripts.inference.streaming import build_segmenter

    _cpu(monkeypatch, "avx2")
    weights = tmp_path / "model.pt"
    torch.save({"model": trained.state_dict()}, weights)
    assert check_backend("auto", weights, tmp_path / "none.onnx") == "auto"
    options = dict(slice_size=SLICE, lcc_enabled=False, fast_path=FastPath(channels_last=True))
    segmenter = build_segmenter(copy.deepcopy(trained), weights, "cpu", backend="auto", **options)
    expected = OnnxRuntimeNetwork if AVX2_RULES["depthwise"][0] == "onnxruntime" else torch.nn.Module
    assert isinstance(segmenter.network, expected)
    held_out = _cases(phantom_dir)[3] / "imaging.nii.gz"
    labels = segmenter.segment_file(held_out)[0]
    reference = _labels(trained, _cases(phantom_dir)[3])
    assert float((labels == reference).mean()) >= 0.999
    cache = Path(f"{weights}.auto.onnx")
    if expected is OnnxRuntimeNetwork:
        assert segmenter.batch_size == AVX2_RULES["depthwise"][1]  # the rule's batch when left at the CPU default
        stamp = cache.stat().st_mtime_ns
        explicit = build_segmenter(copy.deepcopy(trained), weights, "cpu", backend="auto",
                                   **{**options, "fast_path": FastPath(sw_batch_size=2)})
        assert explicit.batch_size == 2  # an explicit --slice_batch_size is kept
        assert cache.stat().st_mtime_ns == stamp  # same weights: the export is reused
        other = copy.deepcopy(trained)
        torch.nn.init.zeros_(next(other.parameters()))
        torch.save({"model": other.state_dict()}, weights)
        build_segmenter(copy.deepcopy(trained), weights, "cpu", backend="auto", **options)
        assert cache.stat().st_mtime_ns != stamp  # other weights: exported again
        cache.write_bytes(cache.read_bytes()[:100])  # damaged (e.g. a copy cut short): exported again, not an error
        again = build_segmenter(copy.deepcopy(trained), weights, "cpu", backend="auto", **options)
        assert isinstance(again.network, OnnxRuntimeNetwork) and cache.stat().st_size > 1000


@pytest.mark.slow
def test_quantize_workflow_then_int8_inference(phantom_dir, tiny_weights, tmp_path):
    """``run quantize`` (train.json + quantize.json) writes models/derived/model_int8.onnx from the training split,
    and ``run inferring`` with configs/inference_int8.json segments a SYNTHETIC phantom with it."""
    import shutil

    from monai.bundle import ConfigParser

    from conftest import TINY_OVERRIDES
    from scripts.reports.workflow import run_workflow_in_process

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_weights, models / "model.pt")
    run_workflow_in_process("quantize", ["configs/train.json", "configs/quantize.json"], workflow_type="train",
                            dataset_dir=str(phantom_dir), ckpt_dir=str(models), calibration_slices=8, num_folds=2,
                            **TINY_OVERRIDES)
    int8 = models / "derived" / "model_int8.onnx"
    assert int8.is_file() and (models / "derived" / "model_fp32.onnx").is_file()
    assert not [p for p in int8.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    case = _cases(phantom_dir)[3]
    out = tmp_path / "out"
    run_workflow_in_process("inferring", ["configs/inference.json", "configs/inference_int8.json"],
                            input_path=str(case / "imaging.nii.gz"), output_dir=str(out), onnx_path=str(int8),
                            num_workers=0, **TINY_OVERRIDES)
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / f) for f in ("inference.json", "inference_int8.json")])
    parser["bundle_root"] = str(tmp_path)
    assert Path(parser.get_parsed_content("onnx_path")) == int8  # where the overlay looks by default
    written = list(out.rglob("*.nii.gz"))
    assert written, "no segmentation written"
    label = nib.load(str(written[0]))
    assert label.shape == nib.load(str(case / "imaging.nii.gz")).shape
