"""The HU window and in-plane resize of every path (train, MONAI inference, streaming), for slice batches.

The configs declare the same two steps once as ``intensity_and_resize`` (``ScaleIntensityRanged`` with
``hu_window``, ``Resized`` area to ``slice_size``); ``tests/test_preprocessing.py`` checks that both agree.
Plain numpy (issue 17): the streaming path must not need torch, so that ``kidney-seg --lean`` starts without it;
the area resize computes what ``torch.nn.functional.interpolate(mode="area")`` (adaptive average pooling) computes,
and :func:`nearest_index` the source index of its ``mode="nearest"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["window_and_resize", "area_resize", "nearest_index"]


def window_and_resize(hu: np.ndarray, hu_window: Sequence[float], slice_size: Sequence[int]) -> np.ndarray:
    """HU slices (k, X, Y) float32 to (k, 1, H, W) float32 in [0, 1]: window ``hu_window`` clipped, then area resize
    to ``slice_size``."""
    low, high = float(hu_window[0]), float(hu_window[1])
    image = np.asarray(hu, dtype=np.float32) - np.float32(low)
    image /= np.float32(high - low)
    np.clip(image, 0.0, 1.0, out=image)
    return area_resize(image, slice_size)[:, None]


def area_resize(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(k, X, Y) float32 to (k, H, W): each output pixel is the mean of the input pixels its area covers
    (adaptive average pooling: rows ``floor(i*X/H)`` to ``ceil((i+1)*X/H)``, likewise columns).

    Whole-number reductions (512 -> 256) add the strided views in the order torch's kernel does (rows, then
    columns) and divide once; other sizes multiply by the row and column averaging matrices.
    """
    k, rows, cols = images.shape
    height, width = int(size[0]), int(size[1])
    if (rows, cols) == (height, width):
        return np.ascontiguousarray(images, dtype=np.float32)
    if rows % height == 0 and cols % width == 0:
        fy, fx = rows // height, cols // width
        total = np.zeros((k, height, width), dtype=np.float32)
        for dy in range(fy):
            for dx in range(fx):
                total += images[:, dy::fy, dx::fx]
        total /= np.float32(fy * fx)
        return total
    return np.matmul(np.matmul(_area_matrix(rows, height), images), _area_matrix(cols, width).T)


@lru_cache(maxsize=16)
def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float32 rows that average the input range each output pixel covers."""
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    for i in range(size_out):
        start, stop = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        matrix[i, start:stop] = 1.0 / (stop - start)
    matrix.setflags(write=False)
    return matrix


def nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output position of a nearest resize from ``size_in`` to ``size_out``: torch's rule
    (``floor(i * (size_in / size_out))`` in float32, clipped; exact halving for a doubling)."""
    if size_in == size_out:
        return np.arange(size_out)
    if size_out == 2 * size_in:
        return np.arange(size_out) >> 1
    scale = np.float32(size_in) / np.float32(size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)
