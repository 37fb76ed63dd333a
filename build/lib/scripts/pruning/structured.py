"""Structured (channel) pruning: remove whole channels so the network becomes a genuinely smaller dense one.

Unstructured zeros do not make a dense convolution faster on a CPU; removing channels does. The dependency graph
of torch-pruning (``torch_pruning.DependencyGraph``) finds every tensor that must shrink with a channel: the
following BatchNorm, the depthwise convolutions (``groups == channels``) downstream, and both consumers of a U-Net
skip (the next encoder stage and the decoder's concatenation, where the concatenated index range is remapped).

The roots are all regular / pointwise convolutions (``groups == 1``) except the output layer(s), found as the
convolutions whose output is returned by ``forward`` unchanged; depthwise convolutions follow their producer. Each
root loses the fraction ``ratio`` of its output channels with the smallest L1 norm (``MagnitudeImportance(p=1)``
over the whole dependency group). This goes beyond the papers (000/001/002 prune weights, not channels).

Two levers shape the result for CPU speed (measured in ``docs/pruning.md``):

- ``stage_ratios`` gives some stages their own ratio, by module-name prefix (``{"encoder.stages.0": 0.5}``; the
  longest matching prefix wins, the other roots keep ``ratio``). Latency is not proportional to channels: the
  full-resolution stages of a depthwise-separable U-Net carry most of the memory traffic but few of the weights,
  while the deep stages hold most weights (and the context) at a fraction of the cost.
- ``round_to`` keeps a multiple of that many channels in every root (as torch-pruning's ``round_to``): oneDNN's
  convolutions are much slower on odd widths (e.g. 19 or 38 channels) than on multiples of 8.

Saving: a structurally pruned network no longer matches ``network_def``'s constructor arguments (inner widths of a
block shrink independently), so the checkpoint stays a plain ``state_dict`` (``weights_only`` loadable) and
``shrink_to_state_dict`` rebuilds the network from ``network_def`` by replacing each convolution / norm layer whose
saved weight has another shape. ``configs/structured.json`` does this for inference and evaluation.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn

__all__ = ["output_layers", "prune_channels", "pruning_roots", "root_ratios", "kept_channels", "shrink_to_state_dict", "load_structured"]

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


def pruning_roots(network: nn.Module, ignored: list[nn.Module]) -> dict[str, nn.Module]:
    """The convolutions whose output channels are pruned, by name: regular / pointwise (``groups == 1``), not
    transposed, not in ``ignored`` (the output layers)."""
    return {name: m for name, m in network.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1
            and not isinstance(m, nn.modules.conv._ConvTransposeNd) and all(m is not i for i in ignored)}


def kept_channels(out_channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels a root keeps: ``(1 - ratio) * out_channels`` rounded to the nearest multiple of ``round_to``, at
    least ``round_to`` and at most ``out_channels`` (a root narrower than ``round_to`` is not pruned; ratio 0 keeps
    every channel, also when ``out_channels`` is no multiple of ``round_to``)."""
    if ratio == 0:
        return out_channels
    keep = round_to * math.floor(out_channels * (1.0 - ratio) / round_to + 0.5)
    return min(out_channels, max(round_to, keep))


