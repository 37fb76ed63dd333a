"""int8 post-training static quantisation of the 2D network with ONNX Runtime (issue 17).

The network is exported to ONNX (:func:`scripts.inference.onnx_backend.export_onnx`), pre-processed with ONNX
Runtime's ``quant_pre_process`` (shape inference and graph optimisation) and quantised with
:func:`onnxruntime.quantization.quantize_static`: QDQ format, per-channel int8 weights, uint8 activations
(``reduce_range`` weights, ONNX Runtime's advice for x86 CPUs without VNNI, where u8s8 products can saturate),
MinMax calibration on preprocessed slices of *training* cases (:func:`calibration_slices`: the same HU window and
in-plane resize as inference, ``scripts.data.preprocessing.window_and_resize``). Held-out cases must never be used
for calibration; ``configs/quantize.json`` reads the training split of the bundle's datalist.

The artefact (``models/derived/model_int8.onnx``) is published atomically and carries the calibration settings in
its metadata; it runs through the ``onnxruntime`` backend (``configs/inference_int8.json``), which refuses a
damaged file with one line. int8 is opt-in: ``docs/perf_notes/issue17_int8.md`` gives its latency and its Dice
against fp32 on held-out SYNTHETIC phantoms, and ``auto`` never picks it unless that Dice gap is within 0.5 point.

Command line (bundle root)::

    python -m monai.bundle run quantize --config_file "['configs/train.json','configs/quantize.json']" \\
        --dataset_dir KITS_FOLDER
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader  # only the quantise paths import this module
from torch import nn

from ..common.atomic import publish
from ..common.errors import InputError

__all__ = ["calibration_slices", "SliceCalibrationReader", "quantize_int8", "quantize_network", "run_quantize"]

logger = logging.getLogger(__name__)
STRIDE = 2  # calibration slices reduced at a time (memory: about STRIDE x one slice's activations)


def calibration_slices(images: Sequence[str | os.PathLike], hu_window: Sequence[float], slice_size: Sequence[int],
                       num_slices: int = 64) -> torch.Tensor:
    """(N, 1, H, W) float32 preprocessed axial slices, about ``num_slices`` in all, spread evenly over each case.

    Each CT is read as inference reads it (:func:`scripts.data.ct_reader.read_ct`, RAS slice order) and windowed
    and resized by :func:`scripts.data.preprocessing.window_and_resize`; slices with no body (all air) are left out,
    as the streaming path skips them.
    """
    from ..data.ct_reader import read_ct
    from ..data.preprocessing import window_and_resize
    from .streaming import ras_orientation

    if not images:
        raise InputError("calibration: no training images to calibrate on (check --dataset_dir)")
    per_case = max(1, -(-int(num_slices) // len(images)))
    picked = []
    for path in images:
        ct = read_ct(path)
        ornt = ras_orientation(ct.affine)
        depth = ct.shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])]
        wanted = set(np.linspace(0, depth - 1, min(depth, 2 * per_case)).round().astype(int).tolist())
        case = []
        for z0, z1, block in ct.axial_blocks(ornt, 16):
            index = [z - z0 for z in range(z0, z1) if z in wanted]
            if not index:
                continue
            hu = ct.hounsfield(np.ascontiguousarray(block[:, :, index].transpose(2, 0, 1)))
            image = torch.from_numpy(window_and_resize(hu, hu_window, slice_size))
            case.append(image[image.flatten(1).amax(dim=1) > 0])
        case = torch.cat(case) if case else torch.zeros(0, 1, *slice_size)
        step = max(1, len(case) // per_case)  # keep per_case body slices, evenly spread
        picked.append(case[::step][:per_case])
        ct.release()
    slices = torch.cat(picked)
    if not len(slices):
        raise InputError(f"calibration: no body slices in {len(images)} training images")
    return slices


class SliceCalibrationReader(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over preprocessed slices, one slice a call.

    ``set_range`` and ``len`` let ``quantize_static`` calibrate ``CalibStridedMinMax`` slices at a time and merge
    the ranges (min of minima, max of maxima: the same ranges as all at once).
    """

    def __init__(self, slices: torch.Tensor, input_name: str = "image") -> None:
        self.slices = slices.detach().cpu().float().numpy()
        self.input_name = input_name
        self.set_range(0, len(self.slices))

    def __len__(self) -> int:
        return len(self.slices)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(range(start_index, min(end_index, len(self.slices))))

    def rewind(self) -> None:
        self.set_range(0, len(self.slices))

    def get_next(self) -> dict | None:
        index = next(self._next, None)
        if index is None:
            return None
        return {self.input_name: np.ascontiguousarray(self.slices[index:index + 1])}


