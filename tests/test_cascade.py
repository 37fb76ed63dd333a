"""The kidney-region cascade (issue 17, scripts/inference/cascade.py) on SYNTHETIC label volumes.

A stand-in network with a known answer (ThresholdNet: bright voxels are foreground) runs on small synthetic CTs, so
where the kidney is, which slices the network sees and what the full run returns are all known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from scripts.common.errors import InputError
from scripts.data.ct_reader import LoadedCT
from scripts.inference.cascade import KidneyRangeCascade, check_cascade, kidney_slice_range, sampled_slices
from scripts.inference.streaming import StreamingSegmenter
from test_inference_geometry import CountingNet, ThresholdNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEPTH, SLICE_MM = 80, 3.0
KIDNEY = (20, 30)  # RAS slices with the bright "kidney" box (label 1/2 from ThresholdNet)
SPECK = (59, 62)  # a 2x2-voxel bright speck: 4 mm^2 at model resolution, below min_area_mm2


def _ras_volume(kidney=KIDNEY, speck=SPECK) -> np.ndarray:
    """SYNTHETIC: a soft-tissue body (0 HU, below ThresholdNet's threshold) on every slice, a bright kidney box on
    ``kidney`` slices and a tiny bright speck on ``speck`` slices; 64 x 64 voxels of 1 mm, 3 mm slices."""
    ras = np.full((64, 64, DEPTH), -1000, np.int16)
    ras[4:60, 4:60] = 0
    ras[20:44, 14:40, kidney[0]:kidney[1]] = 200  # straddles ThresholdNet's label-2 quadrant
    if speck:
        ras[50:52, 50:52, speck[0]:speck[1]] = 200
    return ras


def _stored(ras: np.ndarray, axcodes: str) -> LoadedCT:
    """``ras`` stored in ``axcodes`` order (``IPL``: KiTS, slice axis first) with the matching affine."""
    ras_affine = np.diag([1.0, 1.0, SLICE_MM, 1.0])
    to_target = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    stored = np.ascontiguousarray(apply_orientation(ras, to_target))
    return LoadedCT(f"synthetic_{axcodes}.nii.gz", stored, ras_affine @ inv_ornt_aff(to_target, ras.shape))


def _ras_labels(label: np.ndarray, axcodes: str) -> np.ndarray:
    back = ornt_transform(axcodes2ornt(tuple(axcodes)), axcodes2ornt("RAS"))
    return apply_orientation(label, back)


def _segment(ct: LoadedCT, cascade: KidneyRangeCascade | None, lcc: bool = True):
    net = CountingNet()
    segmenter = StreamingSegmenter(net, slice_size=(32, 32), lcc_enabled=lcc, cascade=cascade, chunk_slices=16)
    label, _ = segmenter.segment(ct)
    return label, net.slices, segmenter.timings


# -- the range ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slice_mm", [0.5, 1.25, 3.0, 5.0])
def test_margin_in_mm_whatever_the_slice_thickness(slice_mm):
    margin_mm, stride = 40.0, 4
    start, stop = kidney_slice_range([100, 112], 1000, stride, slice_mm, margin_mm)
    pad = stride - 1 + math.ceil(margin_mm / slice_mm)
    assert (start, stop) == (100 - pad, 112 + pad + 1)
    # at least margin_mm beyond the first/last found slice, and less than one slice more than needed
    assert margin_mm <= (100 - start - (stride - 1)) * slice_mm < margin_mm + slice_mm
    assert margin_mm <= (stop - 1 - 112 - (stride - 1)) * slice_mm < margin_mm + slice_mm


def test_range_clipped_to_the_volume_and_none_when_nothing_found():
    assert kidney_slice_range([2, 60], 64, 4, 5.0, 40.0) == (0, 64)
    assert kidney_slice_range([], 64, 4, 5.0, 40.0) is None
    assert kidney_slice_range([30], 64, 1, 5.0, 0.0) == (30, 31)  # stride 1, no margin: just the found slice


def test_sampled_slices_include_the_last():
    assert sampled_slices(10, 4).tolist() == [0, 4, 8, 9]
    assert sampled_slices(9, 4).tolist() == [0, 4, 8]
    assert sampled_slices(5, 1).tolist() == [0, 1, 2, 3, 4]


# -- through the streaming segmenter ----------------------------------------------------------------------------
@pytest.mark.parametrize("axcodes", ["RAS", "IPL", "LPS"])  # IPL: KiTS storage (slice axis first)
@pytest.mark.parametrize("lcc", [True, False])
def test_cascade_equals_full_run_inside_the_range_and_background_outside(axcodes, lcc):
    ras = _ras_volume()
    ct = _stored(ras, axcodes)
    full, full_slices, _ = _segment(ct, None, lcc)
    cascade = KidneyRangeCascade(stride=4, margin_mm=15.0, min_area_mm2=50.0)
    label, slices, timings = _segment(ct, cascade, lcc)
    full, label = _ras_labels(full, axcodes), _ras_labels(label, axcodes)
    # kidney on RAS slices 20..29: sampled 20, 24, 28 found; widened by stride-1 = 3 slices + ceil(15/3) = 5 slices
    start, stop = 20 - 8, 28 + 8 + 1
    summary = timings["cascade"]
    assert summary["found"] and summary["range"] == [start, stop] and summary["slice_mm"] == pytest.approx(SLICE_MM)
    first = len(sampled_slices(DEPTH, 4))
    second = (stop - start) - sum(1 for z in sampled_slices(DEPTH, 4) if start <= z < stop)
    assert full_slices == DEPTH and slices == first + second
    assert summary["skipped_slices"] == DEPTH - first - second
    np.testing.assert_array_equal(label[:, :, start:stop], full[:, :, start:stop])
    assert label[:, :, :start].max() == 0 and label[:, :, stop:].max() == 0
    assert full[:, :, SPECK[0]:SPECK[1]].max() > 0  # the full run kept the speck the cascade leaves out
    assert set(np.unique(label[:, :, KIDNEY[0]:KIDNEY[1]])) == {0, 1, 2}


@pytest.mark.parametrize("axcodes", ["RAS", "IPL"])
def test_nothing_found_runs_the_full_volume(axcodes):
    """The kidney sits between two sampled slices (5, 6; samples at 4 and 8): the first pass finds nothing, so every
    slice runs and the result is the full run's, kidney included, never an empty segmentation."""
    ct = _stored(_ras_volume(kidney=(5, 7), speck=None), axcodes)
    full, _, _ = _segment(ct, None)
    label, slices, timings = _segment(ct, KidneyRangeCascade(stride=4, margin_mm=15.0))
    assert timings["cascade"]["found"] is False and timings["cascade"]["skipped_slices"] == 0
    assert slices == DEPTH
    np.testing.assert_array_equal(label, full)
    assert label.max() > 0


def test_run_logs_and_times_the_cascade(tmp_path, caplog):
    """The run's log line and its timings JSON say which slices ran and how many were skipped."""
    from scripts.reports.workflow import BUNDLE_ROOT  # noqa: F401 - the repo root is importable

    import nibabel as nib

    path = tmp_path / "synthetic_ct.nii.gz"
    nib.save(nib.Nifti1Image(_ras_volume(), np.diag([1.0, 1.0, SLICE_MM, 1.0])), str(path))
    segmenter = StreamingSegmenter(ThresholdNet(), slice_size=(32, 32), cascade=KidneyRangeCascade(4, 15.0))
    caplog.set_level("INFO", logger="scripts.inference.streaming")
    timings = tmp_path / "timings.json"
    segmenter.run([{"image": str(path)}], timings_path=str(timings))
    recorded = json.loads(timings.read_text())[0]["cascade"]
    assert recorded["range"] == [12, 37] and recorded["skipped_slices"] > 0
    assert f"cascade: slices 12..36 run, {recorded['skipped_slices']} skipped" in caplog.text


# -- options and config ----------------------------------------------------------------------------------------
def test_cascade_is_off_by_default_in_the_config():
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    assert parser["cascade"] is False
    assert parser.get_parsed_content("kidney_cascade") is None
    parser["cascade"] = True
    parser["cascade_margin_mm"] = 25.0
    cascade = parser.get_parsed_content("kidney_cascade", lazy=False)
    assert isinstance(cascade, KidneyRangeCascade) and cascade.stride == 4 and cascade.margin_mm == 25.0


@pytest.mark.parametrize("kwargs, words", [
    ({"cascade": True, "streaming": False}, "--cascade True"),
    ({"cascade": True, "streaming": True, "cascade_stride": 0}, "--cascade_stride 0"),
    ({"cascade": True, "streaming": True, "cascade_margin_mm": -5}, "--cascade_margin_mm -5"),
    ({"cascade": True, "streaming": True, "cascade_margin_mm": "wide"}, "--cascade_margin_mm 'wide'"),
])
def test_bad_cascade_options_are_one_line(kwargs, words):
    with pytest.raises(InputError) as err:
        check_cascade(**kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_cascade_off_accepts_anything_else():
    check_cascade(False, False, 0, -1)  # options of a cascade that does not run are not checked


def test_monai_pipeline_path_refuses_the_cascade_in_one_line(tmp_path):
    """``--cascade True --streaming False``: ``initialize`` stops with the one line naming both options."""
    import nibabel as nib

    from scripts.common.errors import find_input_error

    scan = tmp_path / "synthetic_ct.nii.gz"
    nib.save(nib.Nifti1Image(_ras_volume(), np.diag([1.0, 1.0, SLICE_MM, 1.0])), str(scan))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"cascade": True, "streaming": False, "input_path": str(scan), "output_dir": str(tmp_path / "out")})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("initialize")
    message = find_input_error(err.value)
    assert message is not None and "--cascade True" in message and "--streaming True" in message
