"""ONNX export of the 2D network and an ONNX Runtime backend for the inference workflow.

Export goes through MONAI's :func:`monai.networks.utils.convert_to_onnx` with torch's TorchScript-based exporter
(``dynamo=False``: the torch.export route needs onnxscript and gains nothing for these plain conv nets), a dynamic
batch axis (the slice inferer's last batch is smaller) and fixed spatial size (the bundle's ``slice_size``).
Any 2D network that maps ``(B, 1, H, W)`` to ``(B, C, H, W)`` exports the same way, so the WP-UNet and the
other networks under ``scripts/networks`` share this path. :class:`OnnxRuntimeNetwork` wraps an ONNX Runtime
CPU session in an ``nn.Module`` so that the unchanged ``SliceInferer``/``SupervisedEvaluator`` can run it.

Command line (bundle root)::

    python -m scripts.inference.onnx_backend --config_file configs/inference.json --ckpt_file models/model.pt \\
        --onnx_path models/model.onnx
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..common.atomic import publish
from ..common.errors import InputError
from .ort_session import WEIGHTS_KEY

__all__ = ["BACKENDS", "check_backend", "export_onnx", "cached_export", "max_abs_difference", "OnnxRuntimeNetwork",
           "main"]

logger = logging.getLogger(__name__)
INPUT_NAME, OUTPUT_NAME = "image", "logits"
OPSET = 17
BACKENDS = ("torch", "onnxruntime")


def check_backend(backend: str, model_path: str | os.PathLike, onnx_path: str | os.PathLike) -> str:
    """Stop with one line when the backend is unknown or its model file (``.pt`` or ``.onnx``) is missing; a ``.pt``
    is also read (``weights_only``) and refused when unsafe or not finite, before either inference path starts
    (the MONAI evaluator's ``CheckpointLoader`` would show a traceback, and load NaN weights silently)."""
    from ..common.weights import check_weights_file, read_weights

    if backend not in (*BACKENDS, "auto"):
        raise InputError(f"--backend {backend!r}: unknown; choose auto or one of {', '.join(BACKENDS)}")
    if backend in ("torch", "auto"):  # auto may run ONNX Runtime, but on a model exported from these weights
        read_weights(check_weights_file(model_path))
    elif not Path(onnx_path).is_file():
        raise InputError(f"{onnx_path}: no ONNX model; export one with python -m scripts.inference.onnx_backend --config_file "
                         f"configs/inference.json --ckpt_file {model_path} --onnx_path {onnx_path}")
    return backend


def export_onnx(network: nn.Module, onnx_path: str | os.PathLike, slice_size: Sequence[int] = (256, 256),
                in_channels: int = 1) -> Path:
    """Export ``network`` (eval mode, on the CPU) to ``onnx_path`` atomically; the batch axis stays dynamic."""
    from monai.networks.utils import convert_to_onnx

    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    example = torch.rand(2, in_channels, *slice_size)
    fd, tmp = tempfile.mkstemp(dir=onnx_path.parent, prefix=f".{onnx_path.name}.", suffix=".onnx")
    os.close(fd)
    try:
        convert_to_onnx(network, [example], input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        opset_version=OPSET, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                        filename=tmp, use_trace=True, dynamo=False, external_data=False)
        publish(tmp, onnx_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return onnx_path




def _sha256(path: str | os.PathLike) -> str:
    from ..common.digest import file_sha256

    return file_sha256(path)


def cached_export(load_network: Callable[[], nn.Module], model_path: str | os.PathLike,
                  slice_size: Sequence[int] = (256, 256), *, suffix: str = ".auto.onnx",
                  props: dict[str, str] | None = None) -> Path:
    """The fp32 ONNX model of ``load_network()`` (the network with the weights of ``model_path``), cached.

    Kept next to the weights as ``<model_path><suffix>`` (``.auto.onnx`` for ``backend auto``, ``.lean.onnx`` for
    ``kidney-seg --lean``) with the SHA-256 of the weights file and ``props`` in its metadata; re-exported
    (atomically) when missing, unreadable, or made from other weights or other ``props``, so that the first run
    pays the export (seconds) once and later runs load it directly (``load_network`` is called only when exporting).
    """
    import onnx

    path = Path(f"{model_path}{suffix}")
    wanted = {WEIGHTS_KEY: _sha256(model_path), **(props or {})}
    if path.is_file():
        try:
            found = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            if all(found.get(key) == value for key, value in wanted.items()):
                return path
        except Exception:  # damaged or foreign file: export again
            pass
    tmp = path.with_name(f".{path.name}.fresh.onnx")
    try:
        export_onnx(load_network(), tmp, slice_size)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, wanted)
        onnx.save(model, str(tmp))
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("exported %s (ONNX Runtime)", path)
    return path


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX model run by ONNX Runtime on the CPU, callable like the torch network it was exported from.

    Inputs on any device are copied to the CPU and the logits come back on the input's device and dtype, so the
    bundle's inferer, post-processing and writer stay unchanged. ``num_threads`` defaults to torch's intra-op
    thread count (``OMP_NUM_THREADS`` sets both); 0 lets ORT choose.
    """

    def __init__(self, onnx_path: str | os.PathLike, num_threads: int | None = None) -> None:
        super().__init__()
        from .ort_session import OnnxSlicePredictor

        num_threads = torch.get_num_threads() if num_threads is None else num_threads
        self.predictor = OnnxSlicePredictor(onnx_path, num_threads)
        self.session, self.input_name = self.predictor.session, self.predictor.input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.predictor.logits(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(logits).to(device=x.device, dtype=x.dtype)

    def predict_labels(self, batch: np.ndarray) -> np.ndarray:
        """The streaming path's call (numpy in, uint8 labels out): no torch tensors on the way."""
        return self.predictor.predict_labels(batch)


def max_abs_difference(network: nn.Module, onnx_path: str | os.PathLike, x: torch.Tensor) -> float:
    """Largest absolute difference between the torch network's and ONNX Runtime's logits on ``x`` (CPU)."""
    network = network.cpu().eval()
    with torch.no_grad():
        expected = network(x.cpu().float())
        actual = OnnxRuntimeNetwork(onnx_path)(x.cpu().float())
    return float((expected - actual).abs().max())


def main(argv: Sequence[str] | None = None) -> float:
    """Export the config's ``network_def`` with weights from ``--ckpt_file``; check ORT against torch."""
    from monai.bundle import ConfigParser

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default="configs/inference.json")
    parser.add_argument("--ckpt_file", required=True, help="weights, {'model': state_dict} or a state_dict")
    parser.add_argument("--onnx_path", required=True)
    parser.add_argument("--net_id", default="network_def")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed on a test slice")
    args, overrides = parser.parse_known_args(argv)
    config = ConfigParser()
    config.read_config(args.config_file)
    for key, value in zip(overrides[::2], overrides[1::2]):  # --id value pairs, as monai.bundle takes them
        config[key.lstrip("-")] = _literal(value)
    network = config.get_parsed_content(args.net_id, instantiate=True)
    from ..common.weights import load_weights

    load_weights(network, args.ckpt_file)
    slice_size = config.get_parsed_content("slice_size")
    path = export_onnx(network, args.onnx_path, slice_size)
    torch.manual_seed(0)
    difference = max_abs_difference(network, path, torch.rand(4, 1, *slice_size))
    print(f"wrote {path}; max abs difference ONNX Runtime vs torch on 4 random slices: {difference:.2e}")
    if difference > args.tolerance:
        raise SystemExit(f"error: {path}: ONNX Runtime differs from torch by {difference:.2e} > {args.tolerance}")
    return difference


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if __name__ == "__main__":
    main()
