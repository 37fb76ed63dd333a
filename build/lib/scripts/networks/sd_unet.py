"""SD-UNet: a depthwise-separable U-Net with weight standardization and GroupNorm."""

from __future__ import annotations

from collections.abc import Sequence

from .separable_unet import SeparableUNet

__all__ = ["SDUNet"]


class SDUNet(SeparableUNet):
    """SD-UNet ("Stripped-Down UNet"): U-Net with depthwise-separable convolutions, weight-standardized depthwise
    kernels and GroupNorm, for 2D (or 3D) segmentation.

    P. K. Gadosey, Y. Li, E. A. Agyekum, T. Zhang, Z. Liu, P. T. Yamak, F. Essaf, "SD-UNet: Stripping down U-Net for
    Segmentation of Biomedical Images on Platforms with Low Computational Budgets", Diagnostics 10(2):110, 2020
    (``papers/003_e960aa08a1d45486.txt``, Sect. 3.1-3.2, Fig. 5-6, Table 1).

    The paper describes the zhixuhao/Keras U-Net skeleton with every convolution but the first made separable. The
    layout that reproduces its "3.9M" parameters (``shared/reference/architectures.md``, "Target 4"):

    - encoder stage 0: Conv(in -> 64, bias) + ReLU, SeparableConv(64 -> 64) + ReLU, GroupNorm(32);
    - encoder stages 1..4: MaxPool, two SeparableConv + ReLU, one GroupNorm(32) ("SD-UNet block"); channels
      128, 256, 512, 1024; the 512 stage and the 1024 bottleneck end with Dropout(0.5);
    - decoder: nearest Upsample(2) + SeparableConv k=2 'same' + ReLU, concat with the skip, SD-UNet block;
    - head: SeparableConv(64 -> ``head_channels``) + ReLU, Conv 1x1 -> ``out_channels`` raw logits.

    A separable conv here is Keras ``SeparableConv2D``: a depthwise ``k x k`` conv without bias, weight-standardized
    when ``k = 3`` (Sect. 3.1: "WS is now implemented on the weights of the depthwise (3 x 3) convolution layers
    only"), and a pointwise 1x1 conv with bias. Weight standardization has no parameters.

    Parameter count: **3,907,973** with ``out_channels=1`` and ``head_channels=2`` (the paper's setting, "3.9M" in
    Table 1); the bundle's KiTS head (``out_channels=3``, ``head_channels=16``) gives 3,908,931. Convolution MACs at
    1x1x256x256: about 7.70 G. ``scripts.networks.count_parameters`` and ``count_macs`` compute both.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of output channels (classes). Defaults to 3.
        channels: output channels of each encoder stage, the last being the bottleneck. Defaults to
            (64, 128, 256, 512, 1024).
        strides: max-pool size between stages; ``len(strides) == len(channels) - 1``. Defaults to (2, 2, 2, 2).
        kernel_size: kernel size of the depthwise convolutions; the up-path convs use 2. Defaults to 3.
        act: activation type and arguments. Defaults to ``"relu"``.
        norm: normalisation type and arguments. Defaults to ``("group", {"num_groups": 32})``; every entry of
            ``channels`` must be divisible by the number of groups.
        dropout: element-wise dropout probability on the last encoder stage and the bottleneck. Defaults to 0.5.
        head_channels: output channels of the head's separable conv (the zhixuhao U-Net's ``Conv2D(2, 3)``).
            Defaults to 2, the paper's; two features are few for three classes, so the bundle configs use 16.

    Examples::

        >>> net = SDUNet(spatial_dims=2, in_channels=1, out_channels=3, head_channels=16)
        >>> net(torch.zeros(1, 1, 256, 256)).shape
        torch.Size([1, 3, 256, 256])

    Note:
        Every spatial size of the input must be divisible by ``prod(strides)`` (16 by default).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512, 1024),
        strides: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 3,
        act: str | tuple = "relu",
        norm: str | tuple = ("group", {"num_groups": 32}),
        dropout: float = 0.5,
        head_channels: int = 2,
    ) -> None:
        _check_group_norm(norm, channels)
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
            depthwise_bias=False,
            weight_standardized=True,
            up_norm=None,
            head_channels=head_channels,
        )


def _check_group_norm(norm: str | tuple, channels: Sequence[int]) -> None:
    """Raise a ``ValueError`` naming the offending width when GroupNorm's groups do not divide every stage width."""
    if not isinstance(norm, (tuple, list)) or len(norm) < 2 or str(norm[0]).lower() != "group":
        return
    groups = int(norm[1].get("num_groups", 1))
    bad = [c for c in channels if int(c) % groups]
    if bad:
        raise ValueError(
            f"GroupNorm with num_groups={groups} needs every entry of channels to be divisible by {groups}, "
            f"got channels={tuple(channels)} (not divisible: {bad}); lower num_groups, e.g. "
            f'norm=("group", {{"num_groups": 8}}).'
        )
