"""The HU window and in-plane resize are declared once: train.json and inference.json hold the same
``intensity_and_resize`` section, and training, MONAI inference and streaming give the same slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    batches = [window_and_resize(torch.from_numpy(ct.hounsfield(np.ascontiguousarray(block.transpose(2, 0, 1)))),
                                 hu_window, SLICE_SIZE) for _, _, block in ct.axial_blocks(ornt, 7)]
    return torch.cat(batches)[:, 0].permute(1, 2, 0)


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
    assert torch.equal(trained, inferred)
    torch.testing.assert_close(streamed, inferred, rtol=0, atol=1e-6)
