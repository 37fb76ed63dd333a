"""Plain U-Net (no normalisation, transposed-conv up path): the classic U-Net of the UNet-P paper and PocketNet."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import get_act_layer
from monai.networks.layers.factories import Conv, Pool

__all__ = ["PlainConvBlock", "PlainUNet", "PocketUNet"]


class PlainConvBlock(nn.Sequential):
    """Two ``k x k`` 'same' convolutions with bias, each followed by an activation (the U-Net block, no norm).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels of both convolutions.
        kernel_size: odd kernel size. Defaults to 3.
        act: activation type and arguments. Defaults to ``"relu"``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, act: str | tuple = "relu"
    ) -> None:
        conv = Conv[Conv.CONV, spatial_dims]
        super().__init__(
            conv(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            get_act_layer(act),
            conv(out_channels, out_channels, kernel_size, padding=kernel_size // 2),
            get_act_layer(act),
        )


def _as_pool_sizes(spatial_dims: int, pool_size: int | Sequence, depth: int) -> list[tuple[int, ...]]:
    """Per-level pooling sizes: one int (isotropic), one per-axis tuple for every level, or one entry per level."""
    if isinstance(pool_size, int):
        return [(pool_size,) * spatial_dims] * depth
    sizes = list(pool_size)
    if sizes and all(isinstance(s, int) for s in sizes):
        if len(sizes) != spatial_dims:
            raise ValueError(f"pool_size {tuple(sizes)} must have spatial_dims={spatial_dims} entries.")
        return [tuple(sizes)] * depth
    if len(sizes) != depth:
        raise ValueError(f"pool_size must give one entry per level (depth={depth}), got {len(sizes)} entries.")
    return [(s,) * spatial_dims if isinstance(s, int) else tuple(s) for s in sizes]


class PlainUNet(nn.Module):
    """U-Net with plain convolution blocks, max-pooling, transposed-convolution up path and no normalisation.

    The classic U-Net of the partitioned-inference paper: P. K. Rao et al., "Optimizing Inference Distribution for
    Efficient Kidney Tumor Segmentation using a UNet-PWP Deep Learning Model" (``papers/002_55a0f2308920d63a.txt``,
    Tables 1-2), and the U-Net of PocketNet (``papers/004_31ea781ba0c034b3.txt``, Table 1; ``PocketUNet``).

    - encoder level ``i`` (``i = 0..L-1``): [MaxPool] + ``PlainConvBlock(channels[i-1] -> channels[i])``, output = skip;
    - bottleneck: MaxPool + ``PlainConvBlock(channels[L-1] -> channels[L])``;
    - decoder level ``i``: ConvTranspose (kernel = stride = pool size, ``channels[i+1] -> channels[i]``, bias, no
      activation), concatenate ``[up, skip]``, ``PlainConvBlock(2 * channels[i] -> channels[i])``;
    - head: Conv 1x1 (bias) -> raw logits.

    Parameter count with the defaults (``channels=(64, 128, 256, 512, 1024)``, 1 input, 3 outputs): **31,030,723**,
    and 48,100,278,272 conv MACs at 1x1x256x256 (FLOPs = 2 x MACs = 96,200,556,544), both exactly paper 002 Table 1.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of output channels (classes). Defaults to 3.
        channels: channels of each level, the last being the bottleneck (``len >= 2``). Defaults to
            (64, 128, 256, 512, 1024).
        pool_size: max-pool size (= up-conv kernel and stride) between levels: an int, a per-axis tuple, or one of
            those per level. Defaults to 2.
        kernel_size: odd kernel size of the block convolutions. Defaults to 3.
        act: activation type and arguments. Defaults to ``"relu"``.

    Examples::

        >>> PlainUNet()(torch.zeros(1, 1, 256, 256)).shape
        torch.Size([1, 3, 256, 256])
        >>> PlainUNet(3, channels=(16, 32, 64), pool_size=(2, 2, 1))(torch.zeros(1, 1, 32, 32, 8)).shape
        torch.Size([1, 3, 32, 32, 8])

    Note:
        Each spatial size of the input must be divisible by the product of the pool sizes along that axis.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512, 1024),
        pool_size: int | Sequence = 2,
        kernel_size: int = 3,
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be in (1, 2, 3), got spatial_dims={spatial_dims}.")
        if len(channels) < 2:
            raise ValueError(f"len(channels) must be >= 2 (one level and the bottleneck), got channels={tuple(channels)}.")
        for name, values in (("in_channels", [in_channels]), ("out_channels", [out_channels]), ("channels", channels)):
            if any(not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"every entry of {name} must be a positive integer, got {name}={values}.")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd ('same' padding), got kernel_size={kernel_size}.")
        depth = len(channels) - 1
        self.spatial_dims = spatial_dims
        self.pool_sizes = _as_pool_sizes(spatial_dims, pool_size, depth)
        self.divisors = [math.prod(p[axis] for p in self.pool_sizes) for axis in range(spatial_dims)]

        pool, conv_t = Pool[Pool.MAX, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        self.encoder = nn.ModuleList()
        for level, width in enumerate(channels):
            block = PlainConvBlock(spatial_dims, in_channels if level == 0 else channels[level - 1], width, kernel_size, act)
            if level == 0:
                self.encoder.append(block)
            else:
                size = self.pool_sizes[level - 1]
                self.encoder.append(nn.Sequential(pool(kernel_size=size, stride=size), block))
        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            size = self.pool_sizes[level]
            self.up_convs.append(conv_t(channels[level + 1], channels[level], kernel_size=size, stride=size))
            self.decoder.append(PlainConvBlock(spatial_dims, 2 * channels[level], channels[level], kernel_size, act))
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape (B, in_channels, *spatial) into raw logits (B, out_channels, *spatial).

        Raises ``ValueError`` for a wrong rank or a spatial size not divisible by the pooling along that axis.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D input (B, C, *spatial) for spatial_dims={self.spatial_dims}, "
                f"got shape {list(x.shape)}."
            )
        if not torch.jit.is_tracing():  # under tracing the sizes are tensors: the check would be baked in
            self._check_divisible(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up_convs, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    def _check_divisible(self, x: torch.Tensor) -> None:
        sizes = x.shape[2:]
        for axis in range(len(sizes)):
            if sizes[axis] % self.divisors[axis] != 0:
                raise ValueError(
                    f"each spatial size must be divisible by the pooling along its axis {self.divisors}, got shape "
                    f"{list(x.shape)}; pad it first (e.g. monai.transforms.DivisiblePad)."
                )


class PocketUNet(PlainUNet):
    """Pocket U-Net (PocketNet): the plain U-Net with the same number of features at every level, 2D or 3D.

    A. Celaya, J. A. Actor, R. Muthusivarajan, E. Gates, C. Chung, D. Schellingerhout, B. Riviere, D. Fuentes,
    "PocketNet: A Smaller Neural Network for Medical Image Analysis", IEEE TMI 42(4), 2023
    (``papers/004_31ea781ba0c034b3.txt``, Sect. II and Table 1), layout from the authors' public code
    (``aecelaya/pocketnet``, ``PocketNet()``: U-Net block, depth 4, ConvTranspose up path, no normalisation).
    ``pocket=False`` gives the paper's full-width U-Net (features doubling per level) for comparison.

    Parameter counts (1 input, 2 classes, ``features=16``, ``depth=4``; ``shared/reference/architectures.md``,
    "Target 3"): 3D pocket **150,066** / full **5,470,850** (paper: 0.150M / 5.5M); 2D pocket **53,010** / full
    **1,940,834** (the code's counts; the paper's 2D figures 36K / 544K are not reproducible from its own code).
    Each extra class adds ``features + 1`` parameters.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of output channels (classes). Defaults to 3.
        features: features of the first level (and of every level when ``pocket``). Defaults to 16.
        depth: number of pooling steps. Defaults to 4.
        pocket: constant width (True) or doubling width (False, the full U-Net). Defaults to True.
        pool_size: max-pool size between levels. Defaults to 2 in 2D and ``(2, 2, 1)`` in 3D: the public code's
            3D pool ``(1, 2, 2)`` pools in-plane only, written for the bundle's RAS volumes whose last axis is axial.
        kernel_size: odd kernel size. Defaults to 3.
        act: activation type and arguments. Defaults to ``"relu"``.

    Examples::

        >>> PocketUNet(spatial_dims=2, out_channels=3)(torch.zeros(1, 1, 256, 256)).shape
        torch.Size([1, 3, 256, 256])
        >>> PocketUNet(spatial_dims=3, out_channels=3)(torch.zeros(1, 1, 64, 64, 8)).shape
        torch.Size([1, 3, 64, 64, 8])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 3,
        features: int = 16,
        depth: int = 4,
        pocket: bool = True,
        pool_size: int | Sequence | None = None,
        kernel_size: int = 3,
        act: str | tuple = "relu",
    ) -> None:
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got depth={depth}.")
        channels = [features if pocket else features * 2**level for level in range(depth + 1)]
        if pool_size is None:
            pool_size = (2, 2, 1) if spatial_dims == 3 else 2
        super().__init__(spatial_dims, in_channels, out_channels, channels, pool_size, kernel_size, act)
