"""An independent SEMI-SYNTHETIC check set: held-out KiTS23 masks in a differently built body (issue 18).

Training never sees these cases: they use only the check split of the KiTS23 masks
(:func:`scripts.synthetic.kits_shapes.split_kits_masks`), and everything around the kidneys is built by a
second recipe that shares no code with :mod:`scripts.synthetic.phantoms`:

- the mask's own grid and field of view (5 mm slices, 0.59-0.98 mm pixels resampled to ``in_plane_size``), the
  kidneys where they were in the real patient (not re-centred);
- a body with a wavy elliptic outline, organs as thresholded smoothed-noise blobs (not ellipsoids), a round
  spine, psoas and aorta;
- kidney enhancement as a cortex-to-centre gradient from a distance transform (no pyramids), tumours with their
  own HU rule, unenhanced or enhanced;
- noise as a mix of white and 2-voxel-correlated noise with a slow multiplicative field, no partial-volume blur.

Scores on these volumes are SEMI-SYNTHETIC (real label geometry, simulated intensities): never clinical evidence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .phantoms import write_kits_case

__all__ = ["generate_check_case", "generate_check_dataset"]

logger = logging.getLogger(__name__)


def _mask_on_grid(path: str, in_plane_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The KiTS mask in RAS, resampled in-plane (nearest) to ``in_plane_size``; returns (labels, affine)."""
    img = nib.as_closest_canonical(nib.load(path))
    lab = np.asarray(img.dataobj, dtype=np.uint8)
    f = in_plane_size / lab.shape[0], in_plane_size / lab.shape[1], 1.0
    out = ndimage.zoom(lab, f, order=0, grid_mode=True, mode="grid-constant")
    aff = img.affine.copy()
    # grid_mode zoom keeps the field of view: new voxel i is centred on old index (i + 0.5) / f - 0.5.
    aff[:3, 3] += aff[:3, :3] @ (0.5 / np.array(f) - 0.5)
    aff[:3, :3] = aff[:3, :3] @ np.diag([1 / f[0], 1 / f[1], 1.0])
    return out, aff


def _coords(shape, affine) -> list[np.ndarray]:
    """Broadcastable mm coordinates (RAS) of the voxel grid (diagonal affine)."""
    return [(affine[d, d] * np.arange(shape[d]) + affine[d, 3]).reshape([-1 if i == d else 1 for i in range(3)])
            for d in range(3)]


def _blob(rng, shape, xyz, centre, semi, sigma_vox) -> np.ndarray:
    """An ellipsoidal envelope roughened by thresholded smoothed noise (computed in its bounding box)."""
    out = np.zeros(shape, bool)
    box = []
    for d in range(3):
        c = xyz[d].ravel()
        inside = np.flatnonzero(np.abs(c - centre[d]) <= semi[d] * 1.3)
        if inside.size == 0:
            return out
        box.append(slice(int(inside[0]), int(inside[-1]) + 1))
    sub = [xyz[d][tuple(box[i] if i == d else slice(None) for i in range(3))] for d in range(3)]
    q = sum(((c - m) / s) ** 2 for c, m, s in zip(sub, centre, semi))
    bshape = tuple(b.stop - b.start for b in box)
    noise = ndimage.gaussian_filter(rng.standard_normal(bshape).astype(np.float32), sigma_vox)
    noise /= max(float(noise.std()), 1e-6)
    out[tuple(box)] = q + 0.25 * noise < 1.0
    return out


