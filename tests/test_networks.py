"""CPU unit tests of ``scripts.networks`` (WP-UNet and its complexity helpers); every case runs in well under 1 s."""

from __future__ import annotations

import unittest
import warnings

import torch
from monai.networks import eval_mode
from monai.utils import set_determinism
from parameterized import parameterized

from scripts.networks import SeparableConv, WPUNet, count_macs, count_parameters

NARROW = {"channels": (8, 16, 32, 64, 64)}

# (constructor kwargs, input shape, expected output shape)
TEST_SHAPES = [
    [{**NARROW}, (1, 1, 32, 32), (1, 3, 32, 32)],
    [{**NARROW}, (2, 1, 32, 32), (2, 3, 32, 32)],
    [{**NARROW}, (2, 1, 48, 80), (2, 3, 48, 80)],
    [{"channels": (4, 8, 16), "strides": (2, 2)}, (2, 1, 32, 32), (2, 3, 32, 32)],
    [{"channels": (4, 8, 16), "strides": (2, 2)}, (1, 1, 12, 20), (1, 3, 12, 20)],
    [{"channels": (4, 8), "strides": (2,), "out_channels": 1, "in_channels": 2}, (2, 2, 6, 10), (2, 1, 6, 10)],
    [{"channels": (4, 8, 16), "strides": (3, 2), "dropout": 0.0}, (1, 1, 30, 24), (1, 3, 30, 24)],
    [{"channels": (4, 8, 16), "strides": (2, 2), "kernel_size": 5, "norm": "instance"}, (2, 1, 16, 16), (2, 3, 16, 16)],
    [{"channels": (4, 8, 16), "strides": (2, 2), "act": ("leakyrelu", {"negative_slope": 0.1})},
     (1, 1, 8, 8), (1, 3, 8, 8)],
    [{"spatial_dims": 3, "channels": (4, 8, 16), "strides": (2, 2)}, (1, 1, 16, 16, 16), (1, 3, 16, 16, 16)],
    [{"spatial_dims": 3, "channels": (4, 8, 16, 16), "strides": (2, 2, 2)}, (2, 1, 16, 8, 24), (2, 3, 16, 8, 24)],
]

# (constructor kwargs, substring expected in the ValueError message)
TEST_BAD_ARGS = [
    [{"spatial_dims": 1}, "spatial_dims must be in (2, 3)"],
    [{"spatial_dims": 4}, "spatial_dims must be in (2, 3)"],
    [{"in_channels": 0}, "in_channels must be a positive integer"],
    [{"out_channels": 0}, "out_channels must be a positive integer"],
    [{"channels": (16,), "strides": ()}, "len(channels) must be >= 2"],
    [{"channels": (16, 0, 32), "strides": (2, 2)}, "channels must be a positive integer"],
    [{"channels": (16, 32, 64), "strides": (2, 2, 2)}, "len(channels) - 1"],
    [{"channels": (16, 32, 64)}, "len(channels) - 1"],
    [{"channels": (16, 32), "strides": (0,)}, "strides must be a positive integer"],
    [{"kernel_size": 0}, "kernel_size must be a positive integer"],
    [{"dropout": 1.0}, "0 <= dropout < 1"],
    [{"dropout": -0.1}, "0 <= dropout < 1"],
]

# (constructor kwargs, input shape that violates the divisibility or rank requirement, expected message part)
TEST_BAD_INPUTS = [
    [{**NARROW}, (1, 1, 32, 40), "divisible by prod(strides)=16"],
    [{**NARROW}, (1, 1, 30, 32), "[1, 1, 30, 32]"],
    [{"channels": (4, 8, 16), "strides": (3, 2)}, (1, 1, 12, 9), "divisible by prod(strides)=6"],
    [{"spatial_dims": 3, "channels": (4, 8, 16), "strides": (2, 2)}, (1, 1, 16, 16, 18), "divisible"],
    [{**NARROW}, (1, 1, 32, 32, 32), "expected a 4D input"],
]


def _small_net(**kwargs) -> WPUNet:
    return WPUNet(**{"channels": (4, 8, 16, 32, 32), **kwargs})


