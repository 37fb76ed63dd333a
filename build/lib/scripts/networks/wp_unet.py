"""WP-UNet: a U-Net with depthwise-separable convolutions, BatchNorm and dropout (before weight pruning)."""

from __future__ import annotations

from collections.abc import Sequence

from .separable_unet import SeparableUNet

__all__ = ["WPUNet"]


class WPUNet(SeparableUNet):
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
    Convolution MACs at 1x1x256x256: about 7.12 G. (Table 2's baseline "U-Net 5,680,353" matches no configuration
    found in a search of Keras U-Net variants, so the bundle does not build one; its U-Net baseline is the classic
    U-Net of paper 002, ``PlainUNet``.)

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
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            channels,
            strides,
            kernel_size,
            act,
            norm,
            dropout,
            depthwise_bias=True,
            weight_standardized=False,
            up_norm=norm,
            head_channels=None,
        )
