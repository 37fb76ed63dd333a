"""Unstructured (weight) pruning with ``torch.nn.utils.prune``: the WP-UNet magnitude rule and the UNet-PWP std rule.

- ``magnitude`` (WP-UNet, ``papers/000_50dac675aca84b7d.txt`` Sect. 3.3 and ``papers/001_8d0b8a849be3784f.txt``
  "Proposed Methods"): zero the fraction ``sparsity`` of smallest-magnitude weights, either over all selected tensors
  together (``global``, ``prune.global_unstructured``) or tensor by tensor (``prune.l1_unstructured``).
- ``std`` (UNet-PWP, ``papers/002_*.txt`` Algorithm II step 10c): per tensor, zero every weight with
  ``|w| < ratio * std(w)`` (``StdThresholdPruning``, a ``prune.BasePruningMethod``).

Which tensors (``scope``), generic over any ``nn.Module`` (WP-UNet, MONAI ``BasicUNet``/``UNet``, ...):

- ``kernels``: the ``weight`` of every convolution and transposed convolution (``torch.nn.modules.conv._ConvNd``,
  which includes depthwise and pointwise convs) and of every ``nn.Linear``. Biases and normalisation affine
  parameters are left dense.
- ``all_trainable``: every trainable parameter of every module - kernels, biases and norm affine (gamma/beta). This
  is the scope that reproduces the paper's WP-UNet count (half of every trainable tensor:
  ``shared/reference/architectures.md`` "Target 1").

While pruned, each tensor is re-parametrised as ``weight = weight_orig * weight_mask`` (a forward pre-hook), so
optimiser steps during fine-tuning cannot revive pruned weights; ``make_permanent`` folds the masks in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.utils import prune

__all__ = [
    "METHODS",
    "SCOPES",
    "StdThresholdPruning",
    "pruning_targets",
    "apply_pruning",
    "make_permanent",
    "is_pruned",
    "sparsity_report",
]

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "std")
SCOPES = ("kernels", "all_trainable")
_KERNEL_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class StdThresholdPruning(prune.BasePruningMethod):
    """UNet-PWP rule: zero the entries with ``|w| < ratio * std(w)`` of one tensor (paper 002, Algorithm II, 10c).

    The standard deviation is that of the whole flattened tensor (population std, as numpy's default in the
    paper's Keras code base would give). Entries already masked stay masked.

    Args:
        ratio: threshold in units of the tensor's standard deviation (>= 0).
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, ratio: float) -> None:
        if ratio < 0:
            raise ValueError(f"the std-rule ratio must be >= 0, got ratio={ratio}.")
        self.ratio = float(ratio)

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        threshold = self.ratio * t.detach().float().std(unbiased=False) if t.numel() > 1 else 0.0
        return default_mask * (t.detach().abs() >= threshold).to(default_mask.dtype)


def pruning_targets(network: nn.Module, scope: str = "kernels") -> list[tuple[nn.Module, str]]:
    """The ``(module, parameter name)`` pairs that ``scope`` selects (see the module docstring), in module order."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got scope={scope!r}.")
    targets = []
    for module in network.modules():
        for name, param in module.named_parameters(recurse=False):
            name = name[: -len("_orig")] if name.endswith("_orig") else name
            if not param.requires_grad:
                continue
            if scope == "all_trainable" or (isinstance(module, _KERNEL_TYPES) and name == "weight"):
                targets.append((module, name))
    if not targets:
        raise ValueError(f"{type(network).__name__} has no parameters in pruning scope {scope!r}.")
    return targets


def apply_pruning(
    network: nn.Module,
    method: str = "magnitude",
    sparsity: float = 0.5,
    scope: str = "kernels",
    global_pruning: bool = True,
    std_ratio: float = 1.0,
) -> list[tuple[nn.Module, str]]:
    """Attach pruning masks to ``network`` in place and return the pruned ``(module, name)`` pairs.

    Args:
        network: any ``nn.Module``.
        method: ``"magnitude"`` (WP-UNet) or ``"std"`` (UNet-PWP, per tensor; ``sparsity`` and ``global_pruning``
            are then unused).
        sparsity: fraction in [0, 1) of the selected weights to zero (magnitude rule). Default 0.5 (paper 000).
        scope: ``"kernels"`` or ``"all_trainable"``.
        global_pruning: one magnitude threshold over all selected tensors (True) or the same fraction per tensor.
        std_ratio: threshold ``ratio`` of the std rule.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must satisfy 0 <= sparsity < 1, got sparsity={sparsity}.")
    targets = pruning_targets(network, scope)
    if method == "std":
        for module, name in targets:
            StdThresholdPruning.apply(module, name, ratio=std_ratio)
    elif global_pruning:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=sparsity)
    return targets


def _pruned_names(module: nn.Module) -> list[str]:
    """Names of the tensors of ``module`` (not its children) that carry a pruning re-parametrisation."""
    names = []
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):  # includes PruningContainer (a tensor pruned twice)
            names.append(hook._tensor_name)
    return names


def is_pruned(network: nn.Module) -> bool:
    """True while any module of ``network`` carries a ``torch.nn.utils.prune`` re-parametrisation."""
    return any(_pruned_names(m) for m in network.modules())


def make_permanent(network: nn.Module) -> int:
    """Fold every pruning mask into its tensor (``prune.remove``); return how many tensors were folded.

    Pruned entries become exact zeros; negative zeros (``-w * 0``) are written as +0.0 so the stored file holds
    one bit pattern for "pruned".
    """
    count = 0
    for module in network.modules():
        for name in sorted(set(_pruned_names(module))):
            prune.remove(module, name)
            with torch.no_grad():
                param = getattr(module, name)
                param.masked_fill_(param == 0, 0.0)
            count += 1
    return count


def _effective_params(network: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """Named trainable tensors as the forward pass sees them (masked while pruned)."""
    for module_name, module in network.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name.endswith("_orig"):
                name = name[: -len("_orig")]
                param = getattr(module, name)
            yield (f"{module_name}.{name}" if module_name else name), param.detach()


def sparsity_report(network: nn.Module) -> dict:
    """Parameter counts of ``network`` (pruned or not): totals and one entry per trainable tensor.

    Returns ``{"total_params", "nonzero_params", "sparsity", "layers": [{"name", "shape", "params", "nonzero",
    "sparsity"}]}``; ``total_params`` counts trainable elements (BatchNorm running statistics excluded).
    """
    layers = []
    for name, tensor in _effective_params(network):
        nonzero = int(torch.count_nonzero(tensor))
        layers.append({"name": name, "shape": list(tensor.shape), "params": tensor.numel(), "nonzero": nonzero,
                       "sparsity": round(1.0 - nonzero / max(tensor.numel(), 1), 6)})
    total = sum(layer["params"] for layer in layers)
    nonzero = sum(layer["nonzero"] for layer in layers)
    return {"total_params": total, "nonzero_params": nonzero, "sparsity": round(1.0 - nonzero / max(total, 1), 6),
            "layers": layers}