class TestWPUNet(unittest.TestCase):
    def setUp(self) -> None:
        set_determinism(seed=0)

    def tearDown(self) -> None:
        set_determinism(seed=None)

    @parameterized.expand(TEST_SHAPES)
    def test_shape(self, kwargs, input_shape, expected_shape):
        net = WPUNet(**kwargs)
        with eval_mode(net):
            out = net(torch.randn(input_shape))
        self.assertEqual(out.shape, expected_shape)

    def test_train_mode_shape(self):
        net = _small_net()
        out = net(torch.randn(2, 1, 32, 48))
        self.assertEqual(out.shape, (2, 3, 32, 48))

    def test_gradients_reach_first_conv_and_head(self):
        net = _small_net()
        out = net(torch.randn(2, 1, 32, 32))
        out.square().mean().backward()
        first_conv = net.encoder.stages[0].block.conv1
        for name, param in [("first conv", first_conv.weight), ("head", net.decoder.head.weight)]:
            self.assertIsNotNone(param.grad, name)
            self.assertGreater(param.grad.abs().sum().item(), 0.0, name)
        self.assertTrue(all(p.grad is not None for p in net.parameters()))

    @parameterized.expand([[1, 2_595_137, 6_784, 2_601_921], [3, 2_595_267, 6_784, 2_602_051]])
    def test_parameter_count_default(self, out_channels, trainable, stats, keras_total):
        counts = count_parameters(WPUNet(out_channels=out_channels))
        self.assertEqual(counts, {"trainable": trainable, "norm_running_stats": stats, "keras_total": keras_total})

    def test_parameter_count_per_stage(self):
        """Stage counts of ``shared/reference/architectures.md`` Target 1 (paper 000 Table 2, 1 output)."""
        net = WPUNet(out_channels=1)
        enc = [count_parameters(s)["trainable"] for s in net.encoder.stages]
        self.assertEqual(enc, [5_568, 27_008, 103_168, 402_944, 536_576])
        dec_blocks = [count_parameters(s.block)["trainable"] for s in net.decoder.stages]
        self.assertEqual(dec_blocks, [803_840, 205_312, 53_504, 14_464])
        up = sum(count_parameters(s.up)["trainable"] for s in net.decoder.stages)
        self.assertEqual(up, 440_768 + 1_920)
        self.assertEqual(count_parameters(net.decoder.head)["trainable"], 65)

    def test_docstring_states_count(self):
        self.assertIn("2,595,267", WPUNet.__doc__)
        self.assertIn("2,601,921", WPUNet.__doc__)

    def test_macs_default(self):
        net = WPUNet(out_channels=1)
        # shared/reference/architectures.md Target 1: 7,115,636,736 MACs at 1x1x256x256 with one output. All convs
        # keep the size and every pooling divides exactly, so MACs scale with the pixel count: 64x64 is 1/16 of it
        # and runs in a fraction of the time.
        self.assertEqual(count_macs(net, (1, 1, 64, 64)) * 16, 7_115_636_736)
        self.assertTrue(net.training)  # count_macs restores the mode

    @parameterized.expand(TEST_BAD_ARGS)
    def test_bad_args(self, kwargs, message):
        with self.assertRaises(ValueError) as ctx:
            WPUNet(**kwargs)
        self.assertIn(message, str(ctx.exception))

    @parameterized.expand(TEST_BAD_INPUTS)
    def test_bad_input(self, kwargs, input_shape, message):
        net = WPUNet(**kwargs)
        with eval_mode(net), self.assertRaises(ValueError) as ctx:
            net(torch.zeros(input_shape))
        self.assertIn(message, str(ctx.exception))

    def test_named_stages(self):
        names = dict(WPUNet(channels=(4, 8, 16), strides=(2, 2)).named_modules())
        for name in ["encoder.stages.0", "encoder.stages.2", "decoder.stages.0", "decoder.stages.1", "decoder.head"]:
            self.assertIn(name, names)
        self.assertNotIn("encoder.stages.3", names)
        self.assertNotIn("decoder.stages.2", names)

    def test_encoder_attributes_and_dropout_placement(self):
        net = WPUNet(channels=(4, 8, 16, 32), strides=(2, 3, 2), dropout=0.3)
        self.assertEqual(net.encoder.out_channels_per_stage, (4, 8, 16, 32))
        self.assertEqual(net.encoder.strides, (1, 2, 3, 2))
        self.assertEqual(net.encoder.divisor, 12)
        dropouts = [getattr(s.block.dropout, "p", None) for s in net.encoder.stages]
        self.assertEqual(dropouts, [None, None, 0.3, 0.3])
        skips = net.encoder(torch.zeros(1, 1, 24, 24))
        expected = [(1, 4, 24, 24), (1, 8, 12, 12), (1, 16, 4, 4), (1, 32, 2, 2)]
        self.assertEqual([tuple(s.shape) for s in skips], expected)

    def test_eval_determinism(self):
        net = _small_net()
        x = torch.randn(2, 1, 32, 32)
        with eval_mode(net):
            torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)
        # dropout is active in training mode, so two passes differ
        net.train()
        self.assertFalse(torch.equal(net(x), net(x)))

    def test_trace_matches_eager(self):
        net = WPUNet(channels=(4, 8, 16), strides=(2, 2))
        x = torch.randn(1, 1, 16, 16)
        with eval_mode(net), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.10
            traced = torch.jit.trace(net, x)
            other = torch.randn(2, 1, 24, 8)  # the trace is not tied to the example's shape
            torch.testing.assert_close(traced(other), net(other))

    def test_script_matches_eager(self):
        net = WPUNet(channels=(4, 8, 16), strides=(2, 2))
        x = torch.randn(2, 1, 16, 24)
        with eval_mode(net), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(net)
            torch.testing.assert_close(scripted(x), net(x))
            with self.assertRaises(Exception) as ctx:  # TorchScript wraps the ValueError in torch.jit.Error
                scripted(torch.zeros(1, 1, 16, 18))
        self.assertIn("divisible", str(ctx.exception))


