"""Model complexity: parameter counts (PyTorch and Keras conventions) and convolution MACs.

The Keras convention matters because the papers' tables were produced with Keras, whose "Total params" includes the
BatchNorm moving mean/variance (see ``shared/reference/architectures.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["count_parameters", "count_nonzero_parameters", "count_macs"]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Count a model's parameters the PyTorch way and the Keras way.

    Args:
        model: any ``nn.Module``.

    Returns:
        ``{"trainable": ..., "norm_running_stats": ..., "keras_total": ...}``: the number of elements of parameters
        with ``requires_grad``; the number of elements of the ``running_mean`` and ``running_var`` buffers of
        BatchNorm/InstanceNorm layers that track running statistics; and their sum, which is Keras' "Total params"
        (frozen parameters are not included anywhere).
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            for buffer in (module.running_mean, module.running_var):
                if buffer is not None:
                    stats += buffer.numel()
    return {"trainable": trainable, "norm_running_stats": stats, "keras_total": trainable + stats}


def count_nonzero_parameters(model: nn.Module) -> int:
    """Number of nonzero elements over the trainable parameters (after pruning, the parameters that remain).

    A module pruned with ``torch.nn.utils.prune`` but not yet made permanent keeps its dense ``weight_orig``
    parameter; its effective weight is ``weight_orig * weight_mask``, which is what is counted here.
    """
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            mask = getattr(module, name[: -len("_orig")] + "_mask", None) if name.endswith("_orig") else None
            total += int(torch.count_nonzero(param * mask if mask is not None else param))
    return total


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the convolution and linear layers for one forward pass on a zero input.

    Convention of ``shared/reference/architectures.md``: ``Conv``: output elements x ``in_channels / groups`` x
    kernel volume; ``ConvTranspose``: input elements x ``out_channels / groups`` x kernel volume; ``Linear``:
    output elements x ``in_features``. Biases, norms, activations, pooling and upsampling are not counted, and the
    batch size in ``input_shape`` multiplies the result. FLOPs are usually reported as 2 x MACs.

    Args:
        model: the network; it is run once in eval mode under ``torch.no_grad`` and its mode is restored.
        input_shape: full input shape including batch and channels, e.g. ``(1, 1, 256, 256)``.

    Returns:
        the total number of MACs.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            kernel = module.weight[0, 0].numel()
            total += inputs[0].numel() * (module.out_channels // module.groups) * kernel
        elif isinstance(module, nn.modules.conv._ConvNd):
            kernel = module.weight[0, 0].numel()
            total += output.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
