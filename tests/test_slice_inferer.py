"""The MONAI inferer on the fast path (MONAI Label's and ``--streaming False``'s, issue 19) and the slice-batch
window + resize transform before it. Random tiny network and random volumes (SYNTHETIC)."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from scripts.data.preprocessing import window_and_resize
from scripts.data.transforms import WindowAndResized
from scripts.inference.fast_path import choose_fast_path, predict_labels, prepare_network
from scripts.inference.slice_inferer import FastSliceInferer
from scripts.networks import WPUNet


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)).eval()


def test_inferer_gives_the_fast_path_labels_and_skips_air_only_slices():
    net = _network()
    volume = torch.rand(1, 1, 32, 32, 7)
    volume[..., 2] = 0  # an air-only slice: background without the network
    with torch.no_grad():  # move the kidney bias so that about half the pixels are class 1
        logits = net(volume[0].permute(3, 0, 1, 2))
        net.decoder.head.bias[1] -= torch.quantile((logits[:, 1] - logits[:, 0]).flatten(), 0.5)
    inferer = FastSliceInferer(sw_batch_size=3)
    scores = inferer(volume, net)
    assert scores.shape == (1, 3, 32, 32, 7) and scores.dtype == torch.uint8
    assert torch.equal(scores.sum(dim=1), torch.ones(1, 32, 32, 7, dtype=torch.uint8))  # one-hot
    path = choose_fast_path(net, "cpu", sw_batch_size=3)
    expected = predict_labels(prepare_network(net, "cpu", path), volume[0].permute(3, 0, 1, 2), path)
    expected[2] = 0
    assert torch.equal(scores[0].argmax(dim=0), expected.permute(1, 2, 0).long())
    assert expected.float().mean() > 0  # the check could fail: not all background


def test_prepared_network_is_cached_on_the_network_and_redone_when_weights_change():
    net = _network()
    first, _ = FastSliceInferer().prepared(net, torch.device("cpu"))
    again, _ = FastSliceInferer().prepared(net, torch.device("cpu"))  # a new inferer, as after MONAI Label re-parses
    assert again is first
    assert set(net.state_dict()) == set(_network().state_dict())  # the cache adds no state_dict key
    with torch.no_grad():
        net.decoder.head.bias.add_(1.0)
    changed, _ = FastSliceInferer().prepared(net, torch.device("cpu"))
    assert changed is not first
    assert torch.equal(changed.decoder.head.bias, net.decoder.head.bias)


def test_window_and_resize_transform_matches_the_streaming_function_and_inverts_to_uint8():
    torch.manual_seed(1)
    hu = torch.randint(-1000, 1500, (1, 50, 40, 9), dtype=torch.int16)
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    image = MetaTensor(hu, affine=affine)
    transform = WindowAndResized("image", hu_window=[-79, 304], slice_size=[24, 20], chunk_slices=4)
    out = transform({"image": image})["image"]
    expected = torch.from_numpy(window_and_resize(hu[0].permute(2, 0, 1).float().numpy(), (-79, 304), (24, 20)))
    expected = expected[:, 0].permute(1, 2, 0)
    assert out.shape == (1, 24, 20, 9) and torch.equal(out[0].as_tensor(), expected)
    assert hu.dtype == torch.int16  # input untouched
    label = MetaTensor((out > 0.5).to(torch.uint8), affine=out.affine, applied_operations=out.applied_operations)
    restored = transform.inverse({"image": label})["image"]
    assert restored.shape == (1, 50, 40, 9) and restored.dtype == torch.uint8
    np.testing.assert_allclose(np.asarray(restored.affine), affine.numpy(), atol=1e-6)
    nearest = torch.nn.functional.interpolate(label.as_tensor().permute(3, 0, 1, 2), size=(50, 40), mode="nearest")
    assert torch.equal(restored.as_tensor(), nearest.permute(1, 2, 3, 0))
