"""The HU window, aspect padding and in-plane resize are declared once: train.json and inference.json hold the same
``intensity_and_resize`` section, and training, MONAI inference and streaming give the same slices, square or not."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT
from scripts.data.ct_reader import read_ct
from scripts.data.preprocessing import aspect_padding, window_and_resize
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


@pytest.mark.parametrize("crop", [None, (slice(0, 72), slice(11, 61))], ids=["square", "72x50"])
def test_train_inference_and_streaming_give_the_same_slices(tmp_path, crop):
    image, label, affine = generate_phantom(5, in_plane_size=72, slice_thickness_range=(8.0, 8.0))
    if crop is not None:  # a non-square slice: each path pads it to slice_size's aspect before the resize
        image, label = image[crop], label[crop]
        affine = affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.array([crop[0].start, crop[1].start, 0])
    case = Path(write_kits_case(tmp_path, 0, image, label, affine))
    files = {"image": str(case / "imaging.nii.gz"), "label": str(case / "segmentation.nii.gz")}
    train, infer = _parser(TRAIN), _parser(INFERENCE)
    trained = _apply(train.get_parsed_content("deterministic_transforms"), dict(files))
    inferred = _apply(infer.get_parsed_content("preprocessing").transforms, {"image": files["image"]})
    streamed = _streamed(files["image"], infer.get_parsed_content("hu_window"))
    assert image.shape[:2] == (72, 72) or aspect_padding(image.shape[:2], SLICE_SIZE) != ((0, 0), (0, 0))
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


@pytest.mark.parametrize("in_plane, slice_size, expected", [
    ((122, 101), (256, 256), ((0, 0), (10, 11))),  # the real example CT's crop: columns padded, odd one after
    ((512, 512), (256, 256), ((0, 0), (0, 0))),
    ((300, 400), (256, 256), ((50, 50), (0, 0))),
    ((100, 100), (48, 40), ((10, 10), (0, 0))),  # a non-square slice_size: padded to 120x100 (48:40)
    ((48, 40), (48, 40), ((0, 0), (0, 0))),
])
def test_aspect_padding(in_plane, slice_size, expected):
    assert aspect_padding(in_plane, slice_size) == expected


def test_a_disk_stays_round_in_a_non_square_slice():
    """A 40 mm disk in a 120x60 slice (1 mm pixels) is a disk at model resolution, not an ellipse, and sits where
    it was: padding keeps the aspect ratio that a plain resize to 64x64 would stretch twofold."""
    rows, cols = np.mgrid[:120, :60]
    hu = np.where((rows - 70) ** 2 + (cols - 30) ** 2 <= 20 ** 2, 200.0, -1000.0).astype(np.float32)[None]
    disk = window_and_resize(hu, (-79, 304), (64, 64))[0, 0] > 0.5
    height, width = np.ptp(np.flatnonzero(disk.any(axis=1))) + 1, np.ptp(np.flatnonzero(disk.any(axis=0))) + 1
    assert abs(height - width) <= 1 and 20 <= height <= 22  # 40 mm at 120/64 mm a pixel: 21.3
    centre_row, centre_col = np.argwhere(disk).mean(axis=0)
    assert abs(centre_row - 70 * 64 / 120) < 1 and abs(centre_col - (30 + 30) * 64 / 120) < 1  # 30 columns padded first


def test_training_chain_inverts_a_non_square_label_to_its_input_grid(tmp_path):
    """``evaluate.json`` inverts train.json's chain (``Invertd``): the padding comes off again, labels land where
    they were, not displaced (nearest back from 48x40, so only their edges may move)."""
    from monai.transforms import Compose

    image, label, affine = generate_phantom(5, in_plane_size=72, slice_thickness_range=(8.0, 8.0))
    image, label = image[:, 11:61], label[:, 11:61]
    case = Path(write_kits_case(tmp_path, 0, image, label, affine))
    chain = Compose(_parser(TRAIN).get_parsed_content("deterministic_transforms"))
    data = chain({"image": str(case / "imaging.nii.gz"), "label": str(case / "segmentation.nii.gz")})
    back = chain.inverse(data)["label"][0].as_tensor().numpy()
    original = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj)
    assert back.shape == original.shape  # RAS phantom: no reorientation to undo
    ref = original > 0

    def dice(shift):
        fg = np.roll(back > 0, shift, axis=(0, 1))
        return 2 * (fg & ref).sum() / (fg.sum() + ref.sum())

    assert ref.sum() > 100 and dice((0, 0)) > 0.85  # small phantom kidneys, 72 -> 48 and back: edges move
    assert all(dice((0, 0)) > dice(shift) for shift in [(-1, 0), (1, 0), (0, -1), (0, 1)])  # not displaced
