"""Trained weights: one check that they exist and one way to load them (``weights_only``, one-line errors).

:func:`torch_load_checked` is the bundle's one ``torch.load``: ``weights_only=True`` and every failure as one
:class:`InputError` line naming the file. A file that holds Python objects (a pickle that would call
``os.system`` when unpickled, say) is refused as such, without torch's advice to retry with ``weights_only=False``.
:func:`load_weights` also refuses NaN/Inf weights (issue 14: a diverged model ran with exit 0 and wrote an empty
segmentation and "0.0 mL").
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # torch is imported where weights are read: checking that a file exists needs none
    import torch
    from torch import nn

__all__ = ["check_weights_file", "torch_load_checked", "check_finite", "read_weights", "load_weights"]


def check_weights_file(path: str | os.PathLike) -> str:
    """Stop with one line saying how to get weights when ``path`` (e.g. ``models/model.pt``) is missing."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(
            f"{path}: no trained weights. Train first (python -m monai.bundle run training --config_file "
            "configs/train.json --dataset_dir DIR), run the demo (bash demo.sh), or put a trained model.pt "
            "there (see large_files.yml); pass another file with --model_path"
        )
    return str(path)


def torch_load_checked(source, map_location=None, what: str = "trained weights", name=None):
    """``torch.load(source, weights_only=True)``; an unsafe or unreadable file raises one :class:`InputError` line.

    ``what`` says what the file should hold and ``name`` how to call it in the message (default: ``source``).
    """
    import torch

    name = source if name is None else name
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        detail = f"it would load the Python object {found.group(1)}" if found else "it is not a plain tensor archive"
        raise InputError(f"{name}: refused, not a plain {what} file ({detail}; unpickling it could run code). "
                         "Use a file saved by this bundle (torch.save of a state dict) from a source you "
                         "trust") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(f"{name}: cannot read {what} ({reason}); the file is truncated or not a torch file") from None


def check_finite(tensors: Mapping[str, object], path: str | os.PathLike) -> None:
    """Raise one line naming ``path`` and the first entries when a floating-point tensor holds NaN or Inf."""
    import torch

    bad = [key for key, value in tensors.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise InputError(f"{path}: weights hold NaN or Inf values ({shown}); the training that wrote them diverged. "
                         "Use an earlier model.pt or train again")


def read_weights(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """The state dict of ``{"model": state_dict}`` (or a bare state dict) at ``path``, checked to be finite."""
    checkpoint = torch_load_checked(path, map_location=device)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict of trained weights")
    check_finite(state, path)
    return state


def load_weights(network: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Load ``{"model": state_dict}`` (or a bare state dict) from ``path`` into ``network`` (``weights_only``).

    Refuses unsafe files, weights that do not fit ``network``, and non-finite parameters or buffers (checked in
    the file and again in the network after loading), each with one line naming ``path``.
    """
    state = read_weights(path, device)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise InputError(f"{path}: weights do not fit the configured network_def ({first}); pass the same "
                         "network overlay (e.g. configs/demo.json) that trained them") from None
    check_finite({**dict(network.named_parameters()), **dict(network.named_buffers())}, path)
    return network
