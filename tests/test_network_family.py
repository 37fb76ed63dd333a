"""CPU unit tests of the network family beyond WP-UNet: SD-UNet, the plain (classic) U-Net and Pocket U-Net 2D/3D.

Exact parameter and MAC counts are the papers' (``shared/reference/architectures.md``); they are computed from the
built models, so a change in any layer fails them.
"""

from __future__ import annotations

import unittest
import warnings

import torch
from monai.networks import eval_mode
from monai.utils import set_determinism
from parameterized import parameterized

from scripts.networks import (
    PlainUNet,
    PocketUNet,
    SDUNet,
    WeightStandardizedConv2d,
    WPUNet,
    count_macs,
    count_nonzero_parameters,
    count_parameters,
)
from scripts.networks.blocks import standardize_weight

GN4 = ("group", {"num_groups": 4})

# (class, kwargs, input shape, expected output shape): odd (but divisible) sizes, batch 1 and 2, 2D and 3D
TEST_SHAPES = [
    [SDUNet, {"channels": (4, 8, 16), "strides": (2, 2), "norm": GN4}, (1, 1, 12, 20), (1, 3, 12, 20)],
    [SDUNet, {"channels": (4, 8, 16), "strides": (3, 2), "norm": GN4, "head_channels": 5}, (2, 1, 18, 30), (2, 3, 18, 30)],
    [SDUNet, {"spatial_dims": 3, "channels": (4, 8, 8), "strides": (2, 2), "norm": GN4}, (1, 1, 8, 12, 4), (1, 3, 8, 12, 4)],
    [PlainUNet, {"channels": (4, 8, 16)}, (1, 1, 12, 20), (1, 3, 12, 20)],
    [PlainUNet, {"channels": (4, 8, 16), "out_channels": 2, "in_channels": 2}, (2, 2, 4, 36), (2, 2, 4, 36)],
    [PlainUNet, {"channels": (4, 8, 16), "pool_size": [3, (2, 1)]}, (1, 1, 6, 3), (1, 3, 6, 3)],
    [PlainUNet, {"spatial_dims": 3, "channels": (4, 8), "pool_size": (2, 2, 1)}, (1, 1, 6, 10, 3), (1, 3, 6, 10, 3)],
    [PocketUNet, {"features": 4}, (1, 1, 16, 48), (1, 3, 16, 48)],
    [PocketUNet, {"features": 4, "depth": 2, "pocket": False}, (2, 1, 12, 20), (2, 3, 12, 20)],
    [PocketUNet, {"spatial_dims": 3, "features": 4}, (1, 1, 16, 32, 5), (1, 3, 16, 32, 5)],
    [PocketUNet, {"spatial_dims": 3, "features": 4, "depth": 2, "pool_size": 2}, (2, 1, 8, 12, 4), (2, 3, 8, 12, 4)],
]

# (builder, trainable parameters, Keras total, MACs at 1x1x256x256 or None) - papers 002, 003, 004
TEST_PAPER_COUNTS = [
    ["classic U-Net, paper 002 Table 1", lambda: PlainUNet(out_channels=3), 31_030_723, 31_030_723, 48_100_278_272],
    ["SD-UNet, paper 003 Table 1", lambda: SDUNet(out_channels=1), 3_907_973, 3_907_973, 7_697_858_560],
    ["Pocket U-Net 2D, code of paper 004", lambda: PocketUNet(2, out_channels=2), 53_010, 53_010, 886_702_080],
    ["full U-Net 2D, code of paper 004", lambda: PocketUNet(2, out_channels=2, pocket=False), 1_940_834, 1_940_834,
     3_014_656_000],
    ["Pocket U-Net 3D, paper 004 Table 1", lambda: PocketUNet(3, out_channels=2), 150_066, 150_066, None],
    ["full U-Net 3D, paper 004 Table 1", lambda: PocketUNet(3, out_channels=2, pocket=False), 5_470_850, 5_470_850,
     None],
    ["WP-UNet DS+BN, paper 000 Table 2", lambda: WPUNet(out_channels=1), 2_595_137, 2_601_921, 7_115_636_736],
]


class TestShapesAndGradients(unittest.TestCase):
    def setUp(self) -> None:
        set_determinism(seed=0)

    def tearDown(self) -> None:
        set_determinism(seed=None)

    @parameterized.expand(TEST_SHAPES)
    def test_shape_eval_and_train(self, cls, kwargs, input_shape, expected):
        net = cls(**kwargs)
        with eval_mode(net):
            self.assertEqual(net(torch.randn(input_shape)).shape, expected)
        self.assertEqual(net(torch.randn(input_shape)).shape, expected)

    @parameterized.expand(TEST_SHAPES)
    def test_every_parameter_gets_a_gradient(self, cls, kwargs, input_shape, _):
        net = cls(**kwargs)
        net(torch.randn(input_shape)).square().mean().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        self.assertEqual(missing, [])

    @parameterized.expand([[PlainUNet, {"channels": (4, 8, 16)}], [PocketUNet, {"features": 4, "depth": 2}],
                           [SDUNet, {"channels": (4, 8, 16), "strides": (2, 2), "norm": GN4}]])
    def test_script_and_trace_match_eager(self, cls, kwargs):
        net = cls(**kwargs)
        x = torch.randn(1, 1, 16, 24)
        with eval_mode(net), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.10
            torch.testing.assert_close(torch.jit.script(net)(x), net(x))
            torch.testing.assert_close(torch.jit.trace(net, x)(x), net(x))


