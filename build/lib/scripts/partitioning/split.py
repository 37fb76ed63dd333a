"""Partition a network of the family: per-layer complexity, Algorithm I, sub-models and their boundary table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..networks.complexity import count_macs, count_parameters
from .algorithm import partition_points
from .layers import INPUT, Layer, layer_list
from .submodel import SubModel, split_layers

__all__ = ["MEASURES", "run_eval", "layer_shapes", "layer_complexities", "split_network", "boundary_table"]

MEASURES = ("macs", "params")
_FP32_BYTES = 4


def _device(module: nn.Module, fallback: torch.device) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else fallback


def run_eval(
    layers: Sequence[Layer],
    example_shape: Sequence[int],
    before_layer: Callable[[Layer], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``layers`` once on a zero input of ``example_shape`` in eval mode, without gradients, each layer on its own
    device (its inputs are moved there), and return every activation by name; ``before_layer(layer)`` is called
    before each layer runs. Every module's train/eval flag is restored afterwards."""
    modules = nn.ModuleList(layer.module for layer in layers)
    env = {INPUT: torch.zeros(*example_shape, device=_device(modules, torch.device("cpu")))}
    with _modes_kept(modules), torch.no_grad():
        modules.eval()
        for layer in layers:
            if before_layer is not None:
                before_layer(layer)
            device = _device(layer.module, env[layer.inputs[0]].device)
            env[layer.output] = layer.module(*(env[name].to(device) for name in layer.inputs))
    return env


@contextmanager
def _modes_kept(modules: nn.Module):
    """Restore every module's own train/eval flag on exit: ``.train(mode)`` on a container (``count_macs`` does it on
    the layer wrappers) would overwrite its children's flags, which belong to the network."""
    modes = {module: module.training for module in modules.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def layer_shapes(layers: Sequence[Layer], example_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Shape of every activation (``"input"`` included) for a zero input of ``example_shape``, in eval mode."""
    return {name: tuple(t.shape) for name, t in run_eval(layers, example_shape).items()}


def layer_complexities(layers: Sequence[Layer], measure: str, example_shape: Sequence[int]) -> list[int]:
    """Per-layer complexity: trainable parameters (``"params"``) or convolution MACs for one input of
    ``example_shape`` (``"macs"``, the convention of ``scripts.networks.count_macs``)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got measure={measure!r}.")
    if measure == "params":
        return [count_parameters(layer.module)["trainable"] for layer in layers]
    return _layer_macs(layers, layer_shapes(layers, example_shape))


def _layer_macs(layers: Sequence[Layer], shapes: dict[str, tuple[int, ...]]) -> list[int]:
    """MACs of each layer, given the activation shapes; a multi-input layer (concatenation) must have no conv."""
    macs = []
    with _modes_kept(nn.ModuleList(layer.module for layer in layers)):
        for layer in layers:
            if len(layer.inputs) == 1:
                macs.append(count_macs(layer.module, shapes[layer.inputs[0]]))
            elif any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in layer.module.modules()):
                raise ValueError(f"layer {layer.name!r} reads several inputs and has convolutions: MACs not supported.")
            else:
                macs.append(0)
    return macs


def _check_example_shape(network: nn.Module, example_shape: Sequence[int]) -> None:
    spatial_dims = getattr(network, "spatial_dims", None) or getattr(getattr(network, "encoder", None),
                                                                     "spatial_dims", None)
    if spatial_dims is not None and len(example_shape) != spatial_dims + 2:
        raise ValueError(
            f"example_shape must be (batch, channels, *spatial) with {spatial_dims} spatial dimensions for "
            f"{type(network).__name__}, got example_shape={tuple(example_shape)}."
        )


def split_network(
    network: nn.Module,
    num_partitions: int,
    measure: str = "macs",
    example_shape: Sequence[int] = (1, 1, 256, 256),
) -> list[SubModel]:
    """UNet-P (paper 002 Algorithm I): split ``network`` into at most ``num_partitions`` consecutive sub-models of
    about equal complexity.

    Args:
        network: a network ``layer_list`` supports; its modules are shared with the sub-models (no copies).
        num_partitions: Algorithm I's ``max_partitions``, between 1 and ``len(layer_list(network))``.
        measure: ``"macs"`` (convolution MACs for one input of ``example_shape``) or ``"params"``.
        example_shape: input shape used to count MACs (also checked against the network's dimensionality).

    Returns:
        the sub-models; ``run_chain(submodels, x)`` equals ``network(x)`` in eval mode.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got measure={measure!r}.")
    layers = layer_list(network)
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int) or not 1 <= num_partitions <= len(layers):
        raise ValueError(
            f"num_partitions must be an integer between 1 and the number of layers of {type(network).__name__} "
            f"({len(layers)}), got num_partitions={num_partitions!r}."
        )
    _check_example_shape(network, example_shape)
    complexities = layer_complexities(layers, measure, example_shape)
    submodels = split_layers(layers, partition_points(complexities, num_partitions))
    for sub in submodels:
        sub.train(network.training)
    return submodels


def boundary_table(submodels: Sequence[SubModel], example_shape: Sequence[int] = (1, 1, 256, 256)) -> list[dict]:
    """Per sub-model: complexity and the activations crossing its output boundary for one input of
    ``example_shape``.

    Returns one dict per sub-model with ``index`` (from 0), ``first_layer``, ``last_layer``, ``num_layers``,
    ``params`` (trainable), ``macs``, ``cumulative_params_share`` and ``cumulative_macs_share`` (fraction of the whole
    network up to and including this sub-model), ``boundary`` (names it returns), ``boundary_shapes``,
    ``boundary_bytes`` (fp32 bytes of all of them together).
    """
    layers = [layer for sub in submodels for layer in sub.sub_layers]
    shapes = layer_shapes(layers, example_shape)
    params = [count_parameters(sub)["trainable"] for sub in submodels]
    per_layer_macs = dict(zip((layer.name for layer in layers), _layer_macs(layers, shapes)))
    macs = [sum(per_layer_macs[name] for name in sub.layer_names) for sub in submodels]
    total_params, total_macs = max(sum(params), 1), max(sum(macs), 1)
    rows, cum_params, cum_macs = [], 0, 0
    for index, sub in enumerate(submodels):
        cum_params += params[index]
        cum_macs += macs[index]
        boundary_shapes = [list(shapes[name]) for name in sub.output_names]
        rows.append({
            "index": index,
            "first_layer": sub.layer_names[0],
            "last_layer": sub.layer_names[-1],
            "num_layers": len(sub.layer_names),
            "params": params[index],
            "macs": macs[index],
            "cumulative_params_share": cum_params / total_params,
            "cumulative_macs_share": cum_macs / total_macs,
            "boundary": list(sub.output_names),
            "boundary_shapes": boundary_shapes,
            "boundary_bytes": sum(_FP32_BYTES * _numel(shape) for shape in boundary_shapes),
        })
    return rows


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n

