"""The HU window and in-plane resize of every path (train, MONAI inference, streaming), for slice batches.

The configs declare the same steps once as ``intensity_and_resize`` (``ScaleIntensityRanged`` with ``hu_window``,
``scripts.data.transforms.PadToAspectd``, ``Resized`` area to ``slice_size``); ``tests/test_preprocessing.py`` checks
that all paths agree. The padding keeps the anatomy's aspect ratio: a non-square slice (a cropped NIfTI, a
512x412 matrix) is padded with air, centred, to ``slice_size``'s aspect before the resize, instead of being
stretched (a 122x101 crop of a real CT: kidney agreement 0.57-0.58 stretched, 0.70-0.71 padded, docs/results.md).
Plain numpy (issue 17): the streaming path must not need torch, so that ``kidney-seg --lean`` starts without it;
the area resize computes what ``torch.nn.functional.interpolate(mode="area")`` (adaptive average pooling) computes,
and :func:`nearest_index` the source index of its ``mode="nearest"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["window_and_resize", "area_resize", "nearest_index", "aspect_padding", "pad_to_aspect"]


def window_and_resize(hu: np.ndarray, hu_window: Sequence[float], slice_size: Sequence[int]) -> np.ndarray:
    """HU slices (k, X, Y) float32 to (k, 1, H, W) float32 in [0, 1]: window ``hu_window`` clipped, padded with 0
    (air) to ``slice_size``'s aspect ratio (:func:`aspect_padding`), then area resize to ``slice_size``."""
    low, high = float(hu_window[0]), float(hu_window[1])
    image = np.asarray(hu, dtype=np.float32) - np.float32(low)
    image /= np.float32(high - low)
    np.clip(image, 0.0, 1.0, out=image)
    resized = area_resize(pad_to_aspect(image, slice_size, 0.0), slice_size)
    return resized.reshape(resized.shape[0], 1, *resized.shape[1:])  # canonical strides, not [:, None]'s 0


def aspect_padding(in_plane: Sequence[int], slice_size: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(before, after) padding of the rows and of the columns that gives an ``in_plane`` (X, Y) grid the aspect ratio
    of ``slice_size``, centred (the odd pixel after). Square slices of a square ``slice_size`` get none."""
    rows, cols = int(in_plane[0]), int(in_plane[1])
    height, width = int(slice_size[0]), int(slice_size[1])
    padded_rows = max(rows, int(round(cols * height / width)))
    padded_cols = max(cols, int(round(rows * width / height)))
    extra_rows, extra_cols = padded_rows - rows, padded_cols - cols
    return (extra_rows // 2, extra_rows - extra_rows // 2), (extra_cols // 2, extra_cols - extra_cols // 2)


def pad_to_aspect(images: np.ndarray, slice_size: Sequence[int], value: float) -> np.ndarray:
    """(k, X, Y) slices padded with ``value`` by :func:`aspect_padding`; the array itself when none is needed."""
    rows, cols = aspect_padding(images.shape[1:], slice_size)
    if not any(rows + cols):
        return images
    return np.pad(images, ((0, 0), rows, cols), mode="constant", constant_values=value)


def area_resize(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(k, X, Y) float32 to (k, H, W): each output pixel is the mean of the input pixels its area covers
    (adaptive average pooling: rows ``floor(i*X/H)`` to ``ceil((i+1)*X/H)``, likewise columns).

    Bit for bit what torch's CPU kernel computes (``tests/test_preprocessing.py``), so that the streaming path and
    the MONAI transforms (``Resized``) give the same network input: the window's pixels are added in float32 in
    row-major order, then the sum is divided by its height and then by its width. Whole-number reductions
    (512 -> 256) add strided views; other sizes gather per window offset (a masked term adds an exact zero).
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    k, rows, cols = images.shape
    height, width = int(size[0]), int(size[1])
    if (rows, cols) == (height, width):
        return images.copy()
    if rows % height == 0 and cols % width == 0:
        fy, fx = rows // height, cols // width
        total = np.zeros((k, height, width), dtype=np.float32)
        for dy in range(fy):
            for dx in range(fx):
                total += images[:, dy::fy, dx::fx]
        total /= np.float32(fy)
        total /= np.float32(fx)
        return total
    (r0, kh), (c0, kw) = _windows(rows, height), _windows(cols, width)
    total = np.zeros((k, height, width), dtype=np.float32)
    for dy in range(int(kh.max())):
        picked_rows = images[:, np.minimum(r0 + dy, rows - 1), :]
        for dx in range(int(kw.max())):
            term = picked_rows[:, :, np.minimum(c0 + dx, cols - 1)]
            total += np.where((dy < kh)[:, None] & (dx < kw)[None, :], term, np.float32(0.0))
    total /= kh.astype(np.float32)[:, None]
    total /= kw.astype(np.float32)[None, :]
    return total


@lru_cache(maxsize=16)
def _windows(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """First input index and length of each output pixel's window (adaptive pooling)."""
    index = np.arange(size_out)
    start = (index * size_in) // size_out
    stop = -(-((index + 1) * size_in) // size_out)
    return start, stop - start


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
