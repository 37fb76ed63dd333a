"""bench/run.py's docs block (no timing), on constructed numbers; the summary line is tested in test_bench_summary.py."""
import importlib.util
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(run):
    def row(fp32, auto, macs=1e9):
        return {"params": 1000, "macs": macs, "slice": 256, "auto": "fp32, batch 1",
                "seconds_per_slice": {"fp32": fp32, "auto": auto}}

    table = {"nnU-Net 2D PlainConvUNet": row(0.30, 0.20), "WP-UNet channel-pruned 0.5": row(0.08, 0.06),
             "Pocket U-Net 2D": row(0.02, 0.015, macs=None)}
    e2e = {"Pocket U-Net 2D, auto": {"run_s": 7.5, "process_s": 12.0, "peak_rss_mb": 900.0, "stages": {"network": 2.0}},
           "Pocket U-Net 2D, MONAI pipeline (streaming False)": {"run_s": 3.0, "process_s": 9.0,
                                                                 "peak_rss_mb": 4000.0, "stages": None},
           "WP-UNet channel-pruned 0.5, auto": {"run_s": 11.0, "process_s": 15.0, "peak_rss_mb": 1200.0,
                                                "stages": None},
           run.NNUNET_FP32: {"run_s": 70.0, "process_s": 75.0, "peak_rss_mb": 2000.0, "stages": None},
           run.NNUNET_LEVERS: {"run_s": 40.0, "process_s": 45.0, "peak_rss_mb": 2000.0, "stages": None}}
    return table, e2e


def test_render_marks_targets_and_labels_synthetic_input(run):
    table, e2e = _result(run)
    memory = {"kits/200": {"storage": "kits", "slices": 200, "peak_rss_mb": 900.0, "run_s": 7.0},
              "kits/1000": {"storage": "kits", "slices": 1000, "peak_rss_mb": 1100.0, "run_s": 30.0}}
    result = {"date": "2026-11-26", "json": "bench/results/x.json", "table_slices": 6, "repeats": 2,
              "load_before": [1, 1, 1], "load_after": [1, 1, 1], "network_table": table, "end_to_end": e2e,
              "memory": memory, "summary": run.summary(table, e2e, memory),
              "machine": {"cpu": "cpu", "cores": 2, "simd": ["avx2"], "torch": "2.13.0", "threads": 2,
                          "monai": "1", "commit": "abc", "bf16_native": False}}
    text = run.render(result)
    assert "SYNTHETIC" in text and "random weights" in text
    assert "## Benchmark run: AVX2 class (no AVX-512, no bf16; native)" in text
    assert "| `best_process_s` | 12.00 | <= 5.0 | **no** |" in text  # process time, not run time
    assert "| `pruned_process_s` | 15.00 | <= 10.0 | **no** |" in text
    assert "| `wpunet_pruned_vs_nnunet2d` | 5.00 | >= 5.0 | yes |" in text  # 75 / 15, end to end
    assert "| `wpunet_pruned_vs_nnunet2d_levers` | 3.00 | >= 3.0 | yes |" in text  # 45 / 15
    assert "| `peak_rss_gb` | 1.17 | <= 1.0 | **no** |" in text and "| `peak_rss_1000_gb` | 1.07 | <= 1.2 | yes |" in text
    assert "Growth (kits): 0.25 MB per slice between 200 and 1000" in text
    assert "| 1.00 |" in text and "| - |" in text  # GMACs column, missing MACs shown as "-"
    assert "Not measured in this run" in text  # no Dice JSON in this result


def test_summary_takes_the_faster_path_of_each_network_when_lean_rows_exist(run):
    table, e2e = _result(run)
    memory = {}
    e2e[run.PRUNED_LEAN] = {"run_s": 8.0, "process_s": 9.0, "peak_rss_mb": 700.0, "stages": None}
    e2e[run.NNUNET_LEAN] = {"run_s": 30.0, "process_s": 36.0, "peak_rss_mb": 900.0, "stages": None}
    s = run.summary(table, e2e, memory)
    assert s["pruned_process_s"] == 9.0 and s["best_process_s"] == 9.0 and s["best_process_run"] == run.PRUNED_LEAN
    assert s["wpunet_pruned_vs_nnunet2d"] == 75.0 / 9.0  # nnU-Net as it runs: fp32, no lean
    assert s["wpunet_pruned_vs_nnunet2d_levers"] == 36.0 / 9.0  # nnU-Net on its faster path too
    assert s["pocket_vs_nnunet2d"] == 75.0 / 12.0  # no Pocket lean row: its auto row
