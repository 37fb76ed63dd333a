"""UNet-P / UNet-PWP (paper 002): a U-Net of the family as a layer list with explicit skips, Algorithm I's
complexity-balanced partitioning into sub-models, their chained execution and boundary table, the std-rule
pruning of each sub-model (UNet-PWP, Algorithm II) and paper 002 Table 2 as a prefix table."""

from .algorithm import partition_points
from .layers import Concat, Layer, layer_list, run_layers
from .prefix_table import TABLE2_PREFIX_ENDS, paper_style_flops, prefix_table
from .pwp import prune_submodels
from .split import MEASURES, boundary_table, layer_complexities, layer_shapes, split_network
from .submodel import SubModel, live_activations, run_chain, split_layers

__all__ = [
    "Concat",
    "Layer",
    "MEASURES",
    "SubModel",
    "TABLE2_PREFIX_ENDS",
    "boundary_table",
    "layer_complexities",
    "layer_list",
    "layer_shapes",
    "live_activations",
    "paper_style_flops",
    "partition_points",
    "prefix_table",
    "prune_submodels",
    "run_chain",
    "run_layers",
    "split_layers",
    "split_network",
]
