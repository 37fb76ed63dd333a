"""UNet-P / UNet-PWP (paper 002): a U-Net of the family as a layer list with explicit skips, Algorithm I's
complexity-balanced partitioning into sub-models, their chained execution and boundary table, the std-rule
pruning of each sub-model (UNet-PWP, Algorithm II) and paper 002 Table 2 as a prefix table; running the sub-models
as TorchScript files in one process across devices or as a torch.distributed pipeline of processes (``runtime``).

May import ``scripts.common``, ``scripts.data``, ``scripts.networks`` and ``scripts.pruning``.
"""

from .algorithm import partition_points
from .layers import Concat, Layer, layer_list, run_layers
from .prefix_table import TABLE2_PREFIX_ENDS, paper_style_flops, prefix_table
from .pwp import prune_submodels
from .split import MEASURES, boundary_table, layer_complexities, layer_shapes, split_network
from .submodel import SubModel, live_activations, run_chain, split_layers
from .p2p import PipelineDriver, StageServer
from .placement import ChainedPartitions, place_submodels, resolve_devices
from .runtime import (check_torch_backend, default_num_partitions, destroy_pipeline_group, ensure_partitions,
                      init_pipeline_group, partitioned_network, pipeline_rank, pipeline_world_size,
                      rank_zero_inputs, run_pipeline_role, stage_device)
from .torchscript_io import export_partitions, load_partition, partition_path, read_partition_meta

__all__ = [
    "ChainedPartitions",
    "Concat",
    "Layer",
    "MEASURES",
    "PipelineDriver",
    "StageServer",
    "SubModel",
    "TABLE2_PREFIX_ENDS",
    "boundary_table",
    "check_torch_backend",
    "default_num_partitions",
    "destroy_pipeline_group",
    "ensure_partitions",
    "export_partitions",
    "init_pipeline_group",
    "layer_complexities",
    "layer_list",
    "layer_shapes",
    "live_activations",
    "load_partition",
    "paper_style_flops",
    "partition_path",
    "partition_points",
    "partitioned_network",
    "pipeline_rank",
    "pipeline_world_size",
    "rank_zero_inputs",
    "place_submodels",
    "prefix_table",
    "prune_submodels",
    "read_partition_meta",
    "resolve_devices",
    "run_chain",
    "run_layers",
    "run_pipeline_role",
    "split_layers",
    "split_network",
    "stage_device",
]
