"""A MONAI ``Inferer`` that runs a 2D network over the axial slices of a volume on the fast path (issue 19).

MONAI Label's ``monaibundle`` app (and ``run inferring --streaming False``) calls the config's ``inferer`` as
``inferer(image[None], network)`` on the pre-processed (B, 1, H, W, D) volume. This inferer prepares the network
the way ``run inferring``'s streaming path does (:mod:`scripts.inference.fast_path`: precision, channels_last,
BatchNorm folding, TorchScript, slice batch), skips slices with nothing above the HU window's lower bound (air
only, labelled background, as ``skip_empty_slices`` of the streaming path) and returns one-hot **uint8** class
scores (B, num_classes, H, W, D): the config's ``AsDiscreted(argmax=True)`` then picks the labels the streaming
path's ``max(dim=1)`` picked, while the volume of float logits (12 bytes a voxel for three classes) is never
allocated.

The prepared copy of the network is cached on the network object itself (MONAI Label keeps one network per
device and replaces it when ``models/model.pt`` changes; it re-imports ``scripts`` on every request, so a module
level cache would not survive) and redone when the weights change in place (parameter version counters).
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import torch
from monai.inferers import Inferer

from .fast_path import FastPath, choose_fast_path, predict_labels, prepare_network

__all__ = ["FastSliceInferer"]

logger = logging.getLogger(__name__)

_CACHE_ATTR = "_kidney_fast_path_cache"  # a tuple attribute: nn.Module registers only modules and parameters
_LOCK = threading.Lock()


def _weights_version(network) -> int:
    return sum(p._version for p in network.parameters()) if isinstance(network, torch.nn.Module) else 0


class FastSliceInferer(Inferer):
    """Slice-wise inference of a 2D network on the fast path; returns one-hot uint8 class scores.

    Args:
        precision, channels_last, fold_batchnorm, compile, sw_batch_size: as
            :func:`scripts.inference.fast_path.choose_fast_path` (``"auto"`` resolved for the device and network
            of the first call; the config's ``precision`` ... ``slice_batch_size`` ids).
        skip_empty_slices: slices whose input is all 0 (nothing above the HU window) are background without the
            network (the streaming path's ``skip_empty_slices``).
        spatial_dim: the axis of the (H, W, D) spatial dims along which to slice (2: the last, axial in RAS).
    """

    def __init__(self, precision="auto", channels_last="auto", fold_batchnorm="auto", compile="auto",
                 sw_batch_size="auto", skip_empty_slices: bool = True, spatial_dim: int = 2) -> None:
        super().__init__()
        self.options = {"precision": precision, "channels_last": channels_last, "fold_batchnorm": fold_batchnorm,
                        "compile": compile, "sw_batch_size": sw_batch_size}
        self.skip_empty_slices = bool(skip_empty_slices)
        if spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2 (an axis of H, W, D), got {spatial_dim}")
        self.spatial_dim = int(spatial_dim)
        self.fast_path: FastPath | None = None

    def prepared(self, network, device: torch.device):
        """The network prepared for the fast path on ``device`` (cached on ``network``) and the path."""
        path = choose_fast_path(network, device, **self.options)
        # plain values: MONAI Label re-imports ``scripts`` per request, so a FastPath of the previous import would
        # never compare equal to this one (another class object)
        key = (dataclasses.astuple(path), str(device), _weights_version(network))
        with _LOCK:
            cached = getattr(network, _CACHE_ATTR, None)
            if cached is not None and cached[0] == key:
                return cached[1], path
            module = prepare_network(network, device, path)
            if isinstance(network, torch.nn.Module):
                setattr(network, _CACHE_ATTR, (key, module))
        logger.info("fast path for MONAI inference: %s", path.describe())
        return module, path

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        """(B, 1, H, W, D) network input -> (B, num_classes, H, W, D) one-hot uint8 (same spatial size)."""
        if inputs.ndim != 5:
            raise ValueError(f"expected a (B, C, H, W, D) volume, got shape {tuple(inputs.shape)}")
        device = inputs.device
        module, path = self.prepared(network, device)
        self.fast_path = path
        volume = torch.movedim(torch.as_tensor(inputs), 2 + self.spatial_dim, -1)  # (B, C, h, w, depth)
        batch, _, height, width, depth = volume.shape
        labels = torch.zeros((batch, height, width, depth), dtype=torch.uint8)
        num_classes = None
        for b in range(batch):
            slices = volume[b].permute(3, 0, 1, 2)  # (depth, C, h, w): views
            keep = (torch.nonzero(slices.flatten(1).amax(dim=1) > 0).flatten() if self.skip_empty_slices
                    else torch.arange(depth))
            for i in range(0, len(keep), path.sw_batch_size):
                index = keep[i:i + path.sw_batch_size]
                chunk = slices[index.to(slices.device)].to(torch.float32)
                if num_classes is None:
                    num_classes = self._num_classes(module, chunk[:1], path, device)
                labels[b, :, :, index] = predict_labels(module, chunk, path, device).permute(1, 2, 0)
        if num_classes is None:  # no slice with body: everything is background
            num_classes = self._num_classes(module, volume[0, :, :, :, 0][None].to(torch.float32), path, device)
        scores = torch.stack([labels == c for c in range(num_classes)], dim=1).to(torch.uint8)
        return torch.movedim(scores, -1, 2 + self.spatial_dim).to(device)

    @staticmethod
    def _num_classes(module, one_slice: torch.Tensor, path: FastPath, device) -> int:
        cached = getattr(module, "_kidney_num_classes", None)
        if cached is not None:
            return cached
        batch = one_slice.to(device)
        if path.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            classes = int(module(batch).shape[1])
        if isinstance(module, torch.nn.Module):
            module._kidney_num_classes = classes
        return classes
