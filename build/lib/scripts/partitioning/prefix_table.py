"""Paper 002's Table 2 ("UNet Sub Models Parameters and Complexity") as what it is: a table of nested *prefix*
models of the classic U-Net, not the output of Algorithm I.

Each of its 17 rows is the model from the network input to one layer (Keras ``Model(unet.input,
unet.layers[k].output)``): cumulative parameters, and "FLOPs" by a per-layer formula that ignores the kernel size,
``2 * C_in * C_out * H_in * W_in`` for every convolution and transposed convolution (at its input resolution),
0 for pooling and concatenation. With the classic 31,030,723-parameter U-Net (``PlainUNet``) at 1x1x256x256 and the
layer ends below, every row matches the paper (parameters to the 6 printed digits, FLOPs exactly); see
``shared/reference/architectures.md`` (Target 2) and ``docs/partitioning.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..networks.complexity import count_parameters
from .layers import Layer, layer_list
from .split import layer_complexities, run_eval

__all__ = ["TABLE2_PREFIX_ENDS", "paper_style_flops", "prefix_table"]

# The layer each Table 2 row ends at (``layer_list(PlainUNet())`` names). Row 1 may equally end at enc3_conv2: the
# pooling after it adds nothing. The paper gives no reason for this choice of ends.
TABLE2_PREFIX_ENDS = (
    "pool3", "bottleneck_conv1", "dec3_conv1", "dec3_conv2", "up2", "concat2", "dec2_conv1", "dec2_conv2", "up1",
    "concat1", "dec1_conv1", "dec1_conv2", "up0", "concat0", "dec0_conv1", "dec0_conv2", "head",
)


def paper_style_flops(layers: Sequence[Layer], example_shape: Sequence[int] = (1, 1, 256, 256)) -> list[int]:
    """Per layer, paper 002 Table 2's FLOP formula: sum over its (transposed) convolutions of
    ``2 * C_in * C_out / groups * prod(input spatial size)`` (kernel size ignored; batch multiplies)."""
    flops: dict[str, int] = {}
    current = [""]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        flops[current[0]] += 2 * module.in_channels * module.out_channels // module.groups * x[0, 0].numel() * x.shape[0]

    def start(layer: Layer) -> None:
        current[0] = layer.name
        flops[layer.name] = 0

    handles = [m.register_forward_hook(hook) for layer in layers for m in layer.module.modules()
               if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        run_eval(layers, example_shape, before_layer=start)
    finally:
        for handle in handles:
            handle.remove()
    return [flops[layer.name] for layer in layers]


def prefix_table(
    network: nn.Module,
    ends: Sequence[str] = TABLE2_PREFIX_ENDS,
    example_shape: Sequence[int] = (1, 1, 256, 256),
) -> list[dict]:
    """One row per prefix model ``input -> ends[i]``: ``sub_model`` (1-based), ``end_layer``, ``keras_index``
    (position in Keras ``model.layers``, where 0 is the input layer), cumulative ``params`` (trainable),
    ``paper_flops`` (``paper_style_flops``) and ``macs`` (true convolution MACs, ``scripts.networks.count_macs``
    convention)."""
    layers = layer_list(network)
    names = [layer.name for layer in layers]
    unknown = [end for end in ends if end not in names]
    if unknown:
        raise ValueError(f"prefix ends {unknown} are not layers of {type(network).__name__}; its layers: {names}.")
    params = [count_parameters(layer.module)["trainable"] for layer in layers]
    flops = paper_style_flops(layers, example_shape)
    macs = layer_complexities(layers, "macs", example_shape)
    rows = []
    for row, end in enumerate(ends, start=1):
        k = names.index(end) + 1
        rows.append({"sub_model": row, "end_layer": end, "keras_index": k, "params": sum(params[:k]),
                     "paper_flops": sum(flops[:k]), "macs": sum(macs[:k])})
    return rows