class TestSeparableConv(unittest.TestCase):
    @parameterized.expand([[2, 3, True], [2, 2, False], [3, 2, False], [3, 3, True]])
    def test_same_size_and_params(self, spatial_dims, kernel_size, depthwise_bias):
        conv = SeparableConv(spatial_dims, 4, 6, kernel_size, depthwise_bias=depthwise_bias)
        x = torch.randn((1, 4) + (5,) * spatial_dims)
        self.assertEqual(conv(x).shape, (1, 6) + (5,) * spatial_dims)
        expected = 4 * kernel_size**spatial_dims + 4 * depthwise_bias + 4 * 6 + 6
        self.assertEqual(count_parameters(conv)["trainable"], expected)

    def test_even_kernel_pads_at_end_like_keras(self):
        """Keras/TF 'same' with an even kernel pads the extra row/column after the input; torch 'same' agrees."""
        conv = SeparableConv(2, 3, 2, kernel_size=2, depthwise_bias=False)
        x = torch.randn(1, 3, 5, 7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch warns about the padded copy for even kernels
            expected = torch.nn.functional.conv2d(x, conv.depthwise.weight, padding="same", groups=3)
        torch.testing.assert_close(conv.depthwise(conv.pad(x)), expected)
        manual = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.depthwise.weight, groups=3)
        torch.testing.assert_close(conv.depthwise(conv.pad(x)), manual)


class TestComplexity(unittest.TestCase):
    def test_count_macs_conventions(self):
        conv = torch.nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.assertEqual(count_macs(conv, (1, 2, 8, 8)), 4 * 8 * 8 * 1 * 9)
        convt = torch.nn.ConvTranspose2d(2, 4, 2, stride=2)
        self.assertEqual(count_macs(convt, (1, 2, 8, 8)), 2 * 8 * 8 * 4 * 4)
        self.assertEqual(count_macs(torch.nn.Linear(5, 3), (2, 5)), 2 * 3 * 5)

    def test_count_parameters_frozen_and_no_stats(self):
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2, track_running_stats=False))
        net[0].weight.requires_grad_(False)
        self.assertEqual(count_parameters(net), {"trainable": 2 + 4, "norm_running_stats": 0, "keras_total": 6})


if __name__ == "__main__":
    unittest.main()
