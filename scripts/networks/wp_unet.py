"""WP-UNet: a U-Net with depthwise-separable convolutions, BatchNorm and dropout (before weight pruning).

Split nnU-Net style into an encoder that returns its skips and a decoder built from the encoder object, so that the
channel bookkeeping lives in one place and every stage is addressable by name (``encoder.stages.2``,
``decoder.stages.0``, ``decoder.head``) for pruning and partitioning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from .blocks import WPDecoderStage, WPEncoderStage

__all__ = ["WPUNet", "WPUNetEncoder", "WPUNetDecoder"]


def _check_positive_ints(name: str, values: Sequence[int]) -> None:
    if any(not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"every entry of {name} must be a positive integer (>= 1), got {name}={tuple(values)}.")


def _check_encoder_args(
    spatial_dims: int,
    in_channels: int,
    channels: Sequence[int],
    strides: Sequence[int],
    kernel_size: int,
    dropout: float,
) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be in (2, 3), got spatial_dims={spatial_dims}.")
    _check_positive_ints("in_channels", [in_channels])
    if len(channels) < 2:
        raise ValueError(
            "len(channels) must be >= 2 (at least one encoder stage and the bottleneck), "
            f"got channels={tuple(channels)}."
        )
    _check_positive_ints("channels", channels)
    if len(strides) != len(channels) - 1:
        raise ValueError(
            "the length of strides should equal len(channels) - 1 (one downsampling per stage below the first), "
            f"got len(strides)={len(strides)} and len(channels)={len(channels)}."
        )
    _check_positive_ints("strides", strides)
    _check_positive_ints("kernel_size", [kernel_size])
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must satisfy 0 <= dropout < 1, got dropout={dropout}.")


class WPUNetEncoder(nn.Module):
    """WP-UNet encoder: ``len(channels)`` stages, the last one being the bottleneck; returns every stage output.

    Stage 0 runs at full resolution and starts with a regular convolution (paper 000 Sect. 3.2, "Block 1"); stage
    ``s >= 1`` max-pools by ``strides[s - 1]`` and applies a separable ``WPBlock``. The last encoder stage before the
    bottleneck and the bottleneck itself end with dropout.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        channels: output channels of each stage, the last being the bottleneck. Defaults to (64, 128, 256, 512, 512).
        strides: downsampling factor between consecutive stages; ``len(strides) == len(channels) - 1``.
            Defaults to (2, 2, 2, 2).
        kernel_size: kernel size of the (depthwise) convolutions. Defaults to 3.
        act: activation type and arguments. Defaults to ``"relu"``.
        norm: normalisation type and arguments. Defaults to ``"batch"``.
        dropout: dropout probability of the last two stages. Defaults to 0.5.

    Attributes:
        out_channels_per_stage: output channels of each stage (= ``channels``).
        strides: per-stage downsampling factor applied at the start of each stage, ``(1, *strides)``.
        divisor: ``prod(strides)``; every input spatial size must be a multiple of it.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        strides: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 3,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_encoder_args(spatial_dims, in_channels, channels, strides, kernel_size, dropout)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels_per_stage: tuple[int, ...] = tuple(channels)
        self.strides: tuple[int, ...] = (1, *strides)
        self.kernel_size = kernel_size
        self.act = act
        self.norm = norm
        self.dropout = dropout
        self.divisor: int = math.prod(strides)

        n_stages = len(channels)
        stages = []
        for s in range(n_stages):
            stages.append(
                WPEncoderStage(
                    spatial_dims,
                    in_channels if s == 0 else channels[s - 1],
                    channels[s],
                    stride=self.strides[s],
                    kernel_size=kernel_size,
                    act=act,
                    norm=norm,
                    # paper 001 "Proposed Methods": dropout 0.5 before the up-sampling path, i.e. on the deepest
                    # encoder stage (drop4) and the bottleneck (drop5) of the Keras U-Net the paper modifies.
                    dropout=dropout if s >= n_stages - 2 else 0.0,
                    regular_first=s == 0,
                )
            )
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``x`` of shape (B, in_channels, *spatial) into the list of stage outputs, shallowest first.

        Raises:
            ValueError: if ``x`` does not have ``spatial_dims + 2`` dimensions or a spatial size is not divisible by
                ``divisor``.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D input (B, C, *spatial) for spatial_dims={self.spatial_dims}, "
                f"got shape {list(x.shape)}."
            )
        # under tracing the sizes are tensors and the check would be baked in as a constant (with a warning)
        if not torch.jit.is_tracing():
            self._check_divisible(x)
        skips: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips

    def _check_divisible(self, x: torch.Tensor) -> None:
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"every spatial size of the input must be divisible by prod(strides)={self.divisor}, "
                    f"got shape {list(x.shape)}; pad it first (e.g. monai.transforms.DivisiblePad)."
                )


