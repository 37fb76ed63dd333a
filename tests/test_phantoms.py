"""Tests for the SYNTHETIC KiTS-like phantom generator (scripts/synthetic/phantoms.py).

Small in-plane sizes and thick slices keep every phantom well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scripts.synthetic import phantoms
from scripts.synthetic.phantoms import (
    FOV_RANGE_MM,
    LABELS,
    generate_dataset,
    generate_phantom,
    phantom_spacing,
    ras_to_kits,
    write_kits_case,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"in_plane_size": 96, "slice_thickness": 6.0}
FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _components(mask: np.ndarray) -> int:
    return ndimage.label(mask, structure=FULL_CONNECTIVITY)[1]


def _load(path: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], nib.Nifti1Image]:
    img = nib.load(path)
    canon = nib.as_closest_canonical(img)
    return np.asanyarray(canon.dataobj), canon.affine, nib.aff2axcodes(img.affine), img


def test_same_seed_same_case_and_different_seed_differs():
    a = generate_phantom(3, **SMALL)
    b = generate_phantom(3, **SMALL)
    c = generate_phantom(4, **SMALL)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    assert a[1].shape != c[1].shape or not np.array_equal(a[1], c[1])


def test_dtypes_shapes_labels_and_affine():
    image, label, affine = generate_phantom(1, in_plane_size=80, slice_thickness=5.0)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.shape == label.shape and image.shape[:2] == (80, 80) and image.shape[2] >= 8
    assert set(np.unique(label).tolist()) <= set(LABELS.values())
    assert {0, 1} <= set(np.unique(label).tolist())
    assert image.min() >= -1024 and image.max() <= 3071
    assert affine.shape == (4, 4)
    np.testing.assert_allclose(affine[:3, :3], np.diag(np.diag(affine)[:3]))  # diagonal RAS
    assert np.all(np.diag(affine)[:3] > 0) and affine[2, 2] == 5.0
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_z_extent_covers_the_kidneys_and_clips_to_eight_slices():
    image, label, affine = generate_phantom(2, in_plane_size=64, slice_thickness=2.0)
    extent = image.shape[2] * affine[2, 2]
    assert 150 <= extent <= 600
    short = generate_phantom(2, in_plane_size=64, slice_thickness=2.0, coverage="kidneys")[0]
    full = generate_phantom(2, in_plane_size=64, slice_thickness=2.0, coverage="full")[0]
    assert 150 <= short.shape[2] * 2.0 <= 300 and full.shape[2] * 2.0 >= 380  # lung bases to femoral heads
    z_with_kidney = np.flatnonzero((label > 0).any(axis=(0, 1)))
    assert z_with_kidney[0] > 0 and z_with_kidney[-1] < image.shape[2] - 1  # margin at both ends
    thick, _, _ = generate_phantom(2, in_plane_size=32, slice_thickness=60.0)
    assert thick.shape[2] == 8


def test_two_kidneys_in_most_cases_and_one_after_nephrectomy():
    counts = [_components(generate_phantom(s, **SMALL)[1] > 0) for s in range(10)]
    assert sum(c == 2 for c in counts) >= 7, counts
    assert _components(generate_phantom(0, single_kidney=True, **SMALL)[1] > 0) == 1
    assert _components(generate_phantom(0, single_kidney=False, **SMALL)[1] > 0) == 2


def test_kidneys_lie_either_side_of_the_midline_right_one_lower():
    _, label, affine = generate_phantom(7, in_plane_size=128, slice_thickness=3.0, single_kidney=False)
    cc, n = ndimage.label(label > 0, structure=FULL_CONNECTIVITY)
    assert n == 2
    centres = [affine[:3, :3] @ np.argwhere(cc == i).mean(axis=0) + affine[:3, 3] for i in (1, 2)]
    right, left = sorted(centres, key=lambda c: -c[0])  # RAS: +x is the patient's right
    assert right[0] > 40 and left[0] < -40
    assert right[2] < left[2]


@pytest.mark.parametrize("phase, min_kidney", [("nephrographic", 100), ("unenhanced", 15)])
def test_kidney_brighter_than_surrounding_fat(phase, min_kidney):
    image, label, _ = generate_phantom(5, in_plane_size=128, slice_thickness=4.0, phase=phase)
    fg = label > 0
    ring = ndimage.binary_dilation(fg, iterations=2) & ~ndimage.binary_dilation(fg, iterations=1)
    kidney = np.median(image[label == 1])
    assert kidney > min_kidney
    assert np.median(image[ring]) < -40
    assert kidney - np.median(image[ring]) > 100


@pytest.mark.parametrize("phase, min_gap", [("nephrographic", 25), ("corticomedullary", 15), ("unenhanced", 12)])
def test_tumour_intensity_differs_from_kidney(phase, min_gap):
    checked = 0
    for seed in range(8):
        # Tumour means: >= 40 HU below the parenchyma mean, >= 25 HU at the tumour floor of 70 HU (enhanced; in the
        # corticomedullary phase the mixed cortex/medulla interior is closer), 20-35 HU off it unenhanced; measured
        # on noisy interiors, hence the margins.
        image, label, _ = generate_phantom(seed, in_plane_size=128, slice_thickness=4.0, num_tumours=1, phase=phase)
        # Eroded masks: compare interiors, not partial-volume edges.
        tumour = ndimage.binary_erosion(label == 2)
        kidney = ndimage.binary_erosion(label == 1)
        if tumour.sum() < 30:
            continue
        checked += 1
        assert abs(image[tumour].mean() - image[kidney].mean()) >= min_gap, seed
    assert checked >= 4


def test_mass_overrides():
    _, none, _ = generate_phantom(4, num_tumours=0, num_cysts=0, **SMALL)
    assert set(np.unique(none).tolist()) == {0, 1}
    _, some, _ = generate_phantom(4, num_tumours=2, num_cysts=1, **SMALL)
    assert {2, 3} <= set(np.unique(some).tolist())


def test_phase_override_changes_intensity_not_geometry():
    kw = {"in_plane_size": 128, "slice_thickness": 4.0, "num_tumours": 0, "num_cysts": 0}
    cm_img, cm_lab, _ = generate_phantom(5, phase="corticomedullary", **kw)
    ne_img, ne_lab, _ = generate_phantom(5, phase="nephrographic", **kw)
    np.testing.assert_array_equal(cm_lab, ne_lab)
    assert not np.array_equal(cm_img, ne_img)
    # Bright cortex and dark medulla in the corticomedullary phase, homogeneous in the nephrographic:
    # the spread of interior kidney HU is much wider in the former.
    interior = ndimage.binary_erosion(cm_lab == 1)
    assert cm_img[interior].std() > 1.5 * ne_img[interior].std()


def test_anatomy_independent_of_in_plane_size():
    s64 = phantom_spacing(11, in_plane_size=64)
    s128 = phantom_spacing(11, in_plane_size=128)
    assert s64[0] == pytest.approx(2 * s128[0]) and s64[2] == s128[2]
    img64, lab64, aff64 = generate_phantom(11, in_plane_size=64)
    img128, lab128, aff128 = generate_phantom(11, in_plane_size=128)
    assert img64.shape[2] == img128.shape[2]
    # Same patient at two pixel sizes: kidney volume (mL) agrees within discretisation error.
    vol64 = (lab64 == 1).sum() * abs(np.linalg.det(aff64[:3, :3])) / 1000
    vol128 = (lab128 == 1).sum() * abs(np.linalg.det(aff128[:3, :3])) / 1000
    assert vol128 > 100 and abs(vol64 - vol128) / vol128 < 0.2


def test_spacing_at_512_matches_kits_range():
    lo, hi = FOV_RANGE_MM[0] / 512, FOV_RANGE_MM[1] / 512
    assert 0.58 <= lo < hi <= 0.98  # the KiTS23 masks' in-plane range, 0.59-0.98 mm
    spacings = np.array([phantom_spacing(s, in_plane_size=512) for s in range(200)])
    assert np.all((spacings[:, :2] >= lo) & (spacings[:, :2] <= hi))
    assert np.all(spacings[:, 0] == spacings[:, 1])
    assert np.all((spacings[:, 2] >= 1.0) & (spacings[:, 2] <= 5.0))
    assert spacings[:, 0].max() - spacings[:, 0].min() > 0.15  # really drawn, not constant
    assert phantom_spacing(0, 512, slice_thickness=2.5)[2] == 2.5


def test_phantom_spacing_matches_generated_affine():
    for seed in (0, 1):
        _, _, affine = generate_phantom(seed, in_plane_size=64, slice_thickness_range=(4.0, 6.0))
        np.testing.assert_allclose(np.diag(affine)[:3], phantom_spacing(seed, 64, slice_thickness_range=(4.0, 6.0)))


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="phase"):
        generate_phantom(0, phase="venous")
    with pytest.raises(ValueError, match="in_plane_size"):
        generate_phantom(0, in_plane_size=8)
    with pytest.raises(ValueError, match="slice_thickness_range"):
        phantom_spacing(0, slice_thickness_range=(5.0, 1.0))
    image, label, affine = generate_phantom(0, in_plane_size=32, slice_thickness=20.0)
    with pytest.raises(ValueError, match="storage"):
        write_kits_case("/nonexistent", 0, image, label, affine, storage="lps")


def test_ras_to_kits_has_the_real_kits_header_pattern():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    out, aff = ras_to_kits(arr, affine)
    assert out.shape == (4, 3, 2)
    assert out[0, 0, 0] == arr[-1, -1, -1]
    # Same sign/zero pattern as a real KiTS header: [[0,0,-dx,.],[0,-dy,0,.],[-dz,0,0,.]].
    np.testing.assert_allclose(aff[:3, :3], [[0, 0, -0.8], [0, -0.8, 0], [-5.0, 0, 0]])
    assert nib.aff2axcodes(aff) == ("I", "P", "L")


@pytest.mark.parametrize("storage, codes", [("kits", ("I", "P", "L")), ("ras", ("R", "A", "S"))])
def test_written_case_round_trips(storage, codes, tmp_path):
    tmp = tmp_path
    image, label, affine = generate_phantom(6, in_plane_size=48, slice_thickness=8.0)
    case_dir = write_kits_case(tmp, 7, image, label, affine, storage=storage)
    assert os.path.basename(case_dir) == "case_00007"
    assert sorted(os.listdir(case_dir)) == ["imaging.nii.gz", "segmentation.nii.gz"]  # no temp files left
    img_arr, img_aff, img_codes, img = _load(os.path.join(case_dir, "imaging.nii.gz"))
    seg_arr, seg_aff, seg_codes, seg = _load(os.path.join(case_dir, "segmentation.nii.gz"))
    assert img_codes == codes and seg_codes == codes
    assert img.header.get_data_dtype() == np.int16 and seg.header.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(img_arr, image)
    np.testing.assert_array_equal(seg_arr, label)
    np.testing.assert_allclose(img_aff, affine, atol=1e-5)
    np.testing.assert_allclose(seg_aff, affine, atol=1e-5)
    for nii in (img, seg):
        assert b"synthetic" in nii.header["descrip"].tobytes()
        assert int(nii.header["qform_code"]) > 0 and int(nii.header["sform_code"]) > 0
    if storage == "kits":
        assert img.shape == (image.shape[2], image.shape[1], image.shape[0])  # (slices, rows, cols)


def test_failed_write_leaves_no_partial_files(tmp_path, monkeypatch):
    image, label, affine = generate_phantom(0, in_plane_size=32, slice_thickness=20.0)

    def broken_save(img, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(phantoms.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_kits_case(tmp_path, 0, image, label, affine)
    assert os.listdir(tmp_path / "case_00000") == []


def test_generate_dataset_is_per_case_deterministic(tmp_path):
    kw = {"seed": 5, "in_plane_size": 40, "slice_thickness_range": (10.0, 12.0)}
    folders = generate_dataset(str(tmp_path / "a"), num_cases=4, **kw)
    assert [os.path.basename(f) for f in folders] == [f"case_{i:05d}" for i in range(4)]
    readme = (tmp_path / "a" / "SYNTHETIC_README.txt").read_text()
    assert "SYNTHETIC" in readme and "not" in readme.lower()
    codes = {nib.aff2axcodes(nib.load(os.path.join(f, "imaging.nii.gz")).affine) for f in folders}
    assert codes == {("I", "P", "L"), ("R", "A", "S")}  # both storages in a 4-case set
    # Case 2 alone (first_case=2) equals case 2 of the 4-case set.
    (only,) = generate_dataset(str(tmp_path / "b"), num_cases=1, first_case=2, **kw)
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        x = nib.load(os.path.join(folders[2], name))
        y = nib.load(os.path.join(only, name))
        np.testing.assert_array_equal(np.asanyarray(x.dataobj), np.asanyarray(y.dataobj))
        np.testing.assert_array_equal(x.affine, y.affine)


@pytest.mark.parametrize("fraction, codes", [(1.0, ("I", "P", "L")), (0.0, ("R", "A", "S"))])
def test_kits_fraction_extremes(fraction, codes, tmp_path):
    folders = generate_dataset(
        str(tmp_path), num_cases=3, seed=1, in_plane_size=32, slice_thickness_range=(20.0, 20.0), kits_fraction=fraction
    )
    assert {nib.aff2axcodes(nib.load(os.path.join(f, "segmentation.nii.gz")).affine) for f in folders} == {codes}


def test_cli_writes_cases(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "scripts.synthetic.phantoms", "--out_dir", str(out), "--num_cases", "1",
           "--in_plane_size", "32", "--slice_thickness_range", "[20,20]"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SYNTHETIC" in proc.stdout + proc.stderr
    assert (out / "case_00000" / "imaging.nii.gz").is_file()
    assert (out / "SYNTHETIC_README.txt").is_file()


# ---- issue 18: the whole axial range of a KiTS-style scan, real KiTS23 kidney shapes, the check set ----

KITS_MASKS = os.path.join(ROOT, "..", "shared", "data", "kits23_masks")
needs_kits = pytest.mark.skipif(not os.path.isdir(KITS_MASKS), reason="../shared/data/kits23_masks absent (real KiTS23 masks)")


def _tissue_z(scene, name: str) -> np.ndarray:
    """z (mm) of the slices holding tissue ``name``."""
    return scene.grid.coords[2][(scene.vol == scene.ids[name]).any(axis=(0, 1))]


@pytest.mark.parametrize("seed", [0, 3])
def test_full_coverage_puts_each_organ_in_its_axial_range(seed):
    scene, _, _ = phantoms._build_scene(seed, 96, (4.0, (1.0, 5.0)), None, (None, None), False, None, "full")
    kz = scene.grid.coords[2][np.isin(scene.vol, [scene.ids["cortex"], scene.ids["medulla"]]).any(axis=(0, 1))]
    k_top, k_bottom = kz.max(), kz.min()
    lung, heart, liver = _tissue_z(scene, "lung"), _tissue_z(scene, "heart_blood"), _tissue_z(scene, "liver")
    bladder, pelvis = _tissue_z(scene, "urine"), _tissue_z(scene, "pelvis_k")
    assert lung.max() > k_top + 100 and lung.min() > k_top - 60  # lung bases above, recesses down to the poles
    assert heart.min() > k_top + 30  # heart on the diaphragm
    assert liver.max() > k_top + 30 and liver.min() < k_top  # liver dome above the right kidney, beside it
    assert bladder.max() < k_bottom - 80  # bladder in the pelvis
    assert pelvis.max() < k_bottom and pelvis.min() < scene.grid.coords[2][0] + 80  # iliac wings .. femoral heads
    assert _tissue_z(scene, "rib").min() > k_bottom  # no ribs in the pelvis


def test_masks_consistent_tumours_touch_kidneys_and_labels_are_kits():
    for seed in range(6):
        _, label, _ = generate_phantom(seed, in_plane_size=96, slice_thickness=4.0, num_tumours=2, coverage="full")
        assert set(np.unique(label).tolist()) <= set(LABELS.values())
        tum, n = ndimage.label(label == 2, structure=FULL_CONNECTIVITY)
        near_kidney = ndimage.binary_dilation(label == 1, iterations=2)
        for i in range(1, n + 1):
            assert (near_kidney & (tum == i)).any(), f"seed {seed}: tumour component {i} away from any kidney"


def test_full_coverage_reproducible_by_seed_and_kidneys_unchanged_by_coverage():
    a = generate_phantom(9, in_plane_size=64, slice_thickness=5.0, coverage="full")
    b = generate_phantom(9, in_plane_size=64, slice_thickness=5.0, coverage="full")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    short = generate_phantom(9, in_plane_size=64, slice_thickness=5.0, coverage="kidneys")
    vol = [float((lab == 1).sum()) for lab in (a[1], short[1])]
    assert vol[1] > 0 and abs(vol[0] - vol[1]) / vol[1] < 0.05  # same kidneys, only the scan range differs


@needs_kits
def test_kits_masks_split_is_disjoint_and_by_case_id():
    from scripts.synthetic.kits_shapes import list_kits_masks, split_kits_masks

    paths = list_kits_masks(KITS_MASKS)
    train, check = split_kits_masks(paths)
    assert len(paths) == len(train) + len(check) and not set(train) & set(check) and check
    assert max(p.name for p in train) < min(p.name for p in check)


@needs_kits
def test_real_kidney_shapes_are_painted_on_their_side_with_their_tumours():
    from scripts.synthetic.kits_shapes import list_kits_masks, load_kits_kidneys

    path = next(p for p in list_kits_masks(KITS_MASKS) if "00021" in p.name)  # left tumour, right cyst
    shapes = load_kits_kidneys(str(path))
    image, label, affine = generate_phantom(4, in_plane_size=256, slice_thickness=2.5, kidney_shapes=shapes)
    voxel = abs(np.linalg.det(affine[:3, :3]))
    n = label.shape[0]
    for side, real in shapes.items():
        half = label[: n // 2] if side == -1 else label[n // 2:]  # RAS: the patient's left at low x
        expected = (real.labels > 0).sum() * real.spacing.prod()
        assert abs((half > 0).sum() * voxel - expected) / expected < 0.2, side
        assert bool((half == 2).any()) == bool((real.labels == 2).any()), side  # tumours as labelled
    again = generate_phantom(4, in_plane_size=256, slice_thickness=2.5, kidney_shapes=shapes)
    np.testing.assert_array_equal(again[0], image)


@needs_kits
def test_check_set_case_keeps_the_real_mask_and_is_seeded():
    from scripts.synthetic.checkset import generate_check_case
    from scripts.synthetic.kits_shapes import list_kits_masks, split_kits_masks

    path = split_kits_masks(list_kits_masks(KITS_MASKS))[1][0]
    image, label, affine = generate_check_case(path, 1, in_plane_size=128)
    real = nib.as_closest_canonical(nib.load(path))
    ml = np.bincount(np.asarray(real.dataobj, dtype=np.uint8).ravel(), minlength=4) * np.prod(real.header.get_zooms())
    got = np.bincount(label.ravel(), minlength=4) * abs(np.linalg.det(affine[:3, :3]))
    np.testing.assert_allclose(got[1:3], ml[1:3], rtol=0.1, atol=500)  # kidney and tumour mm^3 kept
    assert image.dtype == np.int16 and np.median(image[label == 1]) > 0  # soft tissue, not fat or air
    np.testing.assert_array_equal(generate_check_case(path, 1, in_plane_size=128)[0], image)


# ---- issue 18 follow-up: a varied pelvis (kidney-like distractors outside the kidneys' axial range) ----

PELVIC_TISSUES = ("iliacus", "gluteus_med", "iliopsoas", "obturator", "iliac_artery", "iliac_vein", "pelvic_organ",
                  "sigmoid_wall", "urine")


def _full_scene(seed: int, phase: str | None = None):
    return phantoms._build_scene(seed, 96, (4.0, (1.0, 5.0)), phase, (None, None), False, None, "full")[0]


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_pelvic_organs_present_in_their_axial_range_and_unlabelled(seed):
    scene = _full_scene(seed)
    lv, step = scene.lv, float(scene.grid.spacing[2])
    z = {name: _tissue_z(scene, name) for name in PELVIC_TISSUES}
    for name, zs in z.items():
        assert zs.size, f"seed {seed}: no {name}"
        assert scene.tis.label[scene.ids[name]] == 0, f"{name} must be background"
    for name in ("iliacus", "gluteus_med", "iliopsoas"):  # along the iliac wing, down to the hip
        assert z[name].max() < lv.crest + 20 and z[name].min() > lv.femoral - 60, name
    assert np.abs(z["obturator"] - lv.femoral).max() < 50  # pelvic side wall at the hip joints
    for name in ("iliac_artery", "iliac_vein"):  # from the bifurcation (crest - 10 mm) to the groins
        assert z[name].max() <= lv.crest - 5 + step and z[name].min() >= lv.femoral - 25 - step, name
    assert z["pelvic_organ"].max() < lv.kidney_bottom - 40 and z["sigmoid_wall"].max() <= lv.crest + step
    # no kidney, tumour or cyst label anywhere in the pelvis
    assert not scene.labels()[:, :, scene.grid.coords[2] < lv.crest].any()


def test_pelvic_distractors_take_kidney_like_intensities():
    for seed in range(4):
        native, enhanced = _full_scene(seed, "unenhanced"), _full_scene(seed, "nephrographic")
        hu = {name: enhanced.tis.hu[enhanced.ids[name]] for name in ("iliac_artery", "iliac_vein", "pelvic_organ")}
        assert all(v >= 60 for v in hu.values()), hu  # enhancing: overlaps the kidney's 120-200 HU
        for name in ("iliacus", "gluteus_med", "iliopsoas", "obturator"):
            assert 35 <= native.tis.hu[native.ids[name]] <= 70  # muscle, as close to the 25-45 HU native kidney
        assert 30 <= native.tis.hu[native.ids["pelvic_organ"]] <= 60
        # the phase changes intensities, never where the pelvic organs are
        for name in PELVIC_TISSUES:
            np.testing.assert_array_equal(native.vol == native.ids[name], enhanced.vol == enhanced.ids[name])


def test_pelvic_bone_texture_stays_on_cancellous_bone():
    scene = phantoms._build_scene(2, 96, (4.0, (1.0, 5.0)), None, (None, None), False, None, "full")[0]
    ids = {tid for _, tid, _ in scene.textures}
    assert {scene.ids["pelvis_c"], scene.ids["bone_c"]} <= ids
    img = phantoms._render_image(scene, list(scene.textures), np.random.default_rng(0))
    assert img.dtype == np.int16 and img.shape == scene.vol.shape


def test_organ_means_are_drawn_wider_than_the_textbook_ranges():
    """Issue 18 domain randomisation: organ means go about 20 HU past the textbook ranges on both sides (unenhanced
    kidney 25-45 -> 5-65 HU, muscle 40-60 -> 20-80 HU), never further, and the phase shifts no later draw."""
    from scripts.synthetic.phantoms import _draw_contrast

    native = [_draw_contrast(np.random.default_rng(seed), "unenhanced") for seed in range(400)]
    kidney = np.array([c.cortex for c in native])  # cortex = kidney mean + jitter of at most 5 HU
    muscle = np.array([c.muscle for c in native])
    assert 0 <= kidney.min() < 12 and 58 < kidney.max() <= 70
    assert 20 <= muscle.min() < 25 and 75 < muscle.max() <= 80
    enhanced = [_draw_contrast(np.random.default_rng(seed), "nephrographic") for seed in range(400)]
    assert [c.muscle for c in enhanced] == list(muscle)  # same draws whatever the phase
