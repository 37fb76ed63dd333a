"""The fastest safe way to run a 2D network on this hardware: precision, memory format, folding, batch size.

:func:`choose_fast_path` resolves every ``"auto"`` from the hardware and the network, :func:`prepare_network`
applies the choice to a copy of the network, :func:`predict_labels` runs a slice batch and returns uint8 labels.
``configs/inference.json`` exposes each choice as a config id (``--precision fp32`` etc.), so "auto" can always be
overridden. The policy follows measurements on a 2-core Xeon with AVX-512 BF16 and AMX (``docs/performance.md``,
``bench/run.py``; 256x256 slices, batch 1, 2 threads, seconds per slice, random weights):

=====================  ======  ==============  ======  ===================
network                fp32    channels_last   bf16    bf16+channels_last
=====================  ======  ==============  ======  ===================
WP-UNet (paper)        0.46    0.14            0.28    0.061
WP-UNet channel-0.5    0.092   0.049           0.10    0.027
Pocket U-Net 2D        0.023   0.012           0.018   0.007
nnU-Net 2D (ref.)      0.18    0.23            0.13    0.14
=====================  ======  ==============  ======  ===================

so on such a CPU "auto" is bf16 autocast + channels_last; without AVX-512 BF16/AMX it is fp32 + channels_last
(bf16 is emulated there and slower) when torch runs the network.

AVX2 class (issue 17; 2-core AMD EPYC, AVX2 only, no bf16; ``bench/int8_bench.py``; 256x256 SYNTHETIC slices,
random weights, ms per slice, 2 threads unless noted). Measured on a SHARED machine under load average 11-21
(four other jobs): absolute numbers are several times an idle machine's, torch's 2-thread runs suffer most from
the contention; compare within a row. The issue's own idle figure for dense WP-UNet: ONNX Runtime 129 ms vs 229
ms for torch fp32 + channels_last.

==========================  =====  =============  ========  ========  ===========  ===========  ==========
network (batch)             torch  torch          ORT fp32  ORT int8  torch CL     ORT fp32     ORT fp32
                            fp32   channels_last                      1 thread     1 thread     batch 4/8
==========================  =====  =============  ========  ========  ===========  ===========  ==========
Pocket U-Net 2D (1)         2019   856            275       219       171          155          174 / 162
WP-UNet channel-0.5 (1)     6545   3164           660       710       887          495          441 / 654
SD-UNet (1)                 3714   2115           723       531       686          418          648 / 593
WP-UNet dense (1)           3834   2122           579       572       704          405          699 / 796
==========================  =====  =============  ========  ========  ===========  ===========  ==========

so on a CPU without native bf16 ``backend auto`` runs ONNX Runtime fp32 with slice batches of 4 for the depthwise
family (:data:`AVX2_RULES`, :func:`choose_backend`). End to end on an idle machine (``bench/backend_e2e.py``,
process time, 512x512x200 SYNTHETIC CT) that is 1.67x (dense WP-UNet) and 1.28x (channel-pruned) faster than torch,
at 450-850 MB more peak RSS (ONNX Runtime's memory arena; without it the speed-up is gone); for Pocket U-Net
(plain family) ONNX Runtime was 0.94x, so plain networks keep torch. int8 is not chosen (opt-in,
``configs/inference_int8.json``). The default ``backend`` stays ``torch`` (memory, and no file written beside
the weights).

On CUDA "auto" is fp16 autocast with large slice batches; channels_last only
for networks without depthwise convolutions (an H100 run, ``docs/gpu.md``: channels_last slowed WP-UNet 1126 -> 793
slices/s and sped the classic U-Net 1845 -> 2563). Argmax labels under bf16 agree with fp32 on all but a few
boundary voxels; the Dice effect on held-out phantoms is reported in ``docs/performance.md``.
"""

from __future__ import annotations

import copy
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..common.errors import InputError

__all__ = ["FastPath", "cpu_class", "cpu_supports_bf16", "choose_backend", "network_family", "choose_fast_path",
           "prepare_network", "predict_labels", "has_depthwise_convs"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "torchscript")


@dataclass(frozen=True)
class FastPath:
    """How to run the network: autocast dtype, memory format, conv+BN folding, TorchScript freeze, slice batch."""

    precision: str = "fp32"
    channels_last: bool = False
    fold_batchnorm: bool = False
    compile: str = "none"
    sw_batch_size: int = 1

    def describe(self) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.fold_batchnorm:
            parts.append("folded BN")
        if self.compile != "none":
            parts.append(self.compile)
        return ", ".join(parts + [f"batch {self.sw_batch_size}"])


