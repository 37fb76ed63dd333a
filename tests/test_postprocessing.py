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