class WPUNetDecoder(nn.Module):
    """WP-UNet decoder, built from a ``WPUNetEncoder``: one ``WPDecoderStage`` per skip level, then a 1x1 head.

    ``stages[i]`` upsamples level ``L - i`` (``L = len(channels) - 1``, deepest first) to level ``L - i - 1``; the
    head is a biased ``1 x 1`` convolution producing raw logits.

    Args:
        encoder: the encoder whose ``spatial_dims``, ``out_channels_per_stage``, ``strides``, ``kernel_size``,
            ``act`` and ``norm`` define the decoder.
        out_channels: number of output channels (classes).
    """

    def __init__(self, encoder: WPUNetEncoder, out_channels: int) -> None:
        super().__init__()
        _check_positive_ints("out_channels", [out_channels])
        channels = encoder.out_channels_per_stage
        stages = []
        for level in range(len(channels) - 2, -1, -1):
            stages.append(
                WPDecoderStage(
                    encoder.spatial_dims,
                    channels[level + 1],
                    channels[level],
                    scale_factor=encoder.strides[level + 1],
                    kernel_size=encoder.kernel_size,
                    act=encoder.act,
                    norm=encoder.norm,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.head = Conv[Conv.CONV, encoder.spatial_dims](channels[0], out_channels, kernel_size=1, bias=True)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decode the encoder outputs (shallowest first, bottleneck last) into raw logits."""
        x = skips[-1]
        for i, stage in enumerate(self.stages):
            x = stage(x, skips[-(i + 2)])
        return self.head(x)


class WPUNet(nn.Module):
    """WP-UNet: U-Net with depthwise-separable convolutions, BatchNorm and dropout, for 2D (or 3D) segmentation.

    P. K. Rao, S. Chatterjee, "WP-UNet: Weight Pruning U-Net with Depthwise Separable Convolutions for Semantic
    Segmentation of Kidney Tumors", Research Square preprint, 2021, https://doi.org/10.21203/rs.3.rs-140504/v1
    (``papers/000_50dac675aca84b7d.txt``, Sect. 3.2 and Table 2); journal version: P. K. Rao, S. Chatterjee,
    S. Sharma, "Weight pruning-UNet: Weight pruning UNet with depth-wise separable convolutions for semantic
    segmentation of kidney tumors", J. Med. Signals Sens. 12:108-13, 2022 (``papers/001_8d0b8a849be3784f.txt``,
    "Proposed Methods").

    This is the un-pruned "U-Net (Depthwise + BN)" network; WP-UNet is obtained from it by magnitude pruning after
    training. The papers only sketch the layers, so the exact layout is the one that reproduces Table 2's 2,601,921
    (see ``shared/reference/architectures.md``, "Target 1"):

    - encoder stage 0: Conv(in -> c0, bias) + ReLU, SeparableConv(c0 -> c0) + ReLU, BatchNorm;
    - encoder stages 1..L: MaxPool, SeparableConv + ReLU, SeparableConv + ReLU, BatchNorm; the last encoder stage
      and the bottleneck (stage L, same width as stage L-1) add Dropout(``dropout``), and the skip is taken after it;
    - decoder stages: nearest Upsample, SeparableConv k=2 'same' (depthwise without bias) + ReLU + BatchNorm,
      concat ``[skip, up]``, SeparableConv + ReLU, SeparableConv + ReLU, BatchNorm;
    - head: Conv 1x1 (bias) -> raw logits.

    A separable conv is a depthwise ``k x k`` conv (groups = in channels, bias) plus a pointwise 1x1 conv (bias).

    Parameter count of the default config (``out_channels=3``): **2,595,267** trainable. With ``out_channels=1``
    (the paper's setting): 2,595,137 trainable + 6,784 BatchNorm running-statistic elements = **2,601,921**, the
    Keras "Total params" of paper 000 Table 2. ``scripts.networks.count_parameters`` returns both numbers.
    Convolution MACs at 1x1x256x256: about 7.12 G.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of output channels (classes: background, kidney, tumour). Defaults to 3.
        channels: output channels of each encoder stage, the last being the bottleneck; ``len(channels) >= 2`` and
            the depth is ``len(channels) - 1``. Defaults to (64, 128, 256, 512, 512).
        strides: downsampling factor (max-pool size) between stages; ``len(strides) == len(channels) - 1``.
            Defaults to (2, 2, 2, 2).
        kernel_size: kernel size of the (depthwise) convolutions; the up-path convs use 2. Defaults to 3.
        act: activation type and arguments (``monai.networks.layers.get_act_layer``). Defaults to ``"relu"``.
        norm: normalisation type and arguments (``monai.networks.layers.get_norm_layer``). Defaults to ``"batch"``
            (torch defaults eps=1e-5, momentum=0.1; Keras used eps=1e-3, momentum=0.99, i.e. torch
            ``("batch", {"eps": 1e-3, "momentum": 0.01})``).
        dropout: element-wise dropout probability on the last encoder stage and the bottleneck. Defaults to 0.5.

    Examples::

        # the bundle's 2D network: 1 CT channel in, 3 classes out
        >>> net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3)
        >>> net(torch.zeros(2, 1, 256, 256)).shape
        torch.Size([2, 3, 256, 256])

        # narrower and shallower, 3D
        >>> net = WPUNet(spatial_dims=3, channels=(16, 32, 64, 64), strides=(2, 2, 2))
        >>> net(torch.zeros(1, 1, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])

    Note:
        Every spatial size of the input must be divisible by ``prod(strides)`` (16 by default); otherwise
        ``forward`` raises a ``ValueError`` naming the input shape. Pad inputs first (``DivisiblePadd(k=16)``) or
        use an inferer ROI that is a multiple of 16.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        strides: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 3,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.encoder = WPUNetEncoder(spatial_dims, in_channels, channels, strides, kernel_size, act, norm, dropout)
        self.decoder = WPUNetDecoder(self.encoder, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape (B, in_channels, H, W[, D]) into raw logits (B, out_channels, H, W[, D]).

        No sigmoid/softmax is applied. Raises ``ValueError`` if a spatial size is not divisible by ``prod(strides)``.
        """
        skips = self.encoder(x)
        return self.decoder(skips)