def _check_ratio(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number with 0 <= ratio < 1, got {value!r}.")


def _ratio_per_root(roots: dict[str, nn.Module], ratio: float, stage_ratios: dict[str, float]) -> dict[str, float]:
    """Each root's ratio: that of the longest ``stage_ratios`` prefix matching its name (at a ``.`` boundary), else
    ``ratio``. A prefix that matches no root is an error (a typo would otherwise silently prune nothing)."""
    def matches(name: str, prefix: str) -> bool:
        return prefix == "" or name == prefix or name.startswith(prefix + ".")

    unmatched = [p for p in stage_ratios if not any(matches(n, p) for n in roots)]
    if unmatched:
        stages = sorted({n.rsplit(".block", 1)[0].rsplit(".up", 1)[0] for n in roots})
        raise ValueError(f"stage_ratios: {unmatched} match no prunable convolution; module-name prefixes such as "
                         f"{stages} are expected.")
    per_root = {}
    for name in roots:
        prefixes = [p for p in stage_ratios if matches(name, p)]
        per_root[name] = stage_ratios[max(prefixes, key=len)] if prefixes else ratio
    return per_root


def root_ratios(network: nn.Module, example_input: torch.Tensor, ratio: float = 0.5,
                stage_ratios: dict[str, float] | None = None) -> dict[str, float]:
    """The ratio each root convolution of ``network`` would be pruned by (``prune_channels``' arguments); raises
    ``ValueError`` for a bad ratio or a ``stage_ratios`` prefix that matches no root. Prunes nothing."""
    _check_ratio("channel ratio", ratio)
    stage_ratios = dict(stage_ratios or {})
    for prefix, value in stage_ratios.items():
        _check_ratio(f"stage_ratios[{prefix!r}]", value)
    was_training = network.training
    network.eval()  # the trace must not update BatchNorm statistics
    try:
        roots = pruning_roots(network, output_layers(network, example_input))
    finally:
        network.train(was_training)
    return _ratio_per_root(roots, ratio, stage_ratios)


def prune_channels(
    network: nn.Module,
    example_input: torch.Tensor,
    ratio: float = 0.5,
    ignored_layers: list[nn.Module] | None = None,
    stage_ratios: dict[str, float] | None = None,
    round_to: int = 1,
    widths: dict[str, int] | None = None,
) -> nn.Module:
    """Remove channels of every regular/pointwise conv, in place; return ``network``.

    Args:
        network: the network to prune (changed in place).
        example_input: an input of the shape the network is traced with (e.g. ``(1, 1, 128, 128)``).
        ratio: fraction of each root's output channels removed (``0 <= ratio < 1``).
        ignored_layers: convolutions whose output channels stay (default: the output layers, ``output_layers``).
        stage_ratios: ``{module-name prefix: ratio}`` overriding ``ratio`` for the roots under that prefix, e.g.
            ``{"encoder.stages.0": 0.5, "decoder.stages.3": 0.5}``; the longest matching prefix wins.
        round_to: every root keeps a multiple of this many channels (``kept_channels``); 1 = no rounding.
        widths: ``{root name: channels to keep}`` instead of the ratios (roots not named keep theirs); used for
            iterative pruning, which reaches the final widths in steps.
    """
    import torch_pruning as tp

    _check_ratio("channel ratio", ratio)
    stage_ratios = dict(stage_ratios or {})
    for prefix, value in stage_ratios.items():
        _check_ratio(f"stage_ratios[{prefix!r}]", value)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}.")
    was_training = network.training
    network.eval()
    ignored = list(ignored_layers) if ignored_layers is not None else output_layers(network, example_input)
    roots = pruning_roots(network, ignored)
    if widths is None:
        ratios = _ratio_per_root(roots, ratio, stage_ratios)
        widths = {name: kept_channels(root.out_channels, ratios[name], round_to) for name, root in roots.items()}
    unknown = sorted(set(widths) - set(roots))
    if unknown:
        raise ValueError(f"widths: {unknown} are not prunable convolutions of {type(network).__name__}")
    try:
        graph = tp.DependencyGraph().build_dependency(network, example_inputs=example_input)
        _prune_roots(graph, roots, widths, tp)
    except TypeError as err:  # torch-pruning 1.6.1 cannot infer some concat sizes (e.g. MONAI BasicUNet/UNet)
        raise ValueError(f"torch-pruning could not trace the channel dependencies of {type(network).__name__} "
                         f"({err}); channel pruning is tested on the bundle's own networks (scripts/networks)") from err
    network.train(was_training)
    return network


def _prune_roots(graph, roots: dict[str, nn.Module], widths: dict[str, int], tp) -> None:
    importance = tp.importance.MagnitudeImportance(p=1)
    for name, root in roots.items():
        n_prune = root.out_channels - widths.get(name, root.out_channels)
        if n_prune <= 0 or n_prune >= root.out_channels:
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
    from ..common.errors import InputError

    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise InputError(f"{path}: cannot read channel-pruned weights ({err})") from None
    state = checkpoint.get("model", checkpoint)
    try:
        return shrink_to_state_dict(network, state)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"{path}: does not fit network_def even after resizing layers ({str(err).splitlines()[0]})")
