"""Real kidney and tumour shapes from KiTS23 masks, for SEMI-SYNTHETIC phantoms (issue 18).

The KiTS23 masks (``case_XXXXX_segmentation.nii.gz``, Heller et al., CC BY-NC-SA 4.0) are read at run time from
a folder outside the repository (``../shared/data/kits23_masks``); nothing of them is stored here. Each mask is
brought to RAS (KiTS stores axes I, P, L with the slice axis first), split into the patient's right and left
kidney (with their tumours and cysts, as labelled), and cropped. :class:`RealKidney` then answers "which label
is at this point (mm, relative to the kidney's centroid)" so the phantom generator can paint it at its own
spacing, in that side's kidney position.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["RealKidney", "list_kits_masks", "split_kits_masks", "load_kits_kidneys"]

_SUFFIX = "_segmentation.nii.gz"


@dataclass(frozen=True)
class RealKidney:
    """One real kidney (label 1) with its masses (2 tumour, 3 cyst): a RAS crop and its geometry.

    ``semi`` and ``axes`` describe the ellipsoid with the same second moments (rows of ``axes``: the middle,
    shortest and longest principal axes), which the generator uses for perirenal fat and the z range.
    """

    labels: np.ndarray  # uint8 crop, RAS voxel order
    spacing: np.ndarray  # mm per voxel
    centroid: np.ndarray  # mm from the crop's first voxel centre
    semi: np.ndarray
    axes: np.ndarray
    case_id: str

    def sample(self, rel: list[np.ndarray]) -> np.ndarray:
        """Labels (nearest voxel, 0 outside the crop) at broadcastable mm offsets ``rel`` from the centroid."""
        shape = np.broadcast_shapes(*(r.shape for r in rel))
        idx = [np.broadcast_to(np.rint((r + c) / s), shape) for r, c, s in zip(rel, self.centroid, self.spacing)]
        return ndimage.map_coordinates(self.labels, idx, order=0, mode="constant", cval=0)


def list_kits_masks(folder: str | os.PathLike) -> list[Path]:
    """The ``case_XXXXX_segmentation.nii.gz`` files of ``folder``, sorted by case id ([] when it is absent)."""
    folder = Path(folder)
    return sorted(folder.glob(f"case_*{_SUFFIX}")) if folder.is_dir() else []


def split_kits_masks(paths: list[Path], check_fraction: float = 1 / 3) -> tuple[list[Path], list[Path]]:
    """(training, check) masks: the last ``check_fraction`` of the cases by id are never used for training."""
    n_check = int(round(len(paths) * check_fraction))
    cut = len(paths) - n_check
    return list(paths[:cut]), list(paths[cut:])


def _moments(points_mm: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid, semi-axes and axes (rows: middle, shortest, longest) of the moment-equivalent ellipsoid."""
    centroid = points_mm.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov((points_mm - centroid).T))
    order = [1, 0, 2]
    axes = evecs[:, order].T
    if axes[0, 0] * -side < 0:  # first axis towards the hilum (medial)
        axes[0] = -axes[0]
    axes[2] = np.cross(axes[0], axes[1])
    return centroid, np.sqrt(5.0 * np.maximum(evals[order], 1.0)), axes


def _side_of_components(fg: np.ndarray, x_mm: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Connected components of ``fg`` and, per component, +1 (patient's right, larger RAS x) or -1."""
    cc, n = ndimage.label(fg)
    if n == 0:
        return cc, []
    sizes = ndimage.sum(fg, cc, range(1, n + 1))
    cx = np.array(ndimage.mean(x_mm, cc, range(1, n + 1)))
    big = np.argsort(sizes)[::-1][:2]
    midline = cx[big].mean() if len(big) == 2 else 0.0
    return cc, [1 if x > midline else -1 for x in cx]


@functools.lru_cache(maxsize=32)
def load_kits_kidneys(path: str) -> dict[int, RealKidney]:
    """The kidneys of one KiTS mask by side (+1 right, -1 left); a side is absent when it has < 20 mL."""
    img = nib.as_closest_canonical(nib.load(path))
    labels = np.asarray(img.dataobj, dtype=np.uint8)
    spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
    x_mm = (img.affine[0, 0] * np.arange(labels.shape[0]) + img.affine[0, 3]).reshape(-1, 1, 1)
    cc, sides = _side_of_components(labels > 0, np.broadcast_to(x_mm, labels.shape))
    out = {}
    case_id = Path(path).name[: -len(_SUFFIX)]
    for side in (1, -1):
        ids = [i + 1 for i, s in enumerate(sides) if s == side]
        mask = np.isin(cc, ids) if ids else np.zeros(labels.shape, bool)
        if mask.sum() * spacing.prod() < 20_000:
            continue
        sl = ndimage.find_objects(mask.astype(np.uint8))[0]
        crop = np.where(mask[sl], labels[sl], 0).astype(np.uint8)
        points = np.argwhere(crop > 0) * spacing
        centroid, semi, axes = _moments(points, side)
        out[side] = RealKidney(crop, spacing, centroid, semi, axes, case_id)
    return out
