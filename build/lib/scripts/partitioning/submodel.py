"""Sub-models of a partitioned layer list: each takes and returns exactly the activations that cross its boundaries.

A consecutive slice ``layers[a:b]`` of a U-Net is a stand-alone stage only if it receives every *live* tensor at its
start - the current activation plus the encoder skips produced before ``a`` and read at or after ``a`` - and hands on
every tensor live at its end (``shared/reference/architectures.md``, "How to partition a U-Net layer list with
skips"). ``live_activations`` computes those sets; ``SubModel`` runs a slice as a ``torch.fx`` graph of the layers'
own modules, which gives it a fixed positional signature that ``torch.jit.trace`` and ``torch.jit.script`` both
compile (one TorchScript file per sub-model).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .layers import INPUT, LOGITS, Layer

__all__ = ["SubModel", "live_activations", "split_layers", "run_chain"]


def live_activations(layers: Sequence[Layer], boundary: int) -> list[str]:
    """Names of the activations crossing the boundary before ``layers[boundary]`` (``0 <= boundary <= len``).

    Live = produced before the boundary (the network input counts as produced before layer 0) and read by a layer at
    or after it; after the last layer only the final output is live. Order: the current tensor (output of
    ``layers[boundary - 1]``, or ``"input"``) first, then the others in the order they were produced.
    """
    if not 0 <= boundary <= len(layers):
        raise ValueError(f"boundary must be in [0, {len(layers)}], got boundary={boundary}.")
    if boundary == len(layers):
        return [layers[-1].output]
    produced = [INPUT] + [layer.output for layer in layers[:boundary]]
    read_later = {name for layer in layers[boundary:] for name in layer.inputs}
    live = [name for name in produced if name in read_later]
    current = produced[-1]
    if current in live:
        live.remove(current)
        live.insert(0, current)
    return live


class SubModel(fx.GraphModule):
    """A consecutive slice of a layer list as a module: ``forward(*tensors) -> tuple[Tensor, ...]``.

    Built as a ``torch.fx`` graph whose nodes call the layers' own modules (same parameters, no copies, stored under
    ``layers.<layer name>``); ``print(sub.code)`` shows the generated forward. Runs on whatever device its
    parameters are on, and compiles with ``torch.jit.trace`` and ``torch.jit.script``.

    Args:
        layers: the consecutive layers of this sub-model.
        input_names: the activations it receives, in ``forward`` argument order.
        output_names: the activations it returns, in order (current tensor first).

    Attributes:
        input_names, output_names: as given (lists of activation names).
        layer_names: the names of its layers, in order.
    """

    # Python-only helpers, not compiled by torch.jit.script
    __jit_unused_properties__ = [*getattr(fx.GraphModule, "__jit_unused_properties__", []), "sub_layers"]

    def __init__(self, layers: Sequence[Layer], input_names: Sequence[str], output_names: Sequence[str]) -> None:
        if not layers:
            raise ValueError("a SubModel needs at least one layer.")
        root = nn.Module()
        root.layers = nn.ModuleDict({layer.name: layer.module for layer in layers})
        graph = fx.Graph()
        env = {name: graph.placeholder(name) for name in input_names}
        for layer in layers:
            missing = [name for name in layer.inputs if name not in env]
            if missing:
                raise ValueError(
                    f"layer {layer.name!r} reads {missing}, which are neither inputs of this sub-model "
                    f"({list(input_names)}) nor written by its earlier layers."
                )
            env[layer.output] = graph.call_module(f"layers.{layer.name}", tuple(env[name] for name in layer.inputs))
        missing = [name for name in output_names if name not in env]
        if missing:
            raise ValueError(f"outputs {missing} are not computed by layers {[layer.name for layer in layers]}.")
        graph.output(tuple(env[name] for name in output_names))
        super().__init__(root, graph, class_name="SubModel")
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.layer_names = [layer.name for layer in layers]
        self._layer_io = [(layer.name, tuple(layer.inputs), layer.output) for layer in layers]

    @property
    def sub_layers(self) -> list[Layer]:
        """The ``Layer`` records of this sub-model (modules as held by it)."""
        return [Layer(name, getattr(self.layers, name), inputs, output) for name, inputs, output in self._layer_io]

    # torch.fx rebuilds a plain GraphModule on copy and pickling, which would drop the names: rebuild a SubModel.
    def __deepcopy__(self, memo):
        layers = [Layer(l.name, copy.deepcopy(l.module, memo), l.inputs, l.output) for l in self.sub_layers]
        return SubModel(layers, self.input_names, self.output_names).train(self.training)

    def __reduce__(self):
        return (_rebuild_submodel, (self.sub_layers, self.input_names, self.output_names, self.training))


def _rebuild_submodel(layers, input_names, output_names, training) -> SubModel:
    return SubModel(layers, input_names, output_names).train(training)


def split_layers(layers: Sequence[Layer], ranges: Sequence[tuple[int, int]]) -> list[SubModel]:
    """One ``SubModel`` per half-open ``(start, end)`` range; ranges must be consecutive and cover ``layers``.

    Sub-model ``j`` takes ``live_activations(layers, start_j)`` and returns ``live_activations(layers, end_j)``, so
    the outputs of one are exactly the inputs of the next and the last returns ``("logits",)``.
    """
    expected = 0
    for start, end in ranges:
        if start != expected or end <= start:
            raise ValueError(f"ranges must be consecutive, non-empty and start at 0, got {list(ranges)}.")
        expected = end
    if expected != len(layers):
        raise ValueError(f"ranges must cover all {len(layers)} layers, got {list(ranges)}.")
    if layers[-1].output != LOGITS:
        raise ValueError(f"the last layer must write {LOGITS!r}, got {layers[-1].output!r}.")
    return [
        SubModel(layers[start:end], live_activations(layers, start), live_activations(layers, end))
        for start, end in ranges
    ]


def _device_of(module: nn.Module, fallback: torch.device) -> torch.device:
    param = next(module.parameters(), None)
    if param is None:
        param = next(module.buffers(), None)
    return param.device if param is not None else fallback


def run_chain(submodels: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run the sub-models in order in this process and return the final logits.

    Each sub-model receives the previous one's outputs moved to its own device (that of its first parameter or
    buffer; a sub-model with neither runs where its inputs are). Works with ``SubModel`` and with traced or
    scripted sub-models (their outputs are tuples).
    """
    tensors: tuple[torch.Tensor, ...] = (x,)
    for sub in submodels:
        device = _device_of(sub, tensors[0].device)
        outputs = sub(*(t.to(device) for t in tensors))
        tensors = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    if len(tensors) != 1:
        raise ValueError(f"the last sub-model returned {len(tensors)} tensors; expected only the logits.")
    return tensors[0]
