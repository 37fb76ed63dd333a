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


def test_summary_is_end_to_end_process_time():
    """Issue 17: the headline is process time (start to exit); ratios are nnU-Net's process time over ours."""
    nn_fp32, nn_levers = bench_run.NNUNET_FP32, bench_run.NNUNET_LEVERS
    e2e = {bench_run.POCKET: {"process_s": 4.0, "peak_rss_mb": 700.0},
           bench_run.PRUNED: {"process_s": 8.0, "peak_rss_mb": 600.0},
           "c, MONAI pipeline (streaming False)": {"process_s": 1.0, "peak_rss_mb": 3000.0},
           nn_fp32: {"process_s": 60.0, "peak_rss_mb": 5000.0}, nn_levers: {"process_s": 32.0, "peak_rss_mb": 5000.0}}
    memory = {"kits/1000": {"slices": 1000, "peak_rss_mb": 1100.0}, "ras/1000": {"slices": 1000, "peak_rss_mb": 900.0},
              "kits/200": {"slices": 200, "peak_rss_mb": 2000.0}}
    s = bench_run.summary(_table(0.6, 0.1, 0.02), e2e, memory)
    # neither the MONAI-pipeline baseline nor nnU-Net is a candidate for "best"
    assert s["best_process_s"] == 4.0 and s["best_process_run"] == bench_run.POCKET and s["pruned_process_s"] == 8.0
    assert math.isclose(s["wpunet_pruned_vs_nnunet2d"], 7.5) and math.isclose(s["pocket_vs_nnunet2d"], 15.0)
    assert math.isclose(s["wpunet_pruned_vs_nnunet2d_levers"], 4.0) and math.isclose(s["pocket_vs_nnunet2d_levers"], 8.0)
    assert math.isclose(s["wpunet_pruned_vs_nnunet2d_network"], 6.0)  # the per-slice table's ratio, kept apart
    assert math.isclose(s["peak_rss_gb"], 700.0 / 1024) and math.isclose(s["peak_rss_1000_gb"], 1100.0 / 1024)
    line = bench_run.summary_line(s)
    assert re.fullmatch(r"best_process_s=4\.00 pruned_process_s=8\.00 wpunet_pruned_vs_nnunet2d=7\.5x "
                        r"pocket_vs_nnunet2d=15\.0x wpunet_pruned_vs_nnunet2d_levers=4\.0x "
                        r"pocket_vs_nnunet2d_levers=8\.0x peak_rss_gb=0\.68 peak_rss_1000_gb=1\.07", line)


def test_cpu_class_follows_the_emulation_variables(monkeypatch):
    for key in bench_run.EMULATE_AVX2:
        monkeypatch.delenv(key, raising=False)
    assert bench_run.cpu_class({"bf16_native": True}) == "bf16"
    assert bench_run.cpu_class({"bf16_native": False}) == "avx2"
    for key, value in bench_run.EMULATE_AVX2.items():
        monkeypatch.setenv(key, value)
    assert bench_run.cpu_class({"bf16_native": True}) == "avx2"
    assert "EMULATED" in bench_run.cpu_class_label({"bf16_native": True})
    # under the variables torch itself reports no bf16 (what bench.common.machine records): still emulated, and
    # its raw numbers go to their own file, never over a native AVX2 run's
    assert "EMULATED" in bench_run.cpu_class_label({"bf16_native": False})
    assert bench_run.results_stem({"bf16_native": False}) == "avx2_emulated"
    for key in bench_run.EMULATE_AVX2:
        monkeypatch.delenv(key)
    assert "native" in bench_run.cpu_class_label({"bf16_native": False})
    assert [bench_run.results_stem({"bf16_native": b}) for b in (False, True)] == ["avx2", "bf16"]


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
