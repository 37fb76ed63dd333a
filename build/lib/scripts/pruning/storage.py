"""Saving pruned weights: a dense checkpoint that loads into the same network, and a compressed sparse file.

The sparse file stores each floating-point tensor as a bitmask of its nonzero entries (1 bit per element, packed)
plus the nonzero values in their original dtype; other tensors (e.g. BatchNorm's ``num_batches_tracked``) are kept
dense. The whole is ``torch.save``-d and deflate-compressed in a zip archive, so its size on disk falls with the
sparsity (about ``(1/32 + density)`` of the float32 dense size before compression). "Nonzero" is decided on the bit
pattern, so ``-0.0`` and NaN payloads round-trip exactly. Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import torch

from ..common.atomic import atomic_write

__all__ = ["save_checkpoint", "save_sparse_state_dict", "load_sparse_state_dict"]

_FORMAT = "bundle-sparse-bitmask-v1"
_MEMBER = "sparse_state_dict.pt"
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def save_checkpoint(state_dict: dict, path: str | os.PathLike) -> None:
    """Write ``{"model": state_dict}`` atomically (the layout ``CheckpointLoader`` in the configs reads)."""
    atomic_write(path, lambda tmp: torch.save({"model": state_dict}, tmp))


def _encode(tensor: torch.Tensor) -> dict:
    tensor = tensor.detach().cpu().contiguous()
    if not tensor.is_floating_point() or tensor.element_size() not in _INT_VIEW:
        return {"dense": tensor}
    flat = tensor.reshape(-1)
    nonzero = flat.view(_INT_VIEW[tensor.element_size()]) != 0
    bits = torch.from_numpy(np.packbits(nonzero.numpy()))
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype), "mask": bits, "values": flat[nonzero].clone()}


def _decode(entry: dict) -> torch.Tensor:
    if "dense" in entry:
        return entry["dense"]
    values = entry["values"]
    numel = int(np.prod(entry["shape"])) if entry["shape"] else 1
    nonzero = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=numel).astype(bool))
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[nonzero] = values
    return flat.reshape(entry["shape"])


def save_sparse_state_dict(state_dict: dict, path: str | os.PathLike) -> None:
    """Write ``state_dict`` as bitmask + nonzero values, deflate-compressed (see the module docstring)."""
    buffer = io.BytesIO()
    torch.save({"format": _FORMAT, "tensors": {k: _encode(v) for k, v in state_dict.items()}}, buffer)

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            archive.writestr(_MEMBER, buffer.getvalue())

    atomic_write(path, write)


def load_sparse_state_dict(path: str | os.PathLike) -> dict:
    """Read a file written by ``save_sparse_state_dict`` back into a dense state dict (bit-exact)."""
    from ..common.errors import InputError

    try:
        with zipfile.ZipFile(path) as archive:
            payload = torch.load(io.BytesIO(archive.read(_MEMBER)), weights_only=True)
    except (OSError, KeyError, zipfile.BadZipFile, RuntimeError) as err:
        raise InputError(f"{path}: not a sparse weights file written by the pruning workflow ({err})") from None
    if payload.get("format") != _FORMAT:
        raise InputError(f"{path}: unknown sparse format {payload.get('format')!r}, expected {_FORMAT!r}")
    return {k: _decode(v) for k, v in payload["tensors"].items()}
