"""KiTS hierarchical evaluation regions (HECs): label values -> one binary mask per region.

KiTS evaluates *hierarchical evaluation regions* (HECs), unions of labels, rather than single labels, because a
kidney label alone is not comparable across editions (KiTS19 folds cysts into the kidney, KiTS21/23 label them 3).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

__all__ = ["region_definitions", "region_mask", "labels_to_regions", "LabelToRegionsd"]


def region_definitions(keep_cyst: bool) -> dict[str, tuple[int, ...]]:
    """
    The KiTS hierarchical evaluation regions (HECs) for one of the two labellings.

    Args:
        keep_cyst: ``False`` for the KiTS19 labelling (0 background, 1 kidney, 2 tumour; cysts are part of the
            kidney): regions ``kidney`` = {1, 2} and ``tumour`` = {2}. ``True`` for the KiTS21/23 labelling with
            3 = cyst: regions ``kidney_and_masses`` = {1, 2, 3}, ``masses`` = {2, 3} and ``tumour`` = {2}.

    Returns:
        a new dict, region name -> label values whose union forms the region, in reporting order.
    """
    if keep_cyst:
        return {"kidney_and_masses": (1, 2, 3), "masses": (2, 3), "tumour": (2,)}
    return {"kidney": (1, 2), "tumour": (2,)}


def region_mask(label: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """Boolean mask of the voxels whose label is one of ``values`` (floating label maps are rounded first)."""
    if label.is_floating_point():
        label = torch.round(label)
    mask = label == int(values[0])
    for v in values[1:]:
        mask = mask | (label == int(v))
    return mask


def labels_to_regions(
    label: NdarrayOrTensor,
    regions: Mapping[str, Sequence[int]],
    channel_dim: int = 0,
    dtype: torch.dtype = torch.bool,
) -> torch.Tensor:
    """
    Replace the single channel of a label map with one binary channel per region.

    Args:
        label: integer label map with a channel axis of size 1 at ``channel_dim``: a channel-first item
            ``(1, H, W[, D])`` (``channel_dim=0``) or a batch ``(B, 1, H, W[, D])`` (``channel_dim=1``).
        regions: region name -> label values, e.g. :func:`region_definitions`; channel order follows its order.
        channel_dim: index of the size-1 channel axis.
        dtype: output dtype; ``torch.bool`` by default (one byte per voxel, accepted by MONAI's metrics).

    Returns:
        ``(R, H, W[, D])`` or ``(B, R, H, W[, D])`` with R = ``len(regions)``. A MetaTensor input gives a
        MetaTensor with the same metadata.

    Raises:
        ValueError: when ``regions`` is empty or the axis at ``channel_dim`` does not have size 1.
    """
    if len(regions) == 0:
        raise ValueError("regions must define at least one region.")
    label_t = label if isinstance(label, torch.Tensor) else convert_to_tensor(label)
    if label_t.ndim <= channel_dim or label_t.shape[channel_dim] != 1:
        raise ValueError(
            f"label must have a channel axis of size 1 at dim {channel_dim}, got shape {tuple(label_t.shape)}."
        )
    masks = [region_mask(label_t, values).to(dtype) for values in regions.values()]
    return torch.cat(masks, dim=channel_dim)


class LabelToRegionsd(MapTransform):
    """
    Dictionary transform: channel-first KiTS label maps ``(1, H, W[, D])`` -> one binary channel per HEC region.

    Args:
        keys: keys of the label maps to convert.
        keep_cyst: choose the labelling, see :func:`region_definitions`.
        regions: explicit region name -> label values; overrides ``keep_cyst`` when given.
        dtype: output dtype, ``torch.bool`` by default.
        allow_missing_keys: don't raise when a key is missing.

    Example::

        LabelToRegionsd(keys="label", keep_cyst=True)({"label": seg})["label"].shape  # (3, H, W, D)
    """

    def __init__(
        self,
        keys: KeysCollection,
        keep_cyst: bool = False,
        regions: Mapping[str, Sequence[int]] | None = None,
        dtype: torch.dtype = torch.bool,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.regions = dict(regions) if regions is not None else region_definitions(keep_cyst)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = labels_to_regions(d[key], self.regions, channel_dim=0, dtype=self.dtype)
        return d
