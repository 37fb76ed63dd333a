"""Segmentation networks of the bundle and complexity helpers.

Configs refer to them as ``scripts.networks.<Name>`` (e.g. ``"_target_": "scripts.networks.WPUNet"``).
"""

from .blocks import SeparableConv, UpConv, WPBlock, WPDecoderStage, WPEncoderStage
from .complexity import count_macs, count_parameters
from .wp_unet import WPUNet, WPUNetDecoder, WPUNetEncoder

__all__ = [
    "SeparableConv",
    "UpConv",
    "WPBlock",
    "WPDecoderStage",
    "WPEncoderStage",
    "WPUNet",
    "WPUNetDecoder",
    "WPUNetEncoder",
    "count_macs",
    "count_parameters",
]
