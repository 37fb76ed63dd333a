"""scripts/inference/fast_path.py: the automatic choice, each lever's exactness, and clear errors for bad values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import scripts.inference.fast_path as fast_path
from scripts.inference.fast_path import FastPath, choose_fast_path, has_depthwise_convs, predict_labels, prepare_network
from scripts.networks import PocketUNet, SDUNet, WPUNet


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "wp": WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2)),
        "sd": SDUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
                     norm=("group", {"num_groups": 4})),
        "pocket": PocketUNet(spatial_dims=2, in_channels=1, out_channels=3, features=8, depth=3, pocket=True),
    }


@pytest.mark.parametrize("name", ["wp", "sd", "pocket"])
@pytest.mark.parametrize("path", [FastPath(channels_last=True), FastPath(fold_batchnorm=True),
                                  FastPath(compile="torchscript", channels_last=True)], ids=str)
def test_fp32_levers_are_exact(name, path):
    net = _nets()[name].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = net(x).max(dim=1).indices
    labels = predict_labels(prepare_network(net, "cpu", path, example_shape=(1, 1, 64, 64)), x, path)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 64, 64)
    assert torch.equal(labels.long(), expected)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # caller's network untouched
    assert all(p.requires_grad for p in net.parameters())


def test_batchnorm_folding_is_exact_and_real():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.rand(1, 1, 16, 16)
    folded = prepare_network(net, "cpu", FastPath(fold_batchnorm=True))
    assert isinstance(folded[1], nn.Identity) and isinstance(net[1], nn.BatchNorm2d)
    torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)


def test_bf16_agrees_with_fp32():
    if not fast_path.cpu_supports_bf16():
        pytest.skip("this CPU has neither AVX-512 BF16 nor AMX: the bf16 path is never chosen here")
    net = _nets()["wp"].eval()
    x = torch.rand(2, 1, 64, 64)
    fp32 = predict_labels(prepare_network(net, "cpu", FastPath()), x, FastPath())
    path = FastPath("bf16", channels_last=True)
    bf16 = predict_labels(prepare_network(net, "cpu", path), x, path)
    assert (fp32 == bf16).float().mean() >= 0.95  # random weights: logits close together, the hardest case


def test_auto_choice_follows_the_hardware(monkeypatch):
    net = _nets()["wp"]
    monkeypatch.setattr(fast_path, "cpu_supports_bf16", lambda: True)
    assert choose_fast_path(net, "cpu") == FastPath("bf16", True, False, "none", 1)  # WP-UNet: no conv->BN pair
    monkeypatch.setattr(fast_path, "cpu_supports_bf16", lambda: False)
    assert choose_fast_path(net, "cpu") == FastPath("fp32", True, False, "none", 1)
    with_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert choose_fast_path(with_bn, "cpu").fold_batchnorm
    cuda = choose_fast_path(net, "cuda")  # no GPU needed: the choice only reads the device type
    assert cuda.precision == "fp16" and cuda.sw_batch_size == 32 and not cuda.channels_last  # depthwise net
    assert choose_fast_path(_nets()["pocket"], "cuda").channels_last
    assert has_depthwise_convs(net) and not has_depthwise_convs(_nets()["pocket"])
    explicit = choose_fast_path(net, "cpu", precision="fp32", channels_last="False", sw_batch_size="4")
    assert explicit == FastPath("fp32", False, False, "none", 4)


def test_non_torch_backends_pass_through():
    class FakeOnnx:
        def __call__(self, x):
            return torch.cat([x, 1 - x, x * 0], dim=1)

    backend = FakeOnnx()
    path = choose_fast_path(backend, "cpu")
    assert path.precision == "fp32" and not path.channels_last
    assert prepare_network(backend, "cpu", path) is backend
    assert predict_labels(backend, torch.full((1, 1, 4, 4), 0.9), path).eq(0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp64"}, "--precision: expected 'auto' or one of"),
    ({"precision": "fp16"}, "--precision fp16: only on a CUDA device"),
    ({"channels_last": "maybe"}, "--channels_last: expected 'auto', True or False, got 'maybe'"),
    ({"compile": "inductor"}, "--compile: expected 'auto' or one of"),
    ({"sw_batch_size": 0}, "--slice_batch_size: expected 'auto' or an integer >= 1, got 0"),
])
def test_bad_values_name_the_config_id(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        choose_fast_path(_nets()["wp"], "cpu", **kwargs)


@pytest.mark.parametrize("key,value", [("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")])
def test_no_bf16_when_held_to_avx2(monkeypatch, key, value):
    """bench/run.sh's emulation of the no-bf16 CPU class must also switch "auto" to that class's rules."""
    monkeypatch.setenv(key, value)
    assert fast_path.cpu_supports_bf16() is False
    assert fast_path.choose_fast_path(torch.nn.Conv2d(1, 3, 3), "cpu").precision == "fp32"
