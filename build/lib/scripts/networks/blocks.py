"""Building blocks of the depthwise-separable U-Nets (WP-UNet and SD-UNet).

Each class is one block of the network, built from MONAI layer factories indexed by ``spatial_dims`` so that the
same code serves 2D and 3D. The layer layout follows ``papers/000_50dac675aca84b7d.txt`` (Sect. 3.2, Fig. 4 "WP-UNet
block"), ``papers/001_8d0b8a849be3784f.txt`` ("Proposed Methods", Fig. 3) and ``papers/003_e960aa08a1d45486.txt``
(SD-UNet, Sect. 3.1-3.2, Fig. 5 "SD-UNet block"); the exact order of activations, normalisation and the up-path
convolution is the one that reproduces the papers' parameter counts, see ``WPUNet`` and ``SDUNet``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers import get_act_layer, get_norm_layer
from monai.networks.layers.factories import Conv, Dropout, Pad, Pool

__all__ = [
    "WeightStandardizedConv2d",
    "WeightStandardizedConv3d",
    "SeparableConv",
    "SeparableBlock",
    "UpConv",
    "SeparableEncoderStage",
    "SeparableDecoderStage",
]


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weight standardization: each output filter to zero mean and unit std, ``(w - mean) / (std + eps)``.

    Qiao et al., "Weight Standardization", arXiv:1903.10520, as used by SD-UNet (``papers/003_e960aa08a1d45486.txt``,
    Sect. 2.3, Eq. 5, and Sect. 3.1, Eq. 7). The std is the population std (no Bessel correction), so a one-element
    filter gives 0 instead of NaN and the function has no data-dependent branch (traceable, exportable); the
    constant factor against the unbiased std is absorbed by the GroupNorm that follows.
    """
    flat = weight.reshape(weight.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, correction=0)
    return ((flat - mean) / (std + eps)).reshape_as(weight)


class WeightStandardizedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel is weight-standardized (``standardize_weight``) at every forward pass.

    Same parameters as ``nn.Conv2d`` (no extra ones), so parameter counts and state dicts are unchanged. Because the
    standardized kernel is computed from ``self.weight`` inside ``forward``, ``torch.nn.utils.prune`` masks still
    apply to ``weight``; note that a zeroed raw weight is not zero after standardization.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight), self.bias)


