"""The HU window and in-plane resize are declared once: train.json and inference.json hold the same
``intensity_and_resize`` section, and training, MONAI inference and streaming give the same slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT
from scripts.data.ct_reader import read_ct
from scripts.data.preprocessing import window_and_resize
from scripts.inference.streaming import ras_orientation
from scripts.synthetic.phantoms import generate_phantom, write_kits_case

TRAIN = BUNDLE_ROOT / "configs" / "train.json"
INFERENCE = BUNDLE_ROOT / "configs" / "inference.json"
SHARED_IDS = ("hu_window", "slice_size", "intensity_and_resize")
SLICE_SIZE = [48, 40]


def _parser(path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(path))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    parser["slice_size"] = SLICE_SIZE
    return parser


def _apply(transforms, data: dict) -> torch.Tensor:
    for transform in transforms:
        data = transform(data)
    return data["image"][0].as_tensor()  # (H, W, slices)


def _streamed(path, hu_window) -> torch.Tensor:
    """The streaming path's network input: stored voxels through the RAS view, then ``window_and_resize``."""
    ct = read_ct(path)
    ornt = ras_orientation(ct.affine)
    batches = [window_and_resize(ct.hounsfield(np.ascontiguousarray(block.transpose(2, 0, 1))), hu_window, SLICE_SIZE)
               for _, _, block in ct.axial_blocks(ornt, 7)]
    return torch.from_numpy(np.concatenate(batches))[:, 0].permute(1, 2, 0)


def test_train_and_inference_declare_the_same_window_and_resize():
    train, infer = json.loads(TRAIN.read_text()), json.loads(INFERENCE.read_text())
    for key in SHARED_IDS:
        assert train[key] == infer[key], key


def test_train_inference_and_streaming_give_the_same_slices(tmp_path):
    image, label, affine = generate_phantom(5, in_plane_size=72, slice_thickness_range=(8.0, 8.0))
    case = Path(write_kits_case(tmp_path, 0, image, label, affine))
    files = {"image": str(case / "imaging.nii.gz"), "label": str(case / "segmentation.nii.gz")}
    train, infer = _parser(TRAIN), _parser(INFERENCE)
    trained = _apply(train.get_parsed_content("deterministic_transforms"), dict(files))
    inferred = _apply(infer.get_parsed_content("preprocessing").transforms, {"image": files["image"]})
    streamed = _streamed(files["image"], infer.get_parsed_content("hu_window"))
    assert trained.shape == (*SLICE_SIZE, image.shape[2])
    assert 0.0 < float(trained.mean()) < 1.0
    assert torch.equal(trained, inferred)  # MONAI's Resized (torch) and the numpy area resize agree to the bit
    torch.testing.assert_close(streamed, inferred, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape_in, shape_out", [((512, 512), (256, 256)), ((50, 40), (24, 20)), ((37, 53), (16, 16)),
                                                 ((9, 7), (16, 12)), ((256, 256), (256, 256)), ((300, 200), (100, 50)),
                                                 ((512, 512), (300, 300)), ((96, 96), (64, 64)), ((90, 90), (30, 30))])
def test_numpy_area_resize_is_torch_area_interpolation(shape_in, shape_out):
    """The streaming path's numpy resize (no torch at inference, issue 17) is torch's ``mode="area"``, bit for bit."""
    import torch.nn.functional as F

    from scripts.data.preprocessing import area_resize

    images = np.random.default_rng(0).normal(size=(3, *shape_in)).astype(np.float32) * 500
    expected = F.interpolate(torch.from_numpy(images)[:, None], size=shape_out, mode="area")[:, 0].numpy()
    np.testing.assert_array_equal(area_resize(images, shape_out), expected)  # bit for bit


@pytest.mark.parametrize("size_in, size_out", [(256, 512), (256, 256), (256, 511), (256, 300), (200, 133), (7, 3)])
def test_nearest_index_is_torchs_nearest_rule(size_in, size_out):
    import torch.nn.functional as F

    from scripts.data.preprocessing import nearest_index

    source = torch.arange(size_in, dtype=torch.float32)[None, None, :, None]
    expected = F.interpolate(source, size=(size_out, 1), mode="nearest")[0, 0, :, 0].long().numpy()
    np.testing.assert_array_equal(nearest_index(size_in, size_out), expected)


def test_window_and_resize_gives_canonical_strides():
    """A (k, 1, H, W) batch with a 0 or odd stride on the channel axis makes oneDNN pick another kernel (labels on a
    decision boundary flip against the MONAI path): the function returns plain C strides."""
    image = window_and_resize(np.zeros((3, 10, 8), dtype=np.float32), (-79, 304), (5, 4))
    assert image.shape == (3, 1, 5, 4) and image.strides == (80, 80, 16, 4)
    picked = image[np.array([1])]
    assert picked.strides == (80, 80, 16, 4)
