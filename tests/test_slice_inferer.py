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
from scripts.inference.streaming import model_grid_affine, ras_orientation
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
    # 50x40 is padded to 24x20's aspect (50x42, one column each side), so the inverse resizes to 50x42 and crops
    nearest = torch.nn.functional.interpolate(label.as_tensor().permute(3, 0, 1, 2), size=(50, 42), mode="nearest")
    assert torch.equal(restored.as_tensor(), nearest.permute(1, 2, 3, 0)[:, :, 1:41])
    # the model grid's affine is the streaming path's (previews and cohort statistics of both paths agree)
    grid = model_grid_affine(affine.numpy(), (50, 40, 9), ras_orientation(affine.numpy()), (24, 20))
    np.testing.assert_allclose(np.asarray(out.affine), grid, atol=1e-9)


def test_streaming_and_monai_paths_bring_labels_back_to_a_non_square_grid_alike():
    """Both paths undo the aspect padding the same way: model labels of a 50x40 slice (padded to 50x42 for 24x20)
    come back through ``WindowAndResized.inverse`` (MONAI, MONAI Label) and the streaming path's nearest rule
    identically, voxel for voxel."""
    from scripts.inference.streaming import StreamingSegmenter

    class Labels:  # a predictor: the segmenter needs one, this test only calls its resampling
        def predict_labels(self, batch):
            raise AssertionError("not called")

    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    transform = WindowAndResized("image", hu_window=[-79, 304], slice_size=[24, 20], chunk_slices=4)
    out = transform({"image": MetaTensor(torch.zeros(1, 50, 40, 9, dtype=torch.int16), affine=affine)})["image"]
    model_labels = torch.from_numpy(np.random.default_rng(2).integers(0, 3, (24, 20, 9), dtype=np.uint8))
    label = MetaTensor(model_labels[None], affine=out.affine, applied_operations=out.applied_operations)
    monai_back = transform.inverse({"image": label})["image"][0].as_tensor().numpy()
    segmenter = StreamingSegmenter(Labels(), slice_size=(24, 20), lcc_enabled=False)
    streamed_back = segmenter._back_to_input_grid(model_labels.numpy(), (50, 40, 9), ras_orientation(affine.numpy()))
    assert monai_back.shape == streamed_back.shape == (50, 40, 9)
    np.testing.assert_array_equal(streamed_back, monai_back)
