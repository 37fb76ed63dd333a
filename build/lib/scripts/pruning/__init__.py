"""Post-training pruning: unstructured masks (WP-UNet magnitude, UNet-PWP std rule), sparse storage, channel pruning,
and the ``run pruning`` workflow driver (``configs/prune.json``).

May import ``scripts.common``, ``scripts.data`` and ``scripts.networks``.
"""

from .storage import load_sparse_state_dict, save_checkpoint, save_sparse_state_dict
from .structured import kept_channels, load_structured, output_layers, prune_channels, pruning_roots, root_ratios, shrink_to_state_dict
from .workflow import check_pruning_flags, evaluate_dice, format_report_table, run_pruning, run_structured_pruning
from .unstructured import (
    METHODS,
    SCOPES,
    StdThresholdPruning,
    apply_pruning,
    is_pruned,
    make_permanent,
    pruning_targets,
    sparsity_report,
)

__all__ = [
    "METHODS",
    "SCOPES",
    "StdThresholdPruning",
    "apply_pruning",
    "check_pruning_flags",
    "evaluate_dice",
    "format_report_table",
    "is_pruned",
    "kept_channels",
    "load_sparse_state_dict",
    "load_structured",
    "output_layers",
    "prune_channels",
    "pruning_roots",
    "root_ratios",
    "make_permanent",
    "pruning_targets",
    "run_pruning",
    "run_structured_pruning",
    "save_checkpoint",
    "save_sparse_state_dict",
    "shrink_to_state_dict",
    "sparsity_report",
]
