"""Kidney-region cascade for the streaming path (issue 17): run the network only where the kidneys are.

The kidneys span roughly a third of an abdominal CT's slices (less in a chest-to-pelvis scan). A cheap first pass
runs the main network on every ``stride``-th axial slice at model resolution (option (a) of issue 17; those labels
are kept: they are the full run's labels for these slices); the slices from the first to the last sampled slice
with kidney or tumour of at least ``min_area_mm2`` are widened by ``stride - 1`` slices (the kidney may begin just
after an unsampled gap) and by ``margin_mm`` (in mm, converted with the case's own slice spacing, so the same
setting fits 0.5-5 mm slices) on each side. The network then runs on the remaining slices of that range; every
slice outside it is background.

Safety: when the first pass finds no kidney of adequate size, every slice runs (the cascade never returns an
empty segmentation because the cheap pass missed). The windowed model-resolution input of the slices not run in
the first pass is held in memory (float32, 4 bytes per model voxel: 64 KB a slice at 128x128, 256 KB at 256x256)
so that the file is read once and the second pass sees exactly the input the full run would.

It is off by default (``cascade: false`` in ``configs/inference.json``); the measurement that decides it is
``bench/cascade_bench.py`` (``docs/perf_notes/issue17_cascade.md``). The MONAI-pipeline path (``--streaming False``,
MONAI Label) does not run it: :func:`check_cascade` refuses that combination with one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..common.errors import InputError

__all__ = ["KidneyRangeCascade", "check_cascade", "kidney_slice_range", "sampled_slices"]


def check_cascade(cascade: bool, streaming: bool, cascade_stride: int = 4, cascade_margin_mm: float = 40.0) -> None:
    """One-line :class:`InputError` for cascade options that cannot work (an ``argument_checks`` callable)."""
    if not cascade:
        return
    if not streaming:
        raise InputError("--cascade True: the kidney-region cascade runs on the streaming path of 2D networks only; "
                         "use --streaming True (the default for 2D networks) or --cascade False")
    if isinstance(cascade_stride, bool) or not isinstance(cascade_stride, int) or cascade_stride < 1:
        raise InputError(f"--cascade_stride {cascade_stride!r}: must be an integer >= 1 (slices between samples)")
    try:
        margin = float(cascade_margin_mm)
    except (TypeError, ValueError):
        margin = math.nan
    if not math.isfinite(margin) or margin < 0:
        raise InputError(f"--cascade_margin_mm {cascade_margin_mm!r}: must be a number of mm >= 0")


def sampled_slices(depth: int, stride: int) -> np.ndarray:
    """Slices of the first pass: every ``stride``-th from 0, and the last slice (so no gap at the end is unseen)."""
    z = np.arange(0, depth, max(1, int(stride)))
    return np.union1d(z, [depth - 1]) if depth else z


def kidney_slice_range(found: Sequence[int], depth: int, stride: int, slice_mm: float,
                       margin_mm: float) -> tuple[int, int] | None:
    """Half-open slice range ``(start, stop)`` to run, from the sampled slices ``found`` with kidney; ``None``
    when ``found`` is empty (then the whole volume runs).

    The range is the first to the last found slice, widened on each side by ``stride - 1`` slices (the unsampled
    gap) plus ``ceil(margin_mm / slice_mm)`` slices, clipped to ``[0, depth)``.
    """
    found = np.asarray(found, dtype=int)
    if found.size == 0:
        return None
    pad = max(0, int(stride) - 1) + int(math.ceil(float(margin_mm) / float(slice_mm) - 1e-9))
    return max(0, int(found.min()) - pad), min(int(depth), int(found.max()) + pad + 1)


class KidneyRangeCascade:
    """State of the cascade over one case, driven by :class:`scripts.inference.streaming.StreamingSegmenter`.

    Args:
        stride: the first pass runs the network on every ``stride``-th slice (issue 17's option (a): k = 4).
        margin_mm: safety margin added above and below the found range, in mm along the slice axis.
        min_area_mm2: a sampled slice counts as "kidney found" when its kidney + tumour (labels >= 1) cover at
            least this area (mm² at model resolution): specks of a few pixels do not widen the range.
    """

    def __init__(self, stride: int = 4, margin_mm: float = 40.0, min_area_mm2: float = 50.0) -> None:
        check_cascade(True, True, stride, margin_mm)
        self.stride, self.margin_mm, self.min_area_mm2 = int(stride), float(margin_mm), float(min_area_mm2)
        self.summary: dict = {}

    def start(self, depth: int, spacing: Sequence[float], slice_size: Sequence[int]) -> None:
        """Begin a case of ``depth`` slices; ``spacing`` = model-grid voxel size in mm (x, y, slice)."""
        self.depth, self.spacing = int(depth), tuple(float(s) for s in spacing)
        self.first = np.zeros(self.depth, dtype=bool)
        self.first[sampled_slices(self.depth, self.stride)] = True
        self.body = np.zeros(self.depth, dtype=bool)
        self.held = np.zeros((self.depth, 1, *slice_size), dtype=np.float32)

    def first_pass(self, z0: int, z1: int, image: np.ndarray, has_body: np.ndarray) -> np.ndarray:
        """Which slices of block ``z0:z1`` (preprocessed ``image``, (k, 1, H, W)) run now; the rest are held."""
        self.body[z0:z1] = has_body
        now = self.first[z0:z1] & has_body
        later = ~self.first[z0:z1] & has_body
        self.held[z0:z1][later] = image[later]
        return now

    def second_pass(self, model_labels: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(slice indices, images)`` batches still to run, after the first pass's labels are in ``model_labels``
        ((H, W, depth) uint8); fills :attr:`summary` (range, slices skipped) and frees the held images."""
        pixel_mm2 = self.spacing[0] * self.spacing[1]
        sampled = np.flatnonzero(self.first & self.body)
        area = (model_labels[:, :, sampled] > 0).sum(axis=(0, 1)) * pixel_mm2
        found = sampled[area >= self.min_area_mm2]
        span = kidney_slice_range(found, self.depth, self.stride, self.spacing[2], self.margin_mm)
        start, stop = span if span is not None else (0, self.depth)
        todo = np.flatnonzero(~self.first & self.body)
        todo = todo[(todo >= start) & (todo < stop)]
        skipped = int((self.body & ~self.first).sum()) - len(todo)
        model_labels[:, :, :start] = 0  # outside the range is background, sampled slices included
        model_labels[:, :, stop:] = 0
        self.summary = {"found": span is not None, "range": [int(start), int(stop)], "first_pass_slices": len(sampled),
                        "second_pass_slices": len(todo), "skipped_slices": skipped, "stride": self.stride,
                        "margin_mm": self.margin_mm, "slice_mm": self.spacing[2]}
        for b0 in range(0, len(todo), max(1, int(batch_size))):
            index = todo[b0:b0 + batch_size]
            yield index, self.held[index]
        self.held = np.zeros(0, dtype=np.float32)
