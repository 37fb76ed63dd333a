"""A U-Net of the bundle's family as an ordered list of layers with its skip tensors made explicit.

Paper 002 (``papers/002_55a0f2308920d63a.txt``, Algorithm I steps 2-3) partitions "the layers of the UNet model",
i.e. Keras' ``model.layers``: every convolution (with its activation), pooling, up-convolution and concatenation is
one layer. ``layer_list`` gives the bundle's networks that granularity. Each ``Layer`` names the activations it reads
and the one it writes, so the skip connections are explicit data dependencies and any consecutive slice of the list
knows which tensors must cross its boundaries (``scripts.partitioning.submodel``). The layers hold the network's own
modules (no copies), so a trained checkpoint loaded into the network partitions as it is.

Activation names: the network input is ``"input"``, the final logits ``"logits"``, every other activation is named
after the layer that writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..networks.plain_unet import PlainUNet
from ..networks.separable_unet import SeparableUNet

__all__ = ["Layer", "Concat", "layer_list", "run_layers", "INPUT", "LOGITS"]

INPUT = "input"
LOGITS = "logits"


@dataclass(frozen=True)
class Layer:
    """One layer of a partitionable network.

    Attributes:
        name: unique layer name (``enc0_conv1``, ``pool0``, ``concat3``, ``head``, ...).
        module: the module that computes it, called as ``module(*[activation[n] for n in inputs])``.
        inputs: names of the activations it reads, in call order (a concatenation reads two).
        output: name of the activation it writes.
    """

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    output: str


class Concat(nn.Module):
    """Channel concatenation of two tensors, ``torch.cat([a, b], dim=1)`` (a U-Net skip join, Keras
    ``Concatenate``); no parameters."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


class _Builder:
    """Appends layers, chaining each single-input layer to the previous activation."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.current = INPUT

    def add(self, name: str, module: nn.Module, inputs: tuple[str, ...] | None = None) -> str:
        self.layers.append(Layer(name, module, inputs if inputs is not None else (self.current,), name))
        self.current = name
        return name

    def finish(self) -> list[Layer]:
        last = self.layers[-1]
        self.layers[-1] = Layer(last.name, last.module, last.inputs, LOGITS)
        return self.layers


def _is_identity(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity)


def _level_name(level: int, depth: int) -> str:
    return "bottleneck" if level == depth else f"enc{level}"


def _add_separable_block(b, prefix: str, block: nn.Module) -> None:
    """The layers of one ``SeparableBlock``: two separable convs with their activations, the norm, the dropout."""
    b.add(f"{prefix}_conv1", nn.Sequential(block.conv1, block.act1))
    b.add(f"{prefix}_conv2", nn.Sequential(block.conv2, block.act2))
    b.add(f"{prefix}_norm", block.norm)
    if not _is_identity(block.dropout):
        b.add(f"{prefix}_dropout", block.dropout)


def _separable_layers(network: SeparableUNet) -> list[Layer]:
    """WP-UNet / SD-UNet: per block conv1+act, conv2+act, norm, dropout (if any); per up-path: upsample, conv+act,
    norm (if any), concat ``[skip, up]`` (``SeparableDecoderStage.forward`` order); the head."""
    b = _Builder()
    depth = len(network.encoder.stages) - 1
    skips = []
    for level, stage in enumerate(network.encoder.stages):
        prefix = _level_name(level, depth)
        if not _is_identity(stage.pool):
            b.add(f"pool{level - 1}", stage.pool)
        _add_separable_block(b, prefix, stage.block)
        skips.append(b.current)
    skips.pop()  # the bottleneck output feeds the decoder, it is not a skip
    for i, stage in enumerate(network.decoder.stages):
        level = depth - 1 - i
        up = stage.up
        b.add(f"upsample{level}", up.upsample)
        upped = b.add(f"up{level}_conv", nn.Sequential(up.conv, up.act))
        if not _is_identity(up.norm):
            upped = b.add(f"up{level}_norm", up.norm)
        b.add(f"concat{level}", Concat(), (skips.pop(), upped))
        _add_separable_block(b, f"dec{level}", stage.block)
    head = network.decoder.head
    if isinstance(head, nn.Sequential):  # SD-UNet: separable conv + act, then the 1x1 conv
        b.add("head_conv", nn.Sequential(head[0], head[1]))
        b.add("head", head[2])
    else:
        b.add("head", head)
    return b.finish()


def _plain_layers(network: PlainUNet) -> list[Layer]:
    """Classic U-Net / Pocket U-Net in Keras ``model.layers`` order (paper 002 Table 2): per level conv1+act,
    conv2+act, then pool; per decoder level the transposed conv, concat ``[up, skip]`` (``PlainUNet.forward``
    order), conv1+act, conv2+act; the 1x1 head."""
    b = _Builder()
    depth = len(network.encoder) - 1
    skips = []
    for level, stage in enumerate(network.encoder):
        prefix = _level_name(level, depth)
        if level > 0:
            pool, block = stage[0], stage[1]
            b.add(f"pool{level - 1}", pool)
        else:
            block = stage
        b.add(f"{prefix}_conv1", nn.Sequential(block[0], block[1]))
        b.add(f"{prefix}_conv2", nn.Sequential(block[2], block[3]))
        skips.append(b.current)
    skips.pop()
    for i, (up, block) in enumerate(zip(network.up_convs, network.decoder)):
        level = depth - 1 - i
        upped = b.add(f"up{level}", up)
        b.add(f"concat{level}", Concat(), (upped, skips.pop()))
        b.add(f"dec{level}_conv1", nn.Sequential(block[0], block[1]))
        b.add(f"dec{level}_conv2", nn.Sequential(block[2], block[3]))
    b.add("head", network.head)
    return b.finish()


def layer_list(network: nn.Module) -> list[Layer]:
    """The ordered layers of ``network`` with explicit activation names (see the module docstring).

    Supported: ``SeparableUNet`` and its subclasses ``WPUNet``, ``SDUNet``; ``PlainUNet`` (the classic U-Net of
    paper 002) and ``PocketUNet`` (2D/3D, pocket or full width). Running the layers in order on the activation
    names (``run_layers``) computes exactly the network's ``forward``.

    Raises:
        TypeError: for any other network, or a subclass that overrides ``forward`` (its data flow is unknown).
    """
    for base, build in ((SeparableUNet, _separable_layers), (PlainUNet, _plain_layers)):
        if isinstance(network, base):
            if type(network).forward is not base.forward:
                raise TypeError(
                    f"{type(network).__name__} overrides {base.__name__}.forward, so its layer order and skips are "
                    "unknown; layer_list supports the forward of SeparableUNet (WPUNet, SDUNet) and PlainUNet "
                    "(PocketUNet) only."
                )
            return build(network)
    raise TypeError(
        f"layer_list supports SeparableUNet (WPUNet, SDUNet) and PlainUNet (PocketUNet), got "
        f"{type(network).__name__}."
    )


def run_layers(layers: list[Layer], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``layers`` in order from ``x`` and return every activation by name (``"input"`` included); the
    reference that partitioned runs are checked against."""
    env = {INPUT: x}
    for layer in layers:
        env[layer.output] = layer.module(*(env[name] for name in layer.inputs))
    return env
