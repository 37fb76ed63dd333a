"""Partitioned inference in one process: sub-model ``k`` on device ``k % len(devices)``, activations moved between.

With several GPUs each sub-model sits on its own ``cuda:k`` (paper 002 Sect. 3.2: the sub-models are meant for
separate devices); on the CPU they all run on ``cpu``, which only proves the split and the transfers work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..common.errors import InputError

__all__ = ["resolve_devices", "place_submodels", "ChainedPartitions"]


def resolve_devices(devices: Sequence[str | torch.device] | str | None = None) -> list[torch.device]:
    """The devices to place sub-models on: ``None`` gives ``cuda:0..n-1`` when CUDA is present, else ``[cpu]``.

    Strings are checked: an unknown device type or a ``cuda:k`` that is not visible stops with one line.
    """
    if devices is None or devices == "auto" or (isinstance(devices, str) and not devices.strip()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")]
    if isinstance(devices, (str, torch.device)):
        devices = [devices]
    if len(devices) == 0:
        raise InputError("--partition_devices: empty list; give e.g. \"['cuda:0','cuda:1']\" or \"['cpu']\"")
    resolved = []
    for spec in devices:
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"--partition_devices: {spec!r} is not a device ({exc}); use 'cpu' or 'cuda:N'") from None
        if device.type == "cuda":
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= visible:
                raise InputError(f"--partition_devices: {spec!r} is not available ({visible} CUDA device(s) visible)")
            device = torch.device("cuda", device.index or 0)
        elif device.type != "cpu":
            raise InputError(f"--partition_devices: {spec!r}: only 'cpu' and 'cuda:N' are supported")
        resolved.append(device)
    return resolved


def place_submodels(submodels: Sequence[nn.Module], devices: Sequence[torch.device]) -> list[nn.Module]:
    """Move sub-model ``k`` to ``devices[k % len(devices)]`` (in place) and return them."""
    return [sub.to(devices[k % len(devices)]) for k, sub in enumerate(submodels)]


class ChainedPartitions(nn.Module):
    """The sub-models run one after the other in this process, each on its own device; ``forward(x)`` returns the
    logits on ``x``'s device, so it replaces the monolithic network in the inference workflow.

    Args:
        submodels: modules with ``forward(*tensors) -> tuple`` (``SubModel`` or their TorchScript), already placed.
    """

    def __init__(self, submodels: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(submodels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .submodel import run_chain

        if hasattr(x, "as_tensor"):  # MetaTensor from the inferer: TorchScript takes plain tensors
            x = x.as_tensor()
        return run_chain(list(self.stages), x).to(x.device)