def cpu_supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX) and oneDNN is available.

    False when PyTorch or oneDNN are held to AVX2 (``ATEN_CPU_CAPABILITY=avx2``/``default``,
    ``ONEDNN_MAX_CPU_ISA=AVX2``...): the way ``bench/run.sh`` measures the no-bf16 CPU class on a bf16 machine, where
    bf16 would then be emulated (slower than fp32).
    """
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2", "avx", "sse"):
        return False
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE",
                                                             "AVX512_CORE_VNNI", "AVX2_VNNI_2"):
        return False
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # pragma: no cover - older torch
        native = False
    return bool(native and torch.backends.mkldnn.is_available())


def cpu_class() -> str:
    """``"bf16"`` (AVX-512 BF16 or AMX: native bf16), else ``"avx2"`` (what torch's kernels use, e.g. an AVX2-only
    EPYC or a laptop; ``ATEN_CPU_CAPABILITY=avx2`` forces it) or ``"other"``: the row of the measured rules used."""
    if cpu_supports_bf16():
        return "bf16"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return "avx2" if capability.startswith("avx") else "other"


def has_depthwise_convs(network: nn.Module) -> bool:
    """True when the network has grouped convolutions with one channel a group (WP-UNet, SD-UNet)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels
               for m in network.modules())


#: Backend and slice batch measured fastest per network family on CPUs without native bf16 (``cpu_class() ==
#: "avx2"``); see the module docstring's AVX2 table and ``docs/perf_notes/issue17_int8.md``.
AVX2_RULES = {"depthwise": ("onnxruntime", 4), "plain": ("torch", None)}


def network_family(network: nn.Module) -> str:
    """``"depthwise"`` (WP-UNet, its channel-pruned copies, SD-UNet) or ``"plain"`` (Pocket, classic U-Net)."""
    return "depthwise" if has_depthwise_convs(network) else "plain"


def choose_backend(network: nn.Module, device: torch.device | str = "cpu",
                   backend: str = "auto") -> tuple[str, int | None]:
    """``(backend, slice batch)`` for ``backend="auto"``: the measured rule of this CPU class; explicit values kept.

    CUDA and CPUs with native bf16 (AVX-512 BF16/AMX) keep torch (bf16 + channels_last was fastest there, the
    table above); on other CPUs :data:`AVX2_RULES` gives the backend per network family. int8 is never chosen
    here: it lost 2.8 tumour Dice points against fp32 on the held-out phantoms (gate: 0.5) and was slower than ONNX
    Runtime fp32 for the channel-pruned and demo WP-UNets on this AVX2 CPU without VNNI
    (``docs/perf_notes/issue17_int8.md``), so it stays opt-in (``configs/inference_int8.json``). The batch is
    ``None`` for "keep the fast path's own choice".
    """
    from .onnx_backend import BACKENDS

    if backend not in ("auto", *BACKENDS):
        raise InputError(f"--backend {backend!r}: unknown; choose auto or one of {', '.join(BACKENDS)}")
    torch_module = isinstance(network, nn.Module) and any(True for _ in network.parameters())
    if backend != "auto" or not torch_module or torch.device(device).type != "cpu" or cpu_class() == "bf16":
        return ("torch" if backend == "auto" else backend), None
    return AVX2_RULES[network_family(network)]


def _check_choice(name: str, value, allowed) -> None:
    if value != "auto" and value not in allowed:
        raise InputError(f"--{name}: expected 'auto' or one of {list(allowed)}, got {value!r}")


def _as_bool(name: str, value) -> bool | str:
    if value == "auto" or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InputError(f"--{name}: expected 'auto', True or False, got {value!r}")