class TestPaperCounts(unittest.TestCase):
    @parameterized.expand(TEST_PAPER_COUNTS)
    def test_counts(self, _, build, trainable, keras_total, macs):
        net = build()
        counts = count_parameters(net)
        self.assertEqual((counts["trainable"], counts["keras_total"]), (trainable, keras_total))
        self.assertEqual(count_nonzero_parameters(net), trainable - _zero_initialised(net))
        if macs is not None:
            # every conv keeps the size and every pooling divides exactly, so MACs scale with the pixel count
            self.assertEqual(count_macs(net, (1, 1, 64, 64)) * 16, macs)

    def test_extra_class_adds_features_plus_one(self):
        two = count_parameters(PocketUNet(3, out_channels=2))["trainable"]
        self.assertEqual(count_parameters(PocketUNet(3, out_channels=3))["trainable"] - two, 17)

    def test_sd_unet_bundle_head(self):
        net = SDUNet(out_channels=3, head_channels=16)
        self.assertEqual(count_parameters(net)["trainable"], 3_907_973 - 709 + 1_667)
        self.assertIn("3,908,931", SDUNet.__doc__)
        self.assertIn("3,907,973", SDUNet.__doc__)

    def test_docstrings_state_counts(self):
        for text in ["31,030,723", "48,100,278,272"]:
            self.assertIn(text, PlainUNet.__doc__)
        for text in ["150,066", "5,470,850", "53,010", "1,940,834"]:
            self.assertIn(text, PocketUNet.__doc__)


def _zero_initialised(net: torch.nn.Module) -> int:
    """Parameters that torch initialises to exactly zero (norm biases)."""
    return sum(int((p == 0).sum()) for p in net.parameters())


class TestSDUNetComponents(unittest.TestCase):
    def test_weight_standardization(self):
        torch.manual_seed(0)
        w = torch.randn(6, 1, 3, 3) * 5 + 2
        ws = standardize_weight(w).reshape(6, -1)
        torch.testing.assert_close(ws.mean(dim=1), torch.zeros(6), atol=1e-6, rtol=0)
        torch.testing.assert_close(ws.std(dim=1, correction=0), torch.ones(6), atol=1e-4, rtol=0)

    def test_ws_conv_uses_standardized_kernel_and_is_scale_invariant(self):
        conv = WeightStandardizedConv2d(3, 3, 3, padding=1, groups=3, bias=False)
        x = torch.randn(1, 3, 8, 8)
        expected = torch.nn.functional.conv2d(x, standardize_weight(conv.weight), padding=1, groups=3)
        torch.testing.assert_close(conv(x), expected)
        with torch.no_grad():
            before = conv(x)
            conv.weight.mul_(7.0).add_(3.0)  # affine change of every filter: same standardized kernel
            torch.testing.assert_close(conv(x), before, atol=1e-4, rtol=1e-4)

    def test_sd_unet_layout(self):
        net = SDUNet(out_channels=1)
        ws = [n for n, m in net.named_modules() if isinstance(m, WeightStandardizedConv2d)]
        # 9 blocks x 2 separable convs, minus the regular first conv, plus the head's separable conv
        self.assertEqual(len(ws), 9 * 2 - 1 + 1)
        self.assertTrue(all(m.kernel_size == (3, 3) for n, m in net.named_modules() if n in ws))
        norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.assertEqual(len(norms), 9)  # one per block, none on the up-convs
        self.assertTrue(all(m.num_groups == 32 for m in norms))
        self.assertTrue(all(m.depthwise.bias is None for m in net.modules() if hasattr(m, "depthwise")))

    def test_group_norm_mismatch_names_the_width(self):
        with self.assertRaises(ValueError) as ctx:
            SDUNet(channels=(16, 32, 64), strides=(2, 2))
        self.assertIn("num_groups=32", str(ctx.exception))
        self.assertIn("[16]", str(ctx.exception))


class TestBadArguments(unittest.TestCase):
    @parameterized.expand([
        [PlainUNet, {"channels": (8,)}, "len(channels) must be >= 2"],
        [PlainUNet, {"kernel_size": 4}, "kernel_size must be odd"],
        [PlainUNet, {"channels": (8, 0)}, "positive integer"],
        [PlainUNet, {"channels": (8, 16, 32), "pool_size": [2, (2, 2), 2]}, "one entry per level"],
        [PlainUNet, {"pool_size": (2, 2, 2)}, "spatial_dims=2 entries"],
        [PocketUNet, {"depth": 0}, "depth must be a positive integer"],
        [PlainUNet, {"spatial_dims": 4}, "spatial_dims must be in"],
    ])
    def test_bad_args(self, cls, kwargs, message):
        with self.assertRaises(ValueError) as ctx:
            cls(**kwargs)
        self.assertIn(message, str(ctx.exception))

    @parameterized.expand([
        [PlainUNet(channels=(4, 8, 16)), (1, 1, 16, 18), "divisible"],
        [PocketUNet(3, features=4), (1, 1, 16, 24, 3), "divisible"],
        [PocketUNet(2, features=4), (1, 1, 16, 16, 16), "expected a 4D input"],
    ])
    def test_bad_input(self, net, shape, message):
        with eval_mode(net), self.assertRaises(ValueError) as ctx:
            net(torch.zeros(shape))
        self.assertIn(message, str(ctx.exception))

    def test_pocket_3d_pools_in_plane_only(self):
        net = PocketUNet(3, features=4)
        self.assertEqual(net.divisors, [16, 16, 1])
        self.assertEqual(net(torch.zeros(1, 1, 16, 16, 3)).shape, (1, 3, 16, 16, 3))


if __name__ == "__main__":
    unittest.main()
