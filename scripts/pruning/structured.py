"""Structured (channel) pruning: remove whole channels so the network becomes a genuinely smaller dense one.

Unstructured zeros do not make a dense convolution faster on a CPU; removing channels does. The dependency graph
of torch-pruning (``torch_pruning.DependencyGraph``) finds every tensor that must shrink with a channel: the
following BatchNorm, the depthwise convolutions (``groups == channels``) downstream, and both consumers of a U-Net
skip (the next encoder stage and the decoder's concatenation, where the concatenated index range is remapped).

The roots are all regular / pointwise convolutions (``groups == 1``) except the output layer(s), found as the
convolutions whose output is returned by ``forward`` unchanged; depthwise convolutions follow their producer. Each
root loses the fraction ``ratio`` of its output channels with the smallest L1 norm (``MagnitudeImportance(p=1)``
over the whole dependency group). This goes beyond the papers (000/001/002 prune weights, not channels).

Saving: a structurally pruned network no longer matches ``network_def``'s constructor arguments (inner widths of a
block shrink independently), so the checkpoint stays a plain ``state_dict`` (``weights_only`` loadable) and
``shrink_to_state_dict`` rebuilds the network from ``network_def`` by replacing each convolution / norm layer whose
saved weight has another shape. ``configs/structured.json`` does this for inference and evaluation.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

__all__ = ["output_layers", "prune_channels", "shrink_to_state_dict", "load_structured"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def output_layers(network: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Convolutions whose output tensor is the network's output (their output channels are the classes)."""
    outputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, _inp, out: outputs.__setitem__(mod, out))
             for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            result = network(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    results = result if isinstance(result, (list, tuple)) else [result]
    found = [m for m, out in outputs.items() if any(out is r for r in results)]
    if not found:
        raise ValueError(f"{type(network).__name__}: no convolution produces the output directly; "
                         "pass the output layers to prune_channels(ignored_layers=...)")
    return found


def prune_channels(
    network: nn.Module,
    example_input: torch.Tensor,
    ratio: float = 0.5,
    ignored_layers: list[nn.Module] | None = None,
) -> nn.Module:
    """Remove the fraction ``ratio`` of output channels of every regular/pointwise conv, in place; return it."""
    import torch_pruning as tp

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"channel ratio must satisfy 0 <= ratio < 1, got ratio={ratio}.")
    was_training = network.training
    network.eval()
    ignored = list(ignored_layers) if ignored_layers is not None else output_layers(network, example_input)
    try:
        graph = tp.DependencyGraph().build_dependency(network, example_inputs=example_input)
        _prune_roots(network, graph, ratio, ignored, tp)
    except TypeError as err:  # torch-pruning 1.6.1 cannot infer some concat sizes (e.g. MONAI BasicUNet/UNet)
        raise ValueError(f"torch-pruning could not trace the channel dependencies of {type(network).__name__} "
                         f"({err}); channel pruning is tested on the bundle's own networks (scripts/networks)") from err
    network.train(was_training)
    return network


def _prune_roots(network: nn.Module, graph, ratio: float, ignored: list[nn.Module], tp) -> None:
    importance = tp.importance.MagnitudeImportance(p=1)
    roots = [m for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1
             and not isinstance(m, nn.modules.conv._ConvTransposeNd) and all(m is not i for i in ignored)]
    for root in roots:
        n_prune = int(round(ratio * root.out_channels))
        if n_prune == 0 or n_prune >= root.out_channels:
            continue
        group = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs=list(range(root.out_channels)))
        scores = importance(group)
        if scores is None:
            continue
        idxs = torch.argsort(scores)[:n_prune].tolist()
        group = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs=idxs)
        if graph.check_pruning_group(group):
            group.prune()


def _resized_conv(conv: nn.modules.conv._ConvNd, weight_shape: torch.Size) -> nn.Module:
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    if depthwise:
        channels = weight_shape[0]  # (C, multiplier, k...) for both conv and transposed conv
        in_ch, out_ch, groups = channels, channels * (conv.out_channels // conv.in_channels), channels
    elif conv.groups == 1:
        in_ch, out_ch = (weight_shape[0], weight_shape[1]) if transposed else (weight_shape[1], weight_shape[0])
        groups = 1
    else:
        raise ValueError(f"cannot resize a grouped convolution with groups={conv.groups} (neither 1 nor depthwise)")
    kwargs = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                  groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    if transposed:
        kwargs["output_padding"] = conv.output_padding
    return type(conv)(in_ch, out_ch, **kwargs)


def shrink_to_state_dict(network: nn.Module, state_dict: dict) -> nn.Module:
    """Replace every conv / norm layer of ``network`` whose weight shape differs from ``state_dict``'s by one of the
    saved size, then load ``state_dict`` (strict). Returns ``network`` (changed in place)."""
    for name, module in list(network.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if key not in state_dict or not hasattr(module, "weight") or module.weight is None:
            continue
        shape = state_dict[key].shape
        if module.weight.shape == shape:
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            new = _resized_conv(module, shape)
        elif isinstance(module, nn.GroupNorm):  # channel pruning keeps the number of groups (torch-pruning 1.6.1)
            if shape[0] % module.num_groups:
                raise ValueError(f"{key}: {shape[0]} channels are not divisible by num_groups={module.num_groups}")
            new = nn.GroupNorm(module.num_groups, shape[0], eps=module.eps, affine=module.affine)
        elif isinstance(module, _NORMS):
            new = type(module)(shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats)
        else:
            raise ValueError(f"{key}: cannot resize a {type(module).__name__} to {list(shape)}")
        parent_name, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent_name) if parent_name else network, child, new)
    network.load_state_dict(state_dict)
    return network


def load_structured(network: nn.Module, path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """``network`` (built from ``network_def``) shrunk to the channel-pruned checkpoint at ``path`` and loaded."""
    from ..errors import InputError

    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise InputError(f"{path}: cannot read channel-pruned weights ({err})") from None
    state = checkpoint.get("model", checkpoint)
    try:
        return shrink_to_state_dict(network, state)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"{path}: does not fit network_def even after resizing layers ({str(err).splitlines()[0]})")