def choose_fast_path(network: nn.Module, device: torch.device | str = "cpu", precision="auto",
                     channels_last="auto", fold_batchnorm="auto", compile="auto", sw_batch_size="auto") -> FastPath:
    """Resolve each ``"auto"`` for ``device`` and ``network``; explicit values are checked and kept.

    Raises:
        InputError: (a ``ValueError``) a value that is not ``auto`` or an allowed choice (the message names the id),
            or fp16 on a CPU / bf16 on a CPU without native bf16 support.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("compile", compile, COMPILE_MODES)
    channels_last = _as_bool("channels_last", channels_last)
    fold_batchnorm = _as_bool("fold_batchnorm", fold_batchnorm)
    if sw_batch_size != "auto" and (isinstance(sw_batch_size, bool) or not str(sw_batch_size).isdigit()
                                    or int(sw_batch_size) < 1):
        raise InputError(f"--slice_batch_size: expected 'auto' or an integer >= 1, got {sw_batch_size!r}")
    torch_module = isinstance(network, nn.Module) and any(True for _ in network.parameters())
    if precision == "auto":
        precision = ("fp16" if cuda else "bf16" if cpu_supports_bf16() else "fp32") if torch_module else "fp32"
    elif precision == "fp16" and not cuda:
        raise InputError("--precision fp16: only on a CUDA device; use bf16 (CPUs with AVX-512 BF16/AMX) or fp32")
    if channels_last == "auto":
        channels_last = torch_module and not (cuda and has_depthwise_convs(network))
    if fold_batchnorm == "auto":  # only where there is something to fold, so that the log line tells the truth
        fold_batchnorm = torch_module and bool(_conv_bn_pairs(network))
    if compile == "auto":
        compile = "none"
    sw_batch_size = (32 if cuda else 1) if sw_batch_size == "auto" else int(sw_batch_size)
    return FastPath(precision, bool(channels_last), bool(fold_batchnorm), compile, sw_batch_size)


def _conv_bn_pairs(network: nn.Module) -> list[tuple[nn.Sequential, str, str]]:
    """(sequential, conv name, BatchNorm name) for every BatchNorm directly after a conv inside an ``nn.Sequential``."""
    pairs = []
    for module in network.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if (isinstance(conv, nn.modules.conv._ConvNd) and not isinstance(conv, nn.modules.conv._ConvTransposeNd)
                    and isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats
                    and conv.out_channels == norm.num_features):
                pairs.append((module, first, second))
    return pairs


def _fold_batchnorm(network: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv inside an ``nn.Sequential`` into that conv (eval, in place).

    Uses :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`; the BatchNorm becomes ``nn.Identity``. Returns the number
    of folds. None of the bundle's networks has such a pair: WP-UNet and SD-UNet normalise after the activation
    (conv -> act -> conv -> act -> norm, papers 000 Sect. 3.2 and 003 Sect. 3.2), the classic and Pocket U-Nets have
    no normalisation, nnU-Net uses InstanceNorm; folding a norm that follows an activation into the next conv is
    not exact at zero-padded borders, so it is not done.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = _conv_bn_pairs(network)
    for module, first, second in pairs:
        module._modules[first] = fuse_conv_bn_eval(module._modules[first], module._modules[second])
        module._modules[second] = nn.Identity()
    return len(pairs)


def prepare_network(network: nn.Module, device: torch.device | str, path: FastPath,
                    example_shape=(1, 1, 256, 256)) -> nn.Module:
    """A copy of ``network`` ready for ``path`` (eval mode, folded, memory format, frozen); the original is untouched.

    Anything that is not a torch module with parameters (ONNX Runtime) is returned as it is.
    """
    if not isinstance(network, nn.Module) or not any(True for _ in network.parameters()):
        return network.eval() if isinstance(network, nn.Module) else network
    device = torch.device(device)
    module = copy.deepcopy(network).to(device).eval()
    module.requires_grad_(False)
    if path.fold_batchnorm:
        _fold_batchnorm(module)
    if path.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if path.compile == "torchscript":
        example = torch.zeros(example_shape, device=device)
        if path.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), _autocast(device, path):
            module = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False).eval())
    return module


def _autocast(device: torch.device, path: FastPath):
    if path.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if path.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def predict_labels(module, batch: torch.Tensor, path: FastPath, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, 1, H, W) float32 -> (B, H, W) uint8 argmax labels on the CPU, under the path's autocast.

    ``device`` defaults to where the module's weights are. The argmax is ``max(dim=1).indices`` (same ties as
    ``torch.argmax``, about 10x faster on this CPU; ``docs/performance.md``).
    """
    device = torch.device(device) if device is not None else _module_device(module)
    batch = batch.to(device)
    if path.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(device, path):
        logits = module(batch)
    return logits.max(dim=1).indices.to(torch.uint8).cpu()


def _module_device(module) -> torch.device:
    if isinstance(module, nn.Module):
        for tensor in (*module.parameters(), *module.buffers(), *module.state_dict().values()):
            return tensor.device
    return torch.device("cpu")
