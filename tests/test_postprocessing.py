"""Largest-connected-component post-processing as configured in inference.json, on constructed label maps and on
real KiTS23 masks: keep the two largest kidney(+tumour) components, drop everything else."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT, shared_path

INFERENCE = str(BUNDLE_ROOT / "configs" / "inference.json")


def _lcc(**overrides):
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    for key, value in overrides.items():
        parser[key] = value
    steps = parser.get_parsed_content("postprocessing").transforms
    return next((s for s in steps if type(s).__name__ == "KeepLargestConnectedComponentd"), None)


def _constructed() -> np.ndarray:
    label = np.zeros((40, 30, 20), np.uint8)
    label[2:12, 5:15, 5:15] = 1  # right kidney
    label[25:36, 5:15, 5:15] = 1  # left kidney
    label[28:32, 8:12, 14:18] = 2  # tumour attached to the left kidney
    label[16:18, 25:27, 2:4] = 1  # small false-positive kidney blob
    label[18:21, 20:23, 15:18] = 2  # tumour blob away from both kidneys
    return label


def _apply(transform, label: np.ndarray) -> np.ndarray:
    return transform({"pred": torch.as_tensor(label[None])})["pred"][0].numpy()


def test_keeps_two_kidneys_with_their_tumour_and_drops_the_rest():
    label = _constructed()
    out = _apply(_lcc(), label)
    expected = label.copy()
    expected[16:18, 25:27, 2:4] = 0
    expected[18:21, 20:23, 15:18] = 0
    np.testing.assert_array_equal(out, expected)


def test_number_of_components_is_configurable_and_can_be_switched_off():
    label = _constructed()
    one = _apply(_lcc(lcc_num_components=1), label)
    assert one[25:36, 5:15, 5:15].all() and not one[2:12, 5:15, 5:15].any()  # left kidney + tumour is larger
    assert _lcc(lcc_enabled=False) is None


@pytest.mark.parametrize("case", ["case_00061", "case_00110", "case_00021"])
def test_real_kits23_masks_spurious_blob_does_not_change_kidneys(case):
    path = shared_path("kits23_masks", f"{case}_segmentation.nii.gz")
    label = np.asarray(nib.load(path).dataobj).astype(np.uint8)
    label[label == 3] = 1  # default label mapping: cyst -> kidney
    clean = _apply(_lcc(), label)
    assert (clean > 0).sum() >= 0.95 * (label > 0).sum()  # the two kidneys hold (nearly) all the annotation
    assert not label[:2, :8, :8].any()
    noisy = label.copy()
    noisy[:2, :8, :8] = 1  # a spurious blob in a background corner (axes: slice, posterior, left)
    out = _apply(_lcc(), noisy)
    np.testing.assert_array_equal(out, clean)


@pytest.mark.parametrize("num_components", [1, 2, 3, 4, 5])
def test_exactly_the_n_largest_components_are_kept(num_components):
    label = np.zeros((60, 12, 12), np.uint8)
    sizes = [10, 8, 6, 4, 2]  # slabs along the first axis, separated by background
    start = 0
    for i, size in enumerate(sizes):
        label[start : start + size, 2:10, 2:10] = 1 if i % 2 == 0 else 2
        start += size + 2
    out = _apply(_lcc(lcc_num_components=num_components), label)
    kept = [bool(out[label_slab].any()) for label_slab in _slabs(sizes)]
    assert kept == [i < num_components for i in range(len(sizes))]
    np.testing.assert_array_equal(out[out > 0], label[out > 0])  # kept components keep their labels


def _slabs(sizes):
    start = 0
    for size in sizes:
        yield np.s_[start : start + size]
        start += size + 2


def test_tumour_touching_a_kept_kidney_stays_and_a_larger_stray_tumour_is_kept_with_three_components():
    label = _constructed()
    three = _apply(_lcc(lcc_num_components=3), label)
    assert three[18:21, 20:23, 15:18].all()  # the stray tumour (27 voxels) is the third largest component
    assert not three[16:18, 25:27, 2:4].any()  # the 8-voxel kidney blob is fourth and dropped
    assert (three[28:32, 8:12, 14:18] == 2).all()


def test_evaluate_config_post_processing_follows_the_same_lcc_ids():
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / "train.json"), str(BUNDLE_ROOT / "configs" / "evaluate.json")])
    parser["lcc_num_components"] = 1
    steps = parser.get_parsed_content("validate#postprocessing").transforms
    lcc = next(s for s in steps if type(s).__name__ == "KeepLargestConnectedComponentd")
    out = _apply(lcc, _constructed())
    assert out[25:36, 5:15, 5:15].all() and not out[2:12, 5:15, 5:15].any()
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / "train.json"), str(BUNDLE_ROOT / "configs" / "evaluate.json")])
    parser["lcc_enabled"] = False
    steps = parser.get_parsed_content("validate#postprocessing").transforms
    assert not any(type(s).__name__ == "KeepLargestConnectedComponentd" for s in steps)


@pytest.mark.parametrize("case", ["case_00038", "case_00402", "case_00569"])
def test_real_kits23_masks_stray_tumour_and_kidney_blobs_are_dropped(case):
    path = shared_path("kits23_masks", f"{case}_segmentation.nii.gz")
    label = np.asarray(nib.load(path).dataobj).astype(np.uint8)
    label[label == 3] = 1
    clean = _apply(_lcc(), label)
    noisy = label.copy()
    corners = [np.s_[:2, :8, :8], np.s_[:2, -8:, -8:], np.s_[-2:, :8, -8:]]
    assert not any(label[c].any() for c in corners)
    noisy[corners[0]] = 2  # stray tumour, far from both kidneys
    noisy[corners[1]] = 1  # stray kidney
    noisy[corners[2]] = 2
    out = _apply(_lcc(), noisy)
    np.testing.assert_array_equal(out, clean)
    assert not any(out[c].any() for c in corners)
