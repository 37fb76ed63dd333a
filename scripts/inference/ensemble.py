"""The k-fold ensemble (issue 16): one module that averages the softmax of the networks trained on each fold.

nnU-Net predicts with the five networks of its 5-fold cross-validation and averages their softmax outputs. Here the
fold networks (``model_fold*.pt``, written by ``python -m scripts.training.folds``) are copies of ``network_def``
with each fold's weights, wrapped in :class:`FoldEnsemble`, which every path takes like a single network: the
streaming segmenter and MONAI's evaluator take the argmax of its output, and a softmax of it gives back exactly the
averaged probabilities, because it returns their logarithm. ``configs/ensemble.json`` (inference) and
``configs/ensemble_evaluate.json`` (evaluation) switch it on. Cost: K networks per slice, so the network time is K
times a single model's (``docs/performance.md``, issue 16).
"""

from __future__ import annotations

import copy
import glob
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..common.errors import InputError
from ..common.weights import check_weights_file, load_weights
from .streaming import StreamingSegmenter

__all__ = ["FoldEnsemble", "fold_model_files", "fold_ensemble", "preloaded_segmenter"]


class FoldEnsemble(nn.Module):
    """Mean of the members' softmax over the class axis (dim 1), returned as its logarithm (log-probabilities).

    Args:
        members: the fold networks, each mapping ``(B, C_in, *spatial)`` to ``(B, num_classes, *spatial)`` logits.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("FoldEnsemble needs at least one member network")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, ...)`` -> ``(B, num_classes, ...)`` log of the mean softmax (argmax = ensemble label)."""
        mean = torch.softmax(self.members[0](x).float(), dim=1)
        for member in self.members[1:]:
            mean = mean + torch.softmax(member(x).float(), dim=1)
        mean = mean / len(self.members)
        return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))


def fold_model_files(models: str | Sequence[str]) -> list[str]:
    """The fold weights: a glob pattern (``models/model_fold*.pt``) or a list of files; each must exist."""
    if isinstance(models, (str, os.PathLike)):
        files = sorted(glob.glob(str(models)))
        if not files:
            raise InputError(f"{models}: no fold weights match; train them with python -m scripts.training.folds "
                             "(README, 'k-fold training and the ensemble') or pass --ensemble_models")
    else:
        files = [str(f) for f in models]
        if not files:
            raise InputError("--ensemble_models: empty list of fold weights")
    for path in files:
        check_weights_file(path)
    return files


def fold_ensemble(network_def: nn.Module, models: str | Sequence[str], device: torch.device | str = "cpu") -> FoldEnsemble:
    """A :class:`FoldEnsemble` of copies of ``network_def``, each with the weights of one of ``models``, eval mode."""
    members = [load_weights(copy.deepcopy(network_def), path, device) for path in fold_model_files(models)]
    return FoldEnsemble(members).to(device).eval()


def preloaded_segmenter(network: nn.Module, model_path: str | Path | None = None, device: torch.device | str = "cpu",
                        *, streaming: bool = True, backend: str = "torch", **options) -> StreamingSegmenter | None:
    """``build_segmenter`` for a network whose weights are already loaded (the ensemble): ``model_path`` unused."""
    if not streaming:
        return None
    if backend != "torch":
        raise InputError(f"--backend {backend}: the fold ensemble runs with the torch backend only")
    return StreamingSegmenter(network, device, **options)
