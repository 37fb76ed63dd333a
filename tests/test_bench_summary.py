"""The benchmark's arithmetic (no timing): the summary line of bench/run.py and the Dice comparison of
bench/dice_variants.py, on constructed numbers."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest

from conftest import BUNDLE_ROOT

sys.path.insert(0, str(BUNDLE_ROOT / "bench"))
import dice_variants  # noqa: E402
import run as bench_run  # noqa: E402


def _table(nnunet: float, pruned: float, pocket: float) -> dict:
    return {"nnU-Net 2D PlainConvUNet": {"seconds_per_slice": {"fp32": nnunet, "auto": nnunet / 2}},
            "WP-UNet channel-pruned 0.5": {"seconds_per_slice": {"fp32": 1.0, "auto": pruned}},
            "Pocket U-Net 2D": {"seconds_per_slice": {"fp32": 1.0, "auto": pocket}}}


def test_summary_uses_nnunet_fp32_and_streamed_runs_only():
    e2e = {"a": {"run_s": 7.5, "peak_rss_mb": 700.0}, "b": {"run_s": 4.25, "peak_rss_mb": 600.0},
           "c, MONAI pipeline (streaming False)": {"run_s": 1.0, "peak_rss_mb": 3000.0}}
    s = bench_run.summary(_table(0.6, 0.1, 0.02), e2e, {})
    assert s["best_end_to_end_s"] == 4.25  # the MONAI-pipeline row is a baseline, not a candidate
    assert math.isclose(s["wpunet_pruned_vs_nnunet2d"], 6.0) and math.isclose(s["pocket_vs_nnunet2d"], 30.0)
    assert math.isclose(s["peak_rss_gb"], 700.0 / 1024)
    line = bench_run.summary_line(s)
    assert re.fullmatch(r"best_end_to_end_s=4\.25 wpunet_pruned_vs_nnunet2d=6\.0x pocket_vs_nnunet2d=30\.0x "
                        r"peak_rss_gb=0\.68", line)


def test_dice_and_paired_differences():
    assert dice_variants.dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == 0.5
    assert math.isnan(dice_variants.dice(np.zeros(3, bool), np.zeros(3, bool)))
    mean, se, n = dice_variants.paired_difference([0.90, 0.80, float("nan")], [0.91, 0.78, 0.5])
    assert n == 2 and mean == pytest.approx(0.5) and se == pytest.approx(1.5)


def test_within_half_a_point_needs_both_regions():
    per_case = {"ref": {"kidney": [0.9, 0.9], "tumour": [0.5, float("nan")]},
                "close": {"kidney": [0.904, 0.898], "tumour": [0.503, float("nan")]},
                "tumour_off": {"kidney": [0.9, 0.9], "tumour": [0.49, float("nan")]},
                "better": {"kidney": [0.92, 0.91], "tumour": [0.55, float("nan")]}}
    agreement = {"ref": 1.0, "close": 0.99, "tumour_off": 0.98, "better": 0.97}
    out = dice_variants.summarise(per_case, agreement, "ref")
    assert out["ref"]["within_0_5"] and out["close"]["within_0_5"] and out["better"]["within_0_5"]
    assert not out["tumour_off"]["within_0_5"] and out["tumour_off"]["d_tumour_pts"] == pytest.approx(-1.0)
    assert out["close"]["tumour_cases"] == 1 and out["close"]["tumour"] == pytest.approx(0.503)