def _body(rng, xyz, kid_c) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(inside skin, inside muscle wall, body centre): a wavy ellipse around the kidneys."""
    u = rng.uniform
    cx, cy = kid_c[0] + u(-10, 10), kid_c[1] + u(25, 50)
    a, b = u(150, 190), u(105, 145)
    theta = np.arctan2(xyz[1] - cy, xyz[0] - cx)
    wave = 1 + 0.05 * np.sin(2 * theta + u(0, 6)) + 0.03 * np.sin(3 * theta + u(0, 6))
    rho = np.sqrt(((xyz[0] - cx) / a) ** 2 + ((xyz[1] - cy) / b) ** 2) / wave
    fat = u(10, 35) / b
    return rho < 1.0, rho < 1.0 - fat - u(8, 14) / b, (cx, cy)


def _tissue_image(rng, lab, xyz, native) -> np.ndarray:
    """HU image of body, organs and kidneys (before noise)."""
    u, shape = rng.uniform, lab.shape
    sp = float(abs(xyz[0].ravel()[1] - xyz[0].ravel()[0]))
    kid = lab > 0
    kid_c = [float(np.mean(np.broadcast_to(c, shape)[kid])) for c in xyz]
    skin, cavity, (cx, cy) = _body(rng, xyz, kid_c)
    skin, cavity = np.broadcast_to(skin, shape), np.broadcast_to(cavity, shape)
    img = np.full(shape, -1000.0, np.float32)
    img[skin] = u(-125, -85)
    img[skin & ~cavity] = u(35, 65)
    img[cavity] = u(-120, -80)
    z_top = float(xyz[2].max())
    organs = [((kid_c[0] + u(20, 50), cy + u(10, 40), z_top), (u(70, 100), u(70, 100), u(80, 120)), u(40, 70) if native else u(85, 135)),
              ((kid_c[0] - u(30, 60), kid_c[1] + u(0, 30), z_top - u(0, 30)), (u(30, 45), u(40, 60), u(50, 70)), u(40, 55) if native else u(95, 135))]
    for centre, semi, hu in organs:  # liver (patient's right = +x), spleen
        img[_blob(rng, shape, xyz, centre, semi, 3.0 / sp) & cavity] = hu
    for _ in range(int(rng.integers(20, 40))):  # bowel: gas, fluid or soft blobs in front of the kidneys
        c = (cx + u(-120, 120), cy + u(0, 90), u(float(xyz[2].min()), z_top))
        img[_blob(rng, shape, xyz, c, rng.uniform(10, 25, 3), 2.0 / sp) & cavity] = rng.choice([-1000.0, u(0, 25), u(25, 55)])
    r_sp = u(17, 23)
    spine = ((xyz[0] - cx) ** 2 + (xyz[1] - (kid_c[1] - u(0, 15))) ** 2) < r_sp**2
    img[np.broadcast_to(spine, shape)] = u(250, 450)
    _kidney_intensity(rng, img, lab, native, sp)
    return img


def _kidney_intensity(rng, img, lab, native, sp) -> None:
    """Kidney: brighter cortex falling towards the centre (distance transform); tumour and cyst HU rules."""
    u = rng.uniform
    kid = lab > 0
    depth = np.zeros(lab.shape, np.float32)
    box = ndimage.find_objects(kid.astype(np.uint8))[0]
    depth[box] = ndimage.distance_transform_edt(kid[box], sampling=(sp, sp, 5.0))
    if native:
        k_hu, k_drop, t_hu = u(25, 45), u(0, 10), None
    else:
        k_hu, k_drop = u(140, 230), u(20, 90)
        t_hu = k_hu - u(40, 110)
    kidney_hu = k_hu - k_drop * np.clip(depth / 15.0, 0, 1)
    img[lab == 1] = kidney_hu[lab == 1]
    img[lab == 3] = u(0, 20)
    if t_hu is None:
        t_hu = k_hu + (u(15, 30) if rng.random() < 0.4 else -u(15, 30))
    img[lab == 2] = t_hu


def _noise(rng, img) -> np.ndarray:
    """Slow multiplicative field, white + correlated noise (no blur), rounded to int16 HU."""
    shape = img.shape
    coarse = rng.uniform(0.97, 1.03, (4, 4, 2)).astype(np.float32)
    field = ndimage.zoom(coarse, [s / n for s, n in zip(shape, (4, 4, 2))], order=1, grid_mode=True, mode="nearest")
    sigma = rng.uniform(8, 30)
    white = rng.standard_normal(shape).astype(np.float32)
    corr = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (2, 2, 0.5))
    corr /= max(float(corr.std()), 1e-6)
    out = (img + 1000) * field[: shape[0], : shape[1], : shape[2]] - 1000 + sigma * (0.6 * white + 0.8 * corr)
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)


def generate_check_case(mask_path: str | os.PathLike, seed: int, in_plane_size: int = 256):
    """One SEMI-SYNTHETIC check case around a real KiTS23 mask: ``(image int16, label uint8, affine)`` in RAS."""
    rng = np.random.default_rng(seed)
    lab, affine = _mask_on_grid(os.fspath(mask_path), in_plane_size)
    xyz = _coords(lab.shape, affine)
    native = rng.random() < 0.4
    img = _tissue_image(rng, lab, xyz, native)
    return _noise(rng, img), lab, affine


def generate_check_dataset(out_dir: str, masks: list[str | os.PathLike], seed: int = 0, in_plane_size: int = 256) -> list[str]:
    """Write one check case per mask in the KiTS layout (RAS storage); returns the case folders."""
    os.makedirs(out_dir, exist_ok=True)
    Path(out_dir, "SYNTHETIC_README.txt").write_text(
        "SEMI-SYNTHETIC check set: real KiTS23 masks (CC BY-NC-SA 4.0, Heller et al.) with simulated CT intensities\n"
        "(scripts/synthetic/checkset.py). Not patient images; scores on them are not clinical evidence.\n")
    folders = []
    for i, path in enumerate(masks):
        image, label, affine = generate_check_case(path, seed * 1000 + i, in_plane_size)
        folders.append(write_kits_case(out_dir, i, image, label, affine, storage="ras"))
        logger.info("check case %s from %s", folders[-1], Path(path).name)
    return folders
