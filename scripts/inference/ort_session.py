"""ONNX Runtime on the CPU without torch: the session and the slice predictor of the streaming path (issue 17).

:class:`OnnxSlicePredictor` is what ``kidney-seg --lean`` runs (no torch or MONAI import: about 0.2 s instead of
about 4 s of start-up, ``docs/perf_notes/issue17_startup.md``); :class:`scripts.inference.onnx_backend.OnnxRuntimeNetwork`
wraps the same session for the torch and MONAI paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..common.errors import InputError

__all__ = ["WEIGHTS_KEY", "concurrency_plan", "cpu_session", "first_max_labels", "OnnxSlicePredictor"]

WEIGHTS_KEY = "bundle_weights_sha256"  # metadata of the bundle's cached exports: SHA-256 of the weights file


def _env_threads() -> int:
    """``OMP_NUM_THREADS`` as an int, 0 when unset or empty."""
    return int(os.environ.get("OMP_NUM_THREADS", "0") or 0)


def cpu_session(onnx_path: str | os.PathLike, num_threads: int | None = None):
    """An ONNX Runtime CPU ``InferenceSession`` of ``onnx_path``; a missing or unreadable file raises one
    :class:`InputError` line. ``num_threads``: intra-op threads (``None``: ``OMP_NUM_THREADS`` when set, else ORT's
    default, one per physical core)."""
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"{path}: no ONNX model; export one with python -m scripts.inference.onnx_backend "
                         "--config_file configs/inference.json --ckpt_file models/model.pt --onnx_path "
                         f"{path}")
    if num_threads is None:
        num_threads = _env_threads()
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise InputError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None


def concurrency_plan(cores: int | None = None) -> tuple[int, int]:
    """``(concurrent_calls, threads_per_call)`` for ``cores`` CPU cores (default: ``OMP_NUM_THREADS`` when set, else
    the cores this process may run on): as many
    single-thread calls as cores, up to 4, then the remaining cores shared out as intra-op threads.

    Why: ONNX Runtime's intra-op threads leave cores idle between the small convolutions of these networks. On a
    2-core AVX2 machine, two 1-thread calls of 2 slices at once made ``kidney-seg --lean`` 0.3-0.9 s faster on a
    200-slice CT than one 2-thread call of 4, with about 110 MB less peak RSS
    (``docs/perf_notes/issue17_concurrency.md``). The labels are bit-identical for any thread count or batch.
    """
    if not cores:
        cores = _env_threads() or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    cores = max(1, int(cores or 1))
    calls = min(cores, 4)
    return calls, max(1, cores // calls)


class OnnxSlicePredictor:
    """A 2D network exported to ONNX, run on numpy slice batches: ``predict_labels`` is the argmax label map.

    Args:
        onnx_path: the model (input ``(B, 1, H, W)`` float32, output ``(B, C, H, W)`` logits).
        num_threads: see :func:`cpu_session`.
        concurrent_calls: batches the caller may run at once from separate threads (one session: ONNX Runtime's
            ``run`` is thread-safe and releases the GIL); :class:`scripts.inference.streaming.StreamingSegmenter`
            reads it.
    """

    def __init__(self, onnx_path: str | os.PathLike, num_threads: int | None = None,
                 concurrent_calls: int = 1) -> None:
        self.path = Path(onnx_path)
        self.session = cpu_session(onnx_path, num_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.concurrent_calls = max(1, int(concurrent_calls))

    @property
    def metadata(self) -> dict[str, str]:
        """The model's metadata properties (``onnx.helper.set_model_props`` at export)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits

    def predict_labels(self, batch: np.ndarray) -> np.ndarray:
        """(B, 1, H, W) float32 -> (B, H, W) uint8: the class of the largest logit (first one on ties)."""
        return first_max_labels(self.logits(batch))


def first_max_labels(logits: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, H, W) uint8, equal to ``logits.argmax(axis=1)`` for finite logits (the first class on
    ties), by C - 1 elementwise comparisons: 2.5x faster than numpy's argmax across the class axis for 3 classes."""
    best = logits[:, 0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for index in range(1, logits.shape[1]):
        larger = logits[:, index] > best
        np.putmask(labels, larger, index)
        np.maximum(best, logits[:, index], out=best)
    return labels
