"""UNet-PWP (paper 002, Algorithm II): the UNet-P sub-models, each pruned by the std-threshold rule.

``papers/002_55a0f2308920d63a.txt``, Sect. 3.3, Algorithm II step 10c: for every sub-model, iterate over its trainable
weights, flatten each, zero the entries below ``pruning_ratio x std`` of that tensor and keep the rest. The rule is the
bundle's ``scripts.pruning.StdThresholdPruning`` (``apply_pruning(method="std")``), applied here to one sub-model at a
time. Because the threshold is computed per tensor and every tensor belongs to exactly one sub-model, the result is
the same as std-pruning the whole network (a test checks it): partitioning changes where the sub-models run, not
which weights survive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..pruning import apply_pruning, make_permanent, sparsity_report

__all__ = ["prune_submodels"]


def prune_submodels(
    submodels: Sequence[nn.Module],
    std_ratio: float,
    scope: str = "kernels",
    permanent: bool = True,
) -> list[dict]:
    """Apply the std rule ``|w| < std_ratio * std(w)`` -> 0 to each sub-model's tensors, in place.

    The sub-models share their modules with the network they were split from, so that network is pruned too.

    Args:
        submodels: ``SubModel`` objects (``split_network``); a parameter-free one is skipped.
        std_ratio: threshold in units of each tensor's (population) standard deviation, >= 0 (``configs/prune.json``
            uses 0.67, about half of a Gaussian tensor; the paper gives no value).
        scope: ``"kernels"`` (conv / linear weights, the bundle's pruning default) or ``"all_trainable"`` (also
            biases and norm affine parameters: the paper's literal "trainable weights").
        permanent: fold the masks into the weights (``scripts.pruning.make_permanent``), as the paper's "update the
            weights of the sub-model with the pruned weights"; needed before ``torch.jit.script``. With False the
            ``torch.nn.utils.prune`` masks stay attached (for fine-tuning with fixed masks).

    Returns:
        one ``scripts.pruning.sparsity_report`` per sub-model (``total_params``, ``nonzero_params``, ``sparsity``,
        ``layers``), with ``index`` added; ``{"index": i, "total_params": 0, ...}`` for a parameter-free one.
    """
    reports = []
    for index, sub in enumerate(submodels):
        if next(sub.parameters(), None) is None:
            reports.append({"index": index, "total_params": 0, "nonzero_params": 0, "sparsity": 0.0, "layers": []})
            continue
        apply_pruning(sub, method="std", scope=scope, std_ratio=std_ratio)
        if permanent:
            make_permanent(sub)
        reports.append({"index": index, **sparsity_report(sub)})
    return reports
