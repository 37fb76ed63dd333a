"""The depthwise-separable U-Net shared by WP-UNet and SD-UNet: encoder, decoder and the whole network.

Split nnU-Net style into an encoder that returns its skips and a decoder built from the encoder object, so that the
channel bookkeeping lives in one place and every stage is addressable by name (``encoder.stages.2``,
``decoder.stages.0``, ``decoder.head``) for pruning and partitioning. ``WPUNet`` and ``SDUNet`` are this network with
their papers' defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import get_act_layer
from monai.networks.layers.factories import Conv

from .blocks import SeparableConv, SeparableDecoderStage, SeparableEncoderStage

__all__ = ["SeparableUNet", "SeparableUNetEncoder", "SeparableUNetDecoder"]


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


class SeparableUNetEncoder(nn.Module):
    """Separable U-Net encoder: ``len(channels)`` stages, the last one being the bottleneck; returns every stage output.

    Stage 0 runs at full resolution and starts with a regular convolution (paper 000 Sect. 3.2 and paper 003
    Sect. 3.2, "Block1"); stage
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
        depthwise_bias: whether the depthwise convs have a bias. Defaults to True.
        weight_standardized: weight-standardize the depthwise kernels. Defaults to False.

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
        depthwise_bias: bool = True,
        weight_standardized: bool = False,
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
        self.depthwise_bias = depthwise_bias
        self.weight_standardized = weight_standardized
        self.divisor: int = math.prod(strides)

        n_stages = len(channels)
        stages = []
        for s in range(n_stages):
            stages.append(
                SeparableEncoderStage(
                    spatial_dims,
                    in_channels if s == 0 else channels[s - 1],
                    channels[s],
                    stride=self.strides[s],
                    kernel_size=kernel_size,
                    act=act,
                    norm=norm,
                    # paper 001 "Proposed Methods" and paper 003 Sect. 3.2 (Block4, Block5): dropout 0.5 before the
                    # up-sampling path, on the deepest encoder stage (drop4) and the bottleneck (drop5).
                    dropout=dropout if s >= n_stages - 2 else 0.0,
                    regular_first=s == 0,
                    depthwise_bias=depthwise_bias,
                    weight_standardized=weight_standardized,
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


class SeparableUNetDecoder(nn.Module):
    """Separable U-Net decoder, built from a ``SeparableUNetEncoder``: one ``SeparableDecoderStage`` per skip level,
    then the head.

    ``stages[i]`` upsamples level ``L - i`` (``L = len(channels) - 1``, deepest first) to level ``L - i - 1``. The
    head is a biased ``1 x 1`` convolution producing raw logits (WP-UNet), or, with ``head_channels``, a separable
    ``k x k`` conv to ``head_channels`` + activation before it (SD-UNet's "two depthwise separable layers with the last
    one as the final prediction layer", paper 003 Sect. 3.2, decoder Block 5).

    Args:
        encoder: the encoder whose ``spatial_dims``, ``out_channels_per_stage``, ``strides``, ``kernel_size``,
            ``act``, ``norm``, ``depthwise_bias`` and ``weight_standardized`` define the decoder.
        out_channels: number of output channels (classes).
        up_norm: norm after each up-conv, or None. Defaults to ``"batch"``.
        head_channels: channels of the extra separable head conv; None for a plain 1x1 head. Defaults to None.
    """

    def __init__(
        self,
        encoder: SeparableUNetEncoder,
        out_channels: int,
        up_norm: str | tuple | None = "batch",
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive_ints("out_channels", [out_channels])
        if head_channels is not None:
            _check_positive_ints("head_channels", [head_channels])
        channels = encoder.out_channels_per_stage
        stages = []
        for level in range(len(channels) - 2, -1, -1):
            stages.append(
                SeparableDecoderStage(
                    encoder.spatial_dims,
                    channels[level + 1],
                    channels[level],
                    scale_factor=encoder.strides[level + 1],
                    up_norm=up_norm,
                    kernel_size=encoder.kernel_size,
                    act=encoder.act,
                    norm=encoder.norm,
                    depthwise_bias=encoder.depthwise_bias,
                    weight_standardized=encoder.weight_standardized,
                )
            )
        self.stages = nn.ModuleList(stages)
        conv_type = Conv[Conv.CONV, encoder.spatial_dims]
        self.head: nn.Module
        if head_channels is None:
            self.head = conv_type(channels[0], out_channels, kernel_size=1, bias=True)
        else:
            self.head = nn.Sequential(
                SeparableConv(
                    encoder.spatial_dims, channels[0], head_channels, encoder.kernel_size, encoder.depthwise_bias,
                    weight_standardized=encoder.weight_standardized,
                ),
                get_act_layer(encoder.act),
                conv_type(head_channels, out_channels, kernel_size=1, bias=True),
            )

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decode the encoder outputs (shallowest first, bottleneck last) into raw logits."""
        x = skips[-1]
        for i, stage in enumerate(self.stages):
            x = stage(x, skips[-(i + 2)])
        return self.head(x)


class SeparableUNet(nn.Module):
    """Depthwise-separable U-Net (2D or 3D): ``SeparableUNetEncoder`` + ``SeparableUNetDecoder``.

    Use ``WPUNet`` or ``SDUNet`` for the papers' networks; this class takes every switch explicitly.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        channels: output channels of each encoder stage, the last being the bottleneck (``len >= 2``).
        strides: max-pool size between stages; ``len(strides) == len(channels) - 1``.
        kernel_size: kernel size of the (depthwise) convolutions; the up-path convs use 2.
        act: activation type and arguments (``monai.networks.layers.get_act_layer``).
        norm: normalisation type and arguments of every block (``monai.networks.layers.get_norm_layer``).
        dropout: element-wise dropout probability on the last encoder stage and the bottleneck.
        depthwise_bias: whether the depthwise convs have a bias.
        weight_standardized: weight-standardize the ``kernel_size`` depthwise kernels.
        up_norm: norm after each up-conv, or None.
        head_channels: channels of a separable conv + activation before the 1x1 head, or None.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: int,
        act: str | tuple,
        norm: str | tuple,
        dropout: float,
        depthwise_bias: bool,
        weight_standardized: bool,
        up_norm: str | tuple | None,
        head_channels: int | None,
    ) -> None:
        super().__init__()
        self.encoder = SeparableUNetEncoder(
            spatial_dims, in_channels, channels, strides, kernel_size, act, norm, dropout, depthwise_bias,
            weight_standardized,
        )
        self.decoder = SeparableUNetDecoder(self.encoder, out_channels, up_norm, head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape (B, in_channels, H, W[, D]) into raw logits (B, out_channels, H, W[, D]).

        No sigmoid/softmax is applied. Raises ``ValueError`` if a spatial size is not divisible by ``prod(strides)``.
        """
        return self.decoder(self.encoder(x))
