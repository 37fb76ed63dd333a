"""Segmentation networks of the bundle and complexity helpers. Imports nothing else of ``scripts``.

Configs refer to them as ``scripts.networks.<Name>`` (e.g. ``"_target_": "scripts.networks.WPUNet"``); the overlays
in ``configs/networks/`` select one network for training, evaluation and inference.
"""

from .blocks import (
    SeparableBlock,
    SeparableConv,
    SeparableDecoderStage,
    SeparableEncoderStage,
    UpConv,
    WeightStandardizedConv2d,
    WeightStandardizedConv3d,
)
from .complexity import count_macs, count_nonzero_parameters, count_parameters
from .plain_unet import PlainConvBlock, PlainUNet, PocketUNet
from .sd_unet import SDUNet
from .separable_unet import SeparableUNet, SeparableUNetDecoder, SeparableUNetEncoder
from .wp_unet import WPUNet

__all__ = [
    "PlainConvBlock",
    "PlainUNet",
    "PocketUNet",
    "SDUNet",
    "SeparableBlock",
    "SeparableConv",
    "SeparableDecoderStage",
    "SeparableEncoderStage",
    "SeparableUNet",
    "SeparableUNetDecoder",
    "SeparableUNetEncoder",
    "UpConv",
    "WPUNet",
    "WeightStandardizedConv2d",
    "WeightStandardizedConv3d",
    "count_macs",
    "count_nonzero_parameters",
    "count_parameters",
]