class WeightStandardizedConv3d(nn.Conv3d):
    """``nn.Conv3d`` with a weight-standardized kernel; see ``WeightStandardizedConv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight), self.bias)


_WS_CONV = {2: WeightStandardizedConv2d, 3: WeightStandardizedConv3d}


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
        weight_standardized: standardize the depthwise kernel at every forward pass (SD-UNet, paper 003 Sect. 3.1).
            Defaults to False.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        depthwise_bias: bool = True,
        pointwise_bias: bool = True,
        weight_standardized: bool = False,
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        depthwise_type = _WS_CONV[spatial_dims] if weight_standardized else conv_type
        self.pad, padding = _same_padding(spatial_dims, kernel_size)
        self.depthwise = depthwise_type(
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


class SeparableBlock(nn.Module):
    """Block of the separable U-Nets: two convolutions, each followed by an activation, then one norm (and dropout).

    Layout ``conv1 -> act -> SeparableConv -> act -> norm -> dropout``: the "WP-UNet block" (paper 000 Sect. 3.2 /
    Fig. 4: "two depthwise separable convolution layers, two activation layers and one normalization layer") and the
    "SD-UNet block" (paper 003 Sect. 3.2 / Fig. 5, with GroupNorm and weight-standardized depthwise kernels).
    ``conv1`` is a ``SeparableConv`` except in the first encoder block, where both papers use a regular convolution.

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
        depthwise_bias: whether the depthwise convs have a bias (WP-UNet: yes; SD-UNet, as Keras
            ``SeparableConv2D``: no). Defaults to True.
        weight_standardized: weight-standardize the depthwise kernels (SD-UNet). Defaults to False.
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
        depthwise_bias: bool = True,
        weight_standardized: bool = False,
    ) -> None:
        super().__init__()
        self.conv1: nn.Module
        if regular_first:
            pad, padding = _same_padding(spatial_dims, kernel_size)
            conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=padding, bias=True)
            self.conv1 = conv if kernel_size % 2 == 1 else nn.Sequential(pad, conv)
        else:
            self.conv1 = SeparableConv(
                spatial_dims, in_channels, out_channels, kernel_size, depthwise_bias,
                weight_standardized=weight_standardized,
            )
        self.act1 = get_act_layer(act)
        self.conv2 = SeparableConv(
            spatial_dims, out_channels, out_channels, kernel_size, depthwise_bias,
            weight_standardized=weight_standardized,
        )
        self.act2 = get_act_layer(act)
        self.norm = get_norm_layer(norm, spatial_dims=spatial_dims, channels=out_channels)
        # Keras ``Dropout`` (what the papers used) drops single elements, not whole channels, hence dropout_dim 1.
        self.dropout = Dropout[Dropout.DROPOUT, 1](dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.dropout(self.norm(x))


class UpConv(nn.Module):
    """Up-path convolution: nearest upsampling, a separable ``k x k`` 'same' conv, activation, optional norm.

    This is the zhixuhao/Keras U-Net ``UpSampling2D(2)`` + ``Conv2D(k=2, padding="same")`` up-convolution with the
    conv made separable (Keras ``SeparableConv2D``: depthwise without bias, pointwise with bias); WP-UNet adds a norm
    after it, SD-UNet does not.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels (from the deeper level).
        out_channels: number of output channels (the skip's channels).
        scale_factor: upsampling factor, equal to the stride of the matching encoder stage. Defaults to 2.
        kernel_size: kernel size of the separable conv. Defaults to 2 (even: padded at the end, as Keras 'same').
        act: activation type and arguments. Defaults to ``"relu"``.
        norm: normalisation type and arguments, or None for no norm (``nn.Identity``). Defaults to ``"batch"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        scale_factor: int = 2,
        kernel_size: int = 2,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=scale_factor, mode="nearest")
        self.conv = SeparableConv(spatial_dims, in_channels, out_channels, kernel_size, depthwise_bias=False)
        self.act = get_act_layer(act)
        self.norm = (
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=out_channels) if norm is not None else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(self.upsample(x))))


class SeparableEncoderStage(nn.Module):
    """Encoder stage: max-pooling by ``stride`` (identity when 1), then a ``SeparableBlock``.

    The stage output is both the input of the next stage and the skip connection of this level; when the block has
    dropout, the skip is the post-dropout tensor (as ``drop4`` in the zhixuhao Keras U-Net).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels.
        stride: pooling kernel size and stride applied before the block; 1 means no pooling. Defaults to 1.
        block_kwargs: the remaining ``SeparableBlock`` arguments (kernel_size, act, norm, dropout, regular_first,
            depthwise_bias, weight_standardized).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, **block_kwargs) -> None:
        super().__init__()
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride) if stride > 1 else nn.Identity()
        self.block = SeparableBlock(spatial_dims, in_channels, out_channels, **block_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pool(x))


class SeparableDecoderStage(nn.Module):
    """Decoder stage: ``UpConv`` of the deeper features, concatenation ``[skip, up]``, then a ``SeparableBlock``.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the deeper features entering the stage.
        skip_channels: channels of the skip connection; also the output channels of the up-conv and the block.
        scale_factor: upsampling factor (stride of the encoder stage below this level). Defaults to 2.
        up_kernel_size: kernel size of the up-conv. Defaults to 2.
        up_norm: norm of the up-conv (None: no norm). Defaults to ``"batch"``.
        block_kwargs: the remaining ``SeparableBlock`` arguments (kernel_size, act, norm, depthwise_bias,
            weight_standardized); ``act`` is also the up-conv's activation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        scale_factor: int = 2,
        up_kernel_size: int = 2,
        up_norm: str | tuple | None = "batch",
        **block_kwargs,
    ) -> None:
        super().__init__()
        act = block_kwargs.get("act", "relu")
        self.up = UpConv(spatial_dims, in_channels, skip_channels, scale_factor, up_kernel_size, act, up_norm)
        self.block = SeparableBlock(spatial_dims, 2 * skip_channels, skip_channels, **block_kwargs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))
