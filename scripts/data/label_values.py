"""Refuse label files with values outside the configured classes (issue 14), naming the file and the allowed values.

A KiTS label holds 0 (background), 1 (kidney), 2 (tumour) and 3 (cyst). Without this check a stray value (e.g. 7,
from another labelling tool) stopped training deep inside ``ClassesToIndicesd`` with "index 7 is out of bounds"
and no file named, or was silently counted as foreground in validation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..common.errors import InputError

__all__ = ["CheckLabelValuesd"]


class CheckLabelValuesd(MapTransform):
    """Raise :class:`InputError` when a label holds a value not in ``allowed``; place it right after the loader.

    Args:
        keys: label keys to check.
        allowed: the values a label file may hold (train.json: ``label_file_values``, KiTS 0..3).
    """

    def __init__(self, keys: KeysCollection, allowed: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.allowed = [int(v) for v in allowed]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            values = torch.unique(label)
            bad = values[~torch.isin(values, torch.tensor(self.allowed, dtype=values.dtype))]
            if bad.numel():
                name = getattr(d[key], "meta", {}).get("filename_or_obj", key)
                shown = ", ".join(f"{v:g}" for v in bad[:5].tolist()) + (" ..." if bad.numel() > 5 else "")
                raise InputError(f"{name}: label values {shown} are not among the allowed values "
                                 f"{', '.join(map(str, self.allowed))} (KiTS: 0 background, 1 kidney, 2 tumour, 3 cyst);"
                                 " fix or remove this case")
        return d