def quantize_int8(fp32_onnx: str | os.PathLike, int8_onnx: str | os.PathLike, slices: torch.Tensor,
                  per_channel: bool = True, reduce_range: bool = True) -> Path:
    """Quantise the fp32 ONNX model ``fp32_onnx`` to ``int8_onnx`` (QDQ, static, calibrated on ``slices``),
    atomically."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_onnx = Path(int8_onnx)
    int8_onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=int8_onnx.parent, prefix=f".{int8_onnx.name}.") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        # onnxruntime 1.32's MinMax calibration holds about 0.9 GB per 256x256 slice for SD-UNet until it reduces
        # (32 slices at once: 16.5 GB, an OOM kill here); CalibStridedMinMax reduces every STRIDE slices and merges
        # the ranges. (Not CalibMaxIntermediateOutputs: it discards the batches it flushes instead of merging them.)
        slices = slices[: max(STRIDE, len(slices) - len(slices) % STRIDE)]
        if len(slices) % STRIDE:
            raise InputError(f"calibration: {len(slices)} slices; at least {STRIDE} needed")
        quantize_static(str(prepared), str(quantized), SliceCalibrationReader(slices, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"CalibStridedMinMax": STRIDE})
        model = onnx.load(str(quantized))
        onnx.helper.set_model_props(model, {"bundle_quantization": "static int8, QDQ, per-channel weights",
                                            "bundle_calibration_slices": str(len(slices))})
        onnx.save(model, str(quantized))
        publish(quantized, int8_onnx)
    logger.info("wrote %s (int8, calibrated on %d slices)", int8_onnx, len(slices))
    return int8_onnx


def quantize_network(network: nn.Module, int8_onnx: str | os.PathLike, slices: torch.Tensor,
                     slice_size: Sequence[int] = (256, 256), fp32_onnx: str | os.PathLike | None = None) -> Path:
    """Export ``network`` to fp32 ONNX (kept at ``fp32_onnx`` when given) and quantise it to ``int8_onnx``."""
    from .onnx_backend import export_onnx

    if fp32_onnx is not None:
        return quantize_int8(export_onnx(network, fp32_onnx, slice_size), int8_onnx, slices)
    with tempfile.TemporaryDirectory(dir=Path(int8_onnx).parent if Path(int8_onnx).parent.is_dir() else None) as tmp:
        return quantize_int8(export_onnx(network, Path(tmp) / "fp32.onnx", slice_size), int8_onnx, slices)


def run_quantize(network: nn.Module, model_path: str | os.PathLike, images: Sequence[str | os.PathLike | dict],
                 int8_path: str | os.PathLike, fp32_onnx_path: str | os.PathLike, hu_window: Sequence[float],
                 slice_size: Sequence[int], num_slices: int = 64) -> Path:
    """The ``run quantize`` workflow: load ``model_path`` into ``network``, calibrate on ``images``, write int8.

    ``images`` are paths or datalist items (``{"image": path, ...}``) of training cases only
    (``configs/quantize.json`` passes the datalist's training split).
    """
    from ..common.weights import check_weights_file, load_weights

    load_weights(network, check_weights_file(model_path))
    images = [item["image"] if isinstance(item, dict) else item for item in images]
    slices = calibration_slices(images, hu_window, slice_size, num_slices)
    path = quantize_network(network.cpu().eval(), int8_path, slices, slice_size, fp32_onnx_path)
    print(f"wrote {path}: int8 (static, QDQ, per-channel), calibrated on {len(slices)} training slices; "
          f"fp32 ONNX at {fp32_onnx_path}")
    return path
