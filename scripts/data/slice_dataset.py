"""Training and validation datasets read from the preprocessed slice cache (:mod:`scripts.data.slice_cache`, issue 16).

``CachedSliceDataset`` gives one axial slice per item, drawn as ``RandCropByLabelClassesd`` draws them today from a
whole volume in RAM: a class by ``class_ratios`` (background:kidney:tumour = 1:2:2; classes absent from the case get
ratio 0, as MONAI does), then a slice with probability proportional to that class's voxels in it (the crop centre
is a uniformly drawn voxel of the class). Only the index (a few numbers per slice) stays in memory; each slice is
read from the case's memory-mapped array when drawn and the mapping is dropped again, so RAM does not grow with the
number of cases. ``CachedVolumeDataset`` gives whole validation volumes at model resolution, the arrays today's
validation computes its Dice on. :func:`training_dataset` and :func:`validation_dataset` choose between these and
MONAI's ``CacheDataset`` (no ``cache_dir``), keeping the ``data`` argument that MONAI Label overrides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Randomizable, apply_transform

from .layout import case_name
from .slice_cache import SliceCache, dequantise

__all__ = ["CachedSliceDataset", "CachedVolumeDataset", "training_dataset", "validation_dataset"]

logger = logging.getLogger(__name__)

# above this many cases held in RAM as float32 (~80 MB each for a KiTS case at 256x256) the log suggests --cache_dir
RAM_CASES_WARNING = 100


class _CaseSampler:
    """Per class, the slices of one case holding it and the cumulative voxel counts to draw one by."""

    def __init__(self, entry: Mapping, num_classes: int) -> None:
        depth, _, height, width = entry["shape"]
        foreground = np.zeros(depth, dtype=np.int64)
        self.slices: list[np.ndarray] = [np.arange(depth, dtype=np.int32)]
        self.cumulative: list[np.ndarray] = []
        for c in range(1, num_classes):
            where = np.asarray(entry["class_slices"].get(str(c), []), dtype=np.int32)
            counts = np.asarray(entry["class_voxels"].get(str(c), []), dtype=np.int64)
            foreground[where] += counts
            self.slices.append(where)
            self.cumulative.append(np.cumsum(counts))
        self.cumulative.insert(0, np.cumsum(height * width - foreground))
        self.present = np.array([len(c) > 0 and c[-1] > 0 for c in self.cumulative])

    def draw(self, rng: np.random.RandomState, ratios: np.ndarray) -> tuple[int, int]:
        """``(class, slice)`` drawn with ``ratios`` over the classes present in the case."""
        weights = np.where(self.present, ratios, 0.0)
        if weights.sum() <= 0:
            weights = self.present.astype(np.float64)
        cls = int(np.searchsorted(np.cumsum(weights), rng.random_sample() * weights.sum(), side="right"))
        cls = min(cls, len(weights) - 1)
        cumulative = self.cumulative[cls]
        pick = int(np.searchsorted(cumulative, rng.random_sample() * cumulative[-1], side="right"))
        return cls, int(self.slices[cls][min(pick, len(cumulative) - 1)])


class CachedSliceDataset(Randomizable, torch.utils.data.Dataset):
    """Class-balanced axial slices from the slice cache: ``slices_per_volume`` items per case and epoch.

    Args:
        data: ``{"image", "label"}`` items (the datalist's training fold); each case must be in the cache.
        cache: the :class:`SliceCache`; made up to date for ``data`` first (a no-op when it is).
        class_ratios: draw ratio of each class (background first), as ``RandCropByLabelClassesd``'s ``ratios``.
        slices_per_volume: items per case (``len`` is cases times this; item ``i`` comes from case
            ``i // slices_per_volume``, so a shuffled epoch still draws this many slices from every case).
        transform: applied to each ``{"image": (1, H, W) float32 in [0, 1], "label": (1, H, W) uint8}``
            (the augmentation).
    """

    def __init__(self, data: Sequence[Mapping], cache: SliceCache, class_ratios: Sequence[float],
                 slices_per_volume: int, transform: Callable | None = None) -> None:
        if slices_per_volume < 1:
            raise ValueError(f"slices_per_volume must be >= 1, got {slices_per_volume}")
        index = cache.build(data)
        self.cache, self.transform, self.slices_per_volume = cache, transform, int(slices_per_volume)
        self.cases = [case_name(item["image"]) for item in data]
        num_classes = cache.num_classes
        if len(class_ratios) != num_classes:
            raise ValueError(f"class_ratios has {len(class_ratios)} values for {num_classes} classes")
        self.ratios = np.asarray(class_ratios, dtype=np.float64)
        self.samplers = [_CaseSampler(index["cases"][case], num_classes) for case in self.cases]
        self.last_class = -1

    def __len__(self) -> int:
        return len(self.cases) * self.slices_per_volume

    def randomize(self, data=None) -> None:
        pass  # draws happen in __getitem__ with self.R (seeded per DataLoader worker by MONAI)

    def read_slice(self, case_index: int, z: int) -> dict[str, torch.Tensor]:
        """Slice ``z`` of case ``case_index`` as ``{"image", "label"}`` tensors (one 2*H*W-byte read)."""
        pair = np.array(self.cache.array(self.cases[case_index])[z])  # copy: the mapping is dropped on return
        return {"image": dequantise(pair[0])[None], "label": torch.from_numpy(pair[1:2])}

    def __getitem__(self, index: int):
        case_index = index // self.slices_per_volume
        self.last_class, z = self.samplers[case_index].draw(self.R, self.ratios)
        item = self.read_slice(case_index, z)
        return apply_transform(self.transform, item) if self.transform is not None else item


class CachedVolumeDataset(torch.utils.data.Dataset):
    """Whole cases from the slice cache as ``{"image": (1, H, W, Z) float32, "label": (1, H, W, Z) uint8}``: the
    model-resolution volumes that validation computes its Dice on."""

    def __init__(self, data: Sequence[Mapping], cache: SliceCache, transform: Callable | None = None) -> None:
        cache.build(data)
        self.cache, self.transform = cache, transform
        self.cases = [case_name(item["image"]) for item in data]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int):
        slices = np.array(self.cache.array(self.cases[index]))  # (Z, 2, H, W)
        item = {"image": dequantise(slices[:, 0]).permute(1, 2, 0)[None],
                "label": torch.from_numpy(slices[:, 1]).permute(1, 2, 0)[None]}
        return apply_transform(self.transform, item) if self.transform is not None else item


def _in_ram(data: Sequence, transform: Callable, cache_rate: float, num_workers: int) -> CacheDataset:
    if len(data) * cache_rate > RAM_CASES_WARNING:
        logger.warning("%d cases held in RAM as float32 (about 80 MB each for KiTS at 256x256); for large data "
                       "sets pass --cache_dir DIR (README, 'Bring your own KiTS data')", int(len(data) * cache_rate))
    return CacheDataset(data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers)


def training_dataset(data: Sequence[Mapping], transform: Callable, slice_cache: SliceCache | None = None,
                     slice_transform: Callable | None = None, class_ratios: Sequence[float] = (1, 2, 2),
                     slices_per_volume: int = 8, cache_rate: float = 1.0, num_workers: int = 0):
    """train.json's ``train#dataset``: :class:`CachedSliceDataset` with ``slice_transform`` when ``slice_cache`` is
    enabled (``--cache_dir``), else MONAI's ``CacheDataset`` of whole volumes with ``transform``."""
    if slice_cache is not None and slice_cache.enabled:
        return CachedSliceDataset(data, slice_cache, class_ratios, slices_per_volume, slice_transform)
    return _in_ram(data, transform, cache_rate, num_workers)


def validation_dataset(data: Sequence[Mapping], transform: Callable, slice_cache: SliceCache | None = None,
                       cache_rate: float = 1.0, num_workers: int = 0):
    """train.json's ``validate#dataset``: :class:`CachedVolumeDataset` when ``slice_cache`` is enabled, else
    ``CacheDataset`` with ``transform`` (the deterministic chain)."""
    if slice_cache is not None and slice_cache.enabled:
        return CachedVolumeDataset(data, slice_cache)
    return _in_ram(data, transform, cache_rate, num_workers)
