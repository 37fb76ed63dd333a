"""UNet-P / UNet-PWP (paper 002): a U-Net of the family as a layer list with explicit skips, Algorithm I's
complexity-balanced partitioning into sub-models, their chained execution and boundary table."""

from .algorithm import partition_points
from .layers import Concat, Layer, layer_list, run_layers
from .split import MEASURES, boundary_table, layer_complexities, layer_shapes, split_network
from .submodel import SubModel, live_activations, run_chain, split_layers

__all__ = [
    "Concat",
    "Layer",
    "MEASURES",
    "SubModel",
    "boundary_table",
    "layer_complexities",
    "layer_list",
    "layer_shapes",
    "live_activations",
    "partition_points",
    "run_chain",
    "run_layers",
    "split_layers",
    "split_network",
]
