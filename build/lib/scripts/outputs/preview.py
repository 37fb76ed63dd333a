"""A PNG to check a segmentation at a glance: a few axial slices through the kidneys and one coronal view.

The preview shows the network's input (already HU-windowed to ``[0, 1]`` by the pre-processing, reoriented
to RAS) with the label map overlaid in each label's colour (:func:`scripts.outputs.formats.segment_style`),
in radiological convention (patient's right on the image's left, anterior / superior at the top). The label
map, in the input's original grid, is sampled onto the image grid by nearest neighbour through the two
affines, only for the slices shown, so the cost is a few hundred thousand voxels per case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.atomic import atomic_write
from .formats import segment_style

__all__ = ["render_preview", "save_preview"]

TILE = 256  # pixels per panel side


def _sample_label(label: np.ndarray, label_affine: np.ndarray, image_affine: np.ndarray,
                  voxels: np.ndarray) -> np.ndarray:
    """Nearest-neighbour label values at image voxel indices ``voxels`` (N, 3); 0 outside the label grid."""
    to_label = np.linalg.inv(label_affine) @ image_affine
    index = np.rint(voxels @ to_label[:3, :3].T + to_label[:3, 3]).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(label.shape)), axis=1)
    values = np.zeros(len(voxels), dtype=np.uint8)
    values[inside] = label[tuple(index[inside].T)]
    return values


def _plane(image: np.ndarray, label: np.ndarray, label_affine: np.ndarray, image_affine: np.ndarray,
           axis: int, position: int) -> tuple[np.ndarray, np.ndarray]:
    """The image plane ``axis == position`` and the label sampled onto it, both as (first, second) free axes."""
    free = [a for a in range(3) if a != axis]
    grid = np.meshgrid(np.arange(image.shape[free[0]]), np.arange(image.shape[free[1]]), indexing="ij")
    voxels = np.zeros((grid[0].size, 3))
    voxels[:, free[0]], voxels[:, free[1]], voxels[:, axis] = grid[0].ravel(), grid[1].ravel(), position
    labels = _sample_label(label, label_affine, image_affine, voxels).reshape(grid[0].shape)
    return _unit_range(np.take(image, position, axis=axis)), labels


def _unit_range(plane: np.ndarray) -> np.ndarray:
    """A plane of the network input as float64 in [0, 1]; uint8 planes (0..255) are rescaled."""
    if plane.dtype == np.uint8:
        return plane / 255.0
    return np.asarray(plane, dtype=np.float64)


def _tile(gray: np.ndarray, labels: np.ndarray, colors: Mapping[int, tuple[int, int, int]],
          aspect: float, alpha: float) -> Image.Image:
    """Blend colours over a grey plane (rows, columns), scale it to ``aspect`` (height/width per pixel), letterbox."""
    rgb = np.repeat((np.clip(gray, 0.0, 1.0) * 255.0)[..., None], 3, axis=2)
    for value, color in colors.items():
        mask = labels == value
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(color, dtype=np.float64)
    picture = Image.fromarray(rgb.astype(np.uint8))
    height, width = gray.shape[0] * aspect, gray.shape[1]
    scale = TILE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = picture.resize(size, Image.NEAREST)
    tile = Image.new("RGB", (TILE, TILE))
    tile.paste(picture, ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    return tile


def render_preview(image: np.ndarray, image_affine: np.ndarray, label: np.ndarray, label_affine: np.ndarray,
                   label_names: Mapping[str, int], num_axial: int = 3, alpha: float = 0.45) -> Image.Image:
    """``num_axial`` axial tiles through the labelled slices (or the middle of the scan) and a coronal tile.

    Args:
        image: network input in ``[0, 1]`` (x, y, z), RAS-oriented (the bundle's pre-processing); uint8 means
            0..255 for 0..1.
        image_affine: its voxel-to-world (RAS) affine.
        label: label map (x, y, z) in any grid of the same scan.
        label_affine: its voxel-to-world (RAS) affine.
        label_names: ``{name: value}``, for the colours.
    Returns:
        an RGB image ``(num_axial + 1) * TILE`` wide and ``TILE`` high.
    """
    image = np.asarray(image)  # planes are converted one at a time (_plane): no float copy of the volume
    colors = {value: segment_style(name).color for name, value in label_names.items()}
    spacing = np.linalg.norm(np.asarray(image_affine, dtype=np.float64)[:3, :3], axis=0)
    depth = image.shape[2]
    # the foreground's bounding box, mapped from label voxels to image slices
    # per-axis reductions: np.argwhere would make an int64 copy of every foreground voxel (GBs for a large mask)
    extents = [np.flatnonzero(np.any(label, axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    has_foreground = all(e.size for e in extents)
    if has_foreground:
        lo, hi = np.array([e[0] for e in extents]), np.array([e[-1] for e in extents])
        corners = np.array([[c[i][a] for a, i in enumerate(bits)] for c in [(lo, hi)]
                            for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
        to_image = np.linalg.inv(image_affine) @ label_affine
        z = corners @ to_image[2, :3] + to_image[2, 3]
        low, high = int(np.clip(np.ceil(z.min()), 0, depth - 1)), int(np.clip(np.floor(z.max()), 0, depth - 1))
        low, high = min(low, high), max(low, high)
    else:
        low, high = depth // 4, (3 * depth) // 4
    axial = np.linspace(low, high, num_axial + 2)[1:-1].round().astype(int) if high > low else [low] * num_axial
    tiles = []
    for z in axial:
        gray, labels = _plane(image, label, label_affine, image_affine, axis=2, position=int(z))
        # (x, y) -> rows anterior-first, columns patient's right first
        tiles.append(_tile(gray.T[::-1, ::-1], labels.T[::-1, ::-1], colors, spacing[1] / spacing[0], alpha))
    # coronal plane through the foreground's centre (or the middle), rows superior-first
    y = image.shape[1] // 2
    if has_foreground:
        _, labels = _plane(image, label, label_affine, image_affine, axis=2, position=int((low + high) // 2))
        hits = np.flatnonzero(labels.any(axis=0))
        y = int(np.median(hits)) if hits.size else y
    gray, labels = _plane(image, label, label_affine, image_affine, axis=1, position=y)
    tiles.append(_tile(gray.T[::-1, ::-1], labels.T[::-1, ::-1], colors, spacing[2] / spacing[0], alpha))
    sheet = Image.new("RGB", (TILE * len(tiles), TILE))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * TILE, 0))
    return sheet


def save_preview(path: str | os.PathLike, *args, **kwargs) -> Path:
    """Render with :func:`render_preview` and write the PNG atomically to ``path``."""
    path = Path(path)
    sheet = render_preview(*args, **kwargs)
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"), suffix=".png")
    return path
