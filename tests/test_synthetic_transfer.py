"""scripts/reports/synthetic_transfer.py: the real-CT agreement numbers and the docs section (issue 18).

Synthetic label arrays only (no network run): the TotalSegmentator-like map is built here.
"""

from __future__ import annotations

import numpy as np

from scripts.reports.synthetic_transfer import END, START, pad_in_plane, real_ct_numbers, section_text, write_section


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


def test_padding_to_a_wider_field_of_view_keeps_every_voxel_in_place():
    """The field-of-view check pads the real crop with air; its affine must keep the anatomy where it was."""
    ct = np.arange(6 * 4 * 3, dtype=np.int16).reshape(6, 4, 3)
    affine = np.array([[-3.0, 0, 0, 10.0], [0, 3.0, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
    padded, shifted, (x0, y0) = pad_in_plane(ct, affine, 10)
    assert padded.shape == (10, 10, 3) and (x0, y0) == (2, 3)
    np.testing.assert_array_equal(padded[x0:x0 + 6, y0:y0 + 4], ct)
    assert (padded == -1024).sum() == 10 * 10 * 3 - ct.size
    for voxel in ([0, 0, 0], [5, 3, 2]):
        world = affine @ np.array([*voxel, 1.0])
        np.testing.assert_allclose(shifted @ np.array([voxel[0] + x0, voxel[1] + y0, voxel[2], 1.0]), world)


def test_section_lists_each_field_of_view():
    metric = {"kidney_dice": {"mean": 0.9, "std": 0.1, "n": 8}, "tumour_dice": {"mean": 0.3, "std": 0.1, "n": 8}}
    real = {"dice_sm": 0.7, "dice_full_on_sm": 0.7, "pred_ml_sm": 170.0, "ts_ml": 206.0, "tumour_ml_sm": 59.0,
            "outside_ml_sm": 0.0, "above_ml_full": 0.0, "below_ml_full": 0.0, "kidney_rows": (0, 22), "low_full": 61,
            "fields_of_view": {"450.0": (0.54, 303.0), "405.0": (0.56, 304.0)}}  # keys as numbers.json has them
    text = section_text({"weights": "w.pt", "label": "", "seconds": 1.0, "phantoms": metric, "real": real},
                        "docs/images/x.png")
    rows = [line for line in text.splitlines() if "field of view" in line]
    assert len(rows) == 2 and "405 mm" in rows[0] and "0.560" in rows[0] and "450 mm" in rows[1]
