"""Trained weights: one check that they exist and one way to load them (``weights_only``, one-line errors)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import InputError

__all__ = ["check_weights_file", "load_weights"]


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


def load_weights(network: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Load ``{"model": state_dict}`` (or a bare state dict) from ``path`` into ``network`` (``weights_only``)."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise InputError(f"{path}: cannot read trained weights ({err})") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise InputError(f"{path}: weights do not fit the configured network_def ({first}); pass the same "
                         "network overlay (e.g. configs/demo.json) that trained them") from None
    return network
