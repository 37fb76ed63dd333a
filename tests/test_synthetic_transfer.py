"""scripts/reports/synthetic_transfer.py: the real-CT agreement numbers and the docs section (issue 18).

Synthetic label arrays only (no network run): the TotalSegmentator-like map is built here.
"""

from __future__ import annotations

import numpy as np

from scripts.reports.synthetic_transfer import END, START, real_ct_numbers, section_text, write_section


def _seg() -> np.ndarray:
    seg = np.zeros((20, 20, 30), np.uint8)
    seg[3:7, 5:10, 0:10] = 2  # right kidney (TotalSegmentator label 2)
    seg[13:17, 5:10, 0:12] = 3  # left kidney (3)
    seg[8:12, 12:18, 0:30] = 5  # liver: not a kidney
    return seg


def test_agreement_is_one_for_the_reference_and_outside_volume_is_counted():
    seg = _seg()
    ts = np.isin(seg, (2, 3)).astype(np.uint8)
    full = np.zeros((20, 20, 112), np.uint8)
    full[:, :, 82:] = ts
    r = real_ct_numbers(ts, full, seg, voxel_ml=0.027)
    assert r["dice_sm"] == 1.0 and r["dice_full_on_sm"] == 1.0
    assert r["outside_ml_sm"] == 0.0 and r["above_ml_full"] == 0.0 and r["below_ml_full"] == 0.0
    assert r["kidney_rows"] == (0, 11) and abs(r["ts_ml"] - ts.sum() * 0.027) < 1e-9
    wrong = ts.copy()
    wrong[0:2, 0:2, 20:25] = 1  # 20 voxels above the kidneys
    full[0:3, 0:3, 10:12] = 2  # 18 voxels in the "pelvis"
    r = real_ct_numbers(wrong, full, seg, voxel_ml=1.0)
    assert r["outside_ml_sm"] == 20.0 and r["below_ml_full"] == 18.0 and r["dice_sm"] < 1.0


def test_write_section_replaces_only_the_marked_block(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nkept text\n")
    write_section(md, "first")
    write_section(md, "second")
    text = md.read_text()
    assert text.count(START) == 1 and "second" in text and "first" not in text and "kept text" in text
    assert text.index(START) < text.index("second") < text.index(END)


def test_section_has_one_check_set_row_per_seed():
    """Issue 18: a change is judged on more than one draw of the check set; each seed gets its own row."""
    metric = lambda k, t: {"kidney_dice": {"mean": k, "std": 0.1, "n": 8}, "tumour_dice": {"mean": t, "std": 0.1, "n": 8}}
    numbers = {"weights": "w.pt", "label": "", "seconds": 1.0, "phantoms": metric(0.9, 0.3),
               "checkset": metric(0.41, 0.02), "checkset_more": [metric(0.52, 0.07)], "check_seeds": [18, 19],
               "check_cases": ["case_00527"]}
    text = section_text(numbers, "docs/images/x.png")
    rows = [line for line in text.splitlines() if "check set" in line]
    assert len(rows) == 2 and "seed 18" in rows[0] and "0.41" in rows[0] and "seed 19" in rows[1] and "0.52" in rows[1]
