"""Preprocessing on tiny arrays, instantiated from the real configs: HU window, orientation, label mapping and
3D -> 2D slice sampling with kidney/tumour oversampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT

TRAIN = str(BUNDLE_ROOT / "configs" / "train.json")


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser["bundle_root"] = str(BUNDLE_ROOT)
    parser["slice_size"] = [16, 16]
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _write_case(folder, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), folder / "imaging.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), folder / "segmentation.nii.gz")
    return {"image": str(folder / "imaging.nii.gz"), "label": str(folder / "segmentation.nii.gz")}


def _ras_volume(shape=(16, 16, 20)):
    """A RAS volume: a HU ramp along x, a 'kidney' box in slices 5-9, a 'tumour' in 7-8, a 'cyst' in slice 12."""
    image = np.broadcast_to(np.linspace(-1000, 1000, shape[0])[:, None, None], shape).copy()
    label = np.zeros(shape, np.uint8)
    label[4:12, 4:12, 5:10] = 1
    label[6:9, 6:9, 7:9] = 2
    label[4:6, 4:6, 12] = 3
    return image, label


def test_hu_window_maps_kits_foreground_range_to_unit_interval():
    window = next(t for t in _parser().get_parsed_content("deterministic_transforms")
                  if type(t).__name__ == "ScaleIntensityRanged")
    hu = torch.tensor([[[[-1000.0, -79.0, 112.5, 304.0, 2000.0]]]])
    out = window({"image": hu})["image"]
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


@pytest.mark.parametrize("keep_cyst, expected", [(False, {0, 1, 2}), (True, {0, 1, 2, 3})])
def test_deterministic_preprocessing_reorients_and_maps_labels(tmp_path, keep_cyst, expected):
    image, label = _ras_volume()
    ras_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    # the same volume stored like KiTS: slice axis first, axis codes I, P, L
    ipl = np.transpose(image, (2, 1, 0))[::-1, ::-1, ::-1]
    ipl_label = np.transpose(label, (2, 1, 0))[::-1, ::-1, ::-1]
    ipl_affine = np.array([[0, 0, -2.0, 30.0], [0, -2.0, 0, 30.0], [-3.0, 0, 0, 57.0], [0, 0, 0, 1]])
    assert nib.aff2axcodes(ipl_affine) == ("I", "P", "L")
    steps = _parser(keep_cyst=keep_cyst).get_parsed_content("deterministic_transforms")
    outputs = []
    for name, (img, lab, aff) in {"ras": (image, label, ras_affine), "ipl": (ipl, ipl_label, ipl_affine)}.items():
        data = _write_case(tmp_path / name, img, lab, aff)
        for step in steps:
            data = step(data)
        outputs.append(data)
    for out in outputs:
        assert out["image"].shape == (1, 16, 16, 20) and out["label"].dtype == torch.uint8
        assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
        assert set(torch.unique(out["label"]).tolist()) == expected
        # after Orientationd the last axis is superior: the kidney occupies slices 5-9 whatever the storage
        slices_with_kidney = torch.nonzero(out["label"][0].sum(dim=(0, 1))).flatten().tolist()
        assert slices_with_kidney == [5, 6, 7, 8, 9, 12]  # the cyst (slice 12) is foreground either way
    assert torch.equal(outputs[0]["image"], outputs[1]["image"])
    assert torch.equal(outputs[0]["label"], outputs[1]["label"])


def test_slice_sampling_returns_2d_slices_oversampling_foreground(tmp_path):
    image, label = _ras_volume(shape=(16, 16, 40))  # foreground in 6 of 40 slices
    parser = _parser(slices_per_volume=200)
    transform = parser.get_parsed_content("train#preprocessing")
    transform.set_random_state(seed=0)
    samples = transform(_write_case(tmp_path / "case_00000", image, label, np.diag([2.0, 2.0, 3.0, 1.0])))
    assert len(samples) == 200
    for sample in samples:
        assert sample["image"].shape == (1, 16, 16) and sample["label"].shape == (1, 16, 16)
        assert "label_cls_indices" not in sample
    with_kidney = np.mean([bool((s["label"] > 0).any()) for s in samples])
    with_tumour = np.mean([bool((s["label"] == 2).any()) for s in samples])
    # ratios 1:2:2 (background:kidney:tumour) -> about 80 % of slices hold kidney and 40 % tumour,
    # against 15 % and 5 % of the volume's slices
    assert with_kidney > 0.6 and with_tumour > 0.25
