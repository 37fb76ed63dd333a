"""Building blocks of the WP-UNet (depthwise-separable U-Net with BatchNorm and dropout).

Each class is one block of the network, built from MONAI layer factories indexed by ``spatial_dims`` so that the
same code serves 2D and 3D. The layer layout follows ``papers/000_50dac675aca84b7d.txt`` (Sect. 3.2, Fig. 4 "WP-UNet
block") and ``papers/001_8d0b8a849be3784f.txt`` ("Proposed Methods", Fig. 3); the exact order of activations,
normalisation and the up-path convolution is the one that reproduces the paper's parameter count (Table 2), see
``WPUNet``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers import get_act_layer, get_norm_layer
from monai.networks.layers.factories import Conv, Dropout, Pad, Pool

__all__ = ["SeparableConv", "WPBlock", "UpConv", "WPEncoderStage", "WPDecoderStage"]


def _same_padding(spatial_dims: int, kernel_size: int) -> tuple[nn.Module, int]:
    """Padding that keeps the spatial size at stride 1, as ``(explicit pad module, conv padding)``.

    Odd kernels pad symmetrically inside the conv. Even kernels need one more row/column on one side; Keras/TensorFlow
    ``padding="same"`` puts it at the end, and an explicit constant pad does the same without the copy-and-warn path
    of torch's ``padding="same"`` for even kernels.
    """
    if kernel_size % 2 == 1:
        return nn.Identity(), kernel_size // 2
    before = (kernel_size - 1) // 2
    after = kernel_size - 1 - before
    return Pad[Pad.CONSTANTPAD, spatial_dims]((before, after) * spatial_dims, 0.0), 0


class SeparableConv(nn.Module):
    """Depthwise-separable convolution: a per-channel ``k x k`` conv followed by a pointwise ``1 x 1`` conv.

    Equivalent to Keras ``SeparableConv2D`` with depth multiplier 1 and stride 1 ('same' padding). Parameters:
    ``in_channels * k**spatial_dims (+ in_channels)`` for the depthwise part and ``in_channels * out_channels
    + out_channels`` for the pointwise part.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels.
        kernel_size: depthwise kernel size. Defaults to 3.
        depthwise_bias: whether the depthwise conv has a bias. Defaults to True. Keras ``SeparableConv2D`` has a
            single bias after the pointwise conv, so its layers correspond to ``depthwise_bias=False``.
        pointwise_bias: whether the pointwise conv has a bias. Defaults to True.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        depthwise_bias: bool = True,
        pointwise_bias: bool = True,
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.pad, padding = _same_padding(spatial_dims, kernel_size)
        self.depthwise = conv_type(
            in_channels,
            in_channels,
            kernel_size=kernel_size,
            padding=padding,
            groups=in_channels,
            bias=depthwise_bias,
        )
        self.pointwise = conv_type(in_channels, out_channels, kernel_size=1, bias=pointwise_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(self.pad(x)))


