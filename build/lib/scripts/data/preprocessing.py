"""The HU window and in-plane resize of every path (train, MONAI inference, streaming), for slice batches.

The configs declare the same two steps once as ``intensity_and_resize`` (``ScaleIntensityRanged`` with
``hu_window``, ``Resized`` area to ``slice_size``); ``tests/test_preprocessing.py`` checks that both agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["window_and_resize"]


def window_and_resize(hu: torch.Tensor, hu_window: Sequence[float], slice_size: Sequence[int]) -> torch.Tensor:
    """HU slices (k, X, Y) to (k, 1, H, W) in [0, 1]: window ``hu_window`` clipped, then area resize to ``slice_size``."""
    low, high = float(hu_window[0]), float(hu_window[1])
    image = ((hu - low) / (high - low)).clamp_(0.0, 1.0)[:, None]
    if tuple(image.shape[-2:]) != tuple(slice_size):
        image = F.interpolate(image, size=tuple(slice_size), mode="area")
    return image