class WPBlock(nn.Module):
    """WP-UNet block: two convolutions, each followed by an activation, then one normalisation (and dropout).

    Layout ``conv1 -> act -> SeparableConv -> act -> norm -> dropout`` (paper 000 Sect. 3.2 / Fig. 4: "two depthwise
    separable convolution layers, two activation layers and one normalization layer"). ``conv1`` is a
    ``SeparableConv`` except in the first encoder block, where the paper uses a regular convolution.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels (of both convolutions).
        kernel_size: convolution kernel size. Defaults to 3.
        act: activation type and arguments, as for ``monai.networks.layers.get_act_layer``. Defaults to ``"relu"``.
        norm: normalisation type and arguments, as for ``monai.networks.layers.get_norm_layer``. Defaults to
            ``"batch"``.
        dropout: element-wise dropout probability after the norm; 0 gives an ``nn.Identity``. Defaults to 0.0.
        regular_first: use a regular (dense, biased) convolution as ``conv1``. Defaults to False.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        dropout: float = 0.0,
        regular_first: bool = False,
    ) -> None:
        super().__init__()
        self.conv1: nn.Module
        if regular_first:
            pad, padding = _same_padding(spatial_dims, kernel_size)
            conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=padding, bias=True)
            self.conv1 = conv if kernel_size % 2 == 1 else nn.Sequential(pad, conv)
        else:
            self.conv1 = SeparableConv(spatial_dims, in_channels, out_channels, kernel_size)
        self.act1 = get_act_layer(act)
        self.conv2 = SeparableConv(spatial_dims, out_channels, out_channels, kernel_size)
        self.act2 = get_act_layer(act)
        self.norm = get_norm_layer(norm, spatial_dims=spatial_dims, channels=out_channels)
        # Keras ``Dropout`` (what the paper used) drops single elements, not whole channels, hence dropout_dim 1.
        self.dropout = Dropout[Dropout.DROPOUT, 1](dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.dropout(self.norm(x))


class UpConv(nn.Module):
    """Up-path convolution: nearest upsampling, a separable ``k x k`` 'same' conv, activation, normalisation.

    This is the zhixuhao/Keras U-Net ``UpSampling2D(2)`` + ``Conv2D(k=2, padding="same")`` up-convolution with the
    conv made separable (Keras ``SeparableConv2D``: depthwise without bias, pointwise with bias) and a norm added.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels (from the deeper level).
        out_channels: number of output channels (the skip's channels).
        scale_factor: upsampling factor, equal to the stride of the matching encoder stage. Defaults to 2.
        kernel_size: kernel size of the separable conv. Defaults to 2 (even: padded at the end, as Keras 'same').
        act: activation type and arguments. Defaults to ``"relu"``.
        norm: normalisation type and arguments. Defaults to ``"batch"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        scale_factor: int = 2,
        kernel_size: int = 2,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=scale_factor, mode="nearest")
        self.conv = SeparableConv(spatial_dims, in_channels, out_channels, kernel_size, depthwise_bias=False)
        self.act = get_act_layer(act)
        self.norm = get_norm_layer(norm, spatial_dims=spatial_dims, channels=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(self.upsample(x))))


class WPEncoderStage(nn.Module):
    """Encoder stage: max-pooling by ``stride`` (identity when 1), then a ``WPBlock``.

    The stage output is both the input of the next stage and the skip connection of this level; when the block has
    dropout, the skip is the post-dropout tensor (as ``drop4`` in the zhixuhao Keras U-Net).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels.
        stride: pooling kernel size and stride applied before the block; 1 means no pooling. Defaults to 1.
        kernel_size: convolution kernel size. Defaults to 3.
        act: activation type and arguments. Defaults to ``"relu"``.
        norm: normalisation type and arguments. Defaults to ``"batch"``.
        dropout: dropout probability after the block's norm. Defaults to 0.0.
        regular_first: first conv of the block is a regular convolution (the network's first stage). Defaults to False.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        dropout: float = 0.0,
        regular_first: bool = False,
    ) -> None:
        super().__init__()
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride) if stride > 1 else nn.Identity()
        self.block = WPBlock(
            spatial_dims, in_channels, out_channels, kernel_size, act, norm, dropout, regular_first=regular_first
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pool(x))


class WPDecoderStage(nn.Module):
    """Decoder stage: ``UpConv`` of the deeper features, concatenation ``[skip, up]``, then a ``WPBlock``.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the deeper features entering the stage.
        skip_channels: channels of the skip connection; also the output channels of the up-conv and the block.
        scale_factor: upsampling factor (stride of the encoder stage below this level). Defaults to 2.
        kernel_size: kernel size of the block's convolutions. Defaults to 3.
        up_kernel_size: kernel size of the up-conv. Defaults to 2.
        act: activation type and arguments. Defaults to ``"relu"``.
        norm: normalisation type and arguments. Defaults to ``"batch"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        scale_factor: int = 2,
        kernel_size: int = 3,
        up_kernel_size: int = 2,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        self.up = UpConv(spatial_dims, in_channels, skip_channels, scale_factor, up_kernel_size, act, norm)
        self.block = WPBlock(spatial_dims, 2 * skip_channels, skip_channels, kernel_size, act, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))
