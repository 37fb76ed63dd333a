"""One TorchScript file per sub-model, so that each pipeline stage runs without the bundle's Python network code.

File ``<partitions_dir>/<model_name>_part<k>of<n>.ts`` (``k`` from 1) holds sub-model ``k - 1`` of ``n`` compiled with
``torch.jit.script`` (``torch.jit.trace`` if scripting fails) and, as the TorchScript extra file ``partition.json``,
its position, its input and output activation names and a fingerprint of the weights and partitioning settings it
was made from. Files are written atomically (``scripts.common.atomic``); a stage loads its file (or the file's bytes,
received from rank 0) with :func:`load_partition`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..common.atomic import atomic_write
from ..common.errors import InputError

__all__ = ["META_NAME", "partition_path", "weights_fingerprint", "compile_submodel", "export_partitions",
           "read_partition_meta", "partitions_up_to_date", "load_partition"]

logger = logging.getLogger(__name__)
META_NAME = "partition.json"


def partition_path(partitions_dir: str | os.PathLike, model_name: str, index: int, count: int) -> Path:
    """``<partitions_dir>/<model_name>_part<index + 1>of<count>.ts`` (``index`` from 0)."""
    return Path(partitions_dir) / f"{model_name}_part{index + 1}of{count}.ts"


def weights_fingerprint(model_path: str | os.PathLike, settings: Mapping) -> str:
    """SHA-256 of the weights file's bytes and of ``settings`` (JSON, sorted keys): changes when either does."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def compile_submodel(submodel: nn.Module, example_inputs: Sequence[torch.Tensor]) -> tuple[torch.jit.ScriptModule, str]:
    """TorchScript of ``submodel`` (eval mode): scripted, or traced on ``example_inputs`` when scripting fails.

    Returns the module and ``"script"`` or ``"trace"``. The compiled module must reproduce the eager outputs on the
    example inputs (``allclose``, atol 1e-5), else ``RuntimeError``.
    """
    submodel = submodel.eval()
    try:
        compiled, how = torch.jit.script(submodel), "script"
    except Exception as exc:  # torch.jit raises several frontend error types
        logger.info("torch.jit.script failed for %s (%s); tracing instead", type(submodel).__name__, exc)
        with torch.no_grad():
            compiled, how = torch.jit.trace(submodel, tuple(example_inputs), check_trace=False), "trace"
    with torch.no_grad():
        expected, actual = submodel(*example_inputs), compiled(*example_inputs)
    for e, a in zip(_as_tuple(expected), _as_tuple(actual), strict=True):
        if e.shape != a.shape or not torch.allclose(e, a, atol=1e-5):
            raise RuntimeError(f"TorchScript ({how}) of the sub-model differs from the eager sub-model")
    return compiled, how


def export_partitions(submodels: Sequence[nn.Module], partitions_dir: str | os.PathLike, model_name: str,
                      example_shape: Sequence[int], fingerprint: str = "") -> list[Path]:
    """Compile each sub-model (on the CPU) and write it atomically as ``partition_path(...)``; returns the paths.

    ``submodels`` follow the ``scripts.partitioning.SubModel`` interface (``input_names``, ``output_names``,
    ``forward(*tensors) -> tuple``); the example input of sub-model ``k`` is what sub-models ``0..k-1`` produce
    from a random tensor of ``example_shape``.
    """
    count = len(submodels)
    out_dir = Path(partitions_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    tensors: tuple[torch.Tensor, ...] = (torch.rand(*example_shape, generator=generator),)
    paths = []
    for index, sub in enumerate(submodels):
        sub = sub.cpu().eval()
        compiled, how = compile_submodel(sub, tensors)
        meta = {"index": index, "count": count, "input_names": list(sub.input_names),
                "output_names": list(sub.output_names), "compiled_with": how, "fingerprint": fingerprint,
                "example_shape": list(example_shape)}
        path = partition_path(out_dir, model_name, index, count)
        atomic_write(path, lambda tmp: torch.jit.save(compiled, tmp, _extra_files={META_NAME: json.dumps(meta)}),
                     suffix=".ts")
        paths.append(path)
        with torch.no_grad():
            tensors = _as_tuple(sub(*tensors))
    return paths


def read_partition_meta(source: str | os.PathLike | bytes) -> dict:
    """The ``partition.json`` metadata of a partition file (path or bytes); see :func:`load_partition`."""
    return load_partition(source)[1]


def partitions_up_to_date(partitions_dir: str | os.PathLike, model_name: str, count: int, fingerprint: str) -> bool:
    """True when all ``count`` partition files exist and carry ``fingerprint``."""
    for index in range(count):
        path = partition_path(partitions_dir, model_name, index, count)
        if not path.is_file():
            return False
        try:
            meta = read_partition_meta(path)
        except InputError:
            return False
        if meta.get("fingerprint") != fingerprint or meta.get("index") != index or meta.get("count") != count:
            return False
    return True


def load_partition(source: str | os.PathLike | bytes,
                   map_location: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """Load one partition (path or the file's bytes) onto ``map_location`` in eval mode; returns (module, meta)."""
    files = {META_NAME: ""}
    try:
        module = torch.jit.load(_as_stream(source), map_location=map_location, _extra_files=files)
    except Exception as exc:
        raise InputError(f"{_describe(source)}: not a readable TorchScript partition ({_first_line(exc)})") from None
    if not files[META_NAME]:
        raise InputError(f"{_describe(source)}: TorchScript file without {META_NAME}; re-export the partitions")
    return module.eval(), json.loads(files[META_NAME])


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _as_stream(source):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)


def _describe(source) -> str:
    return f"<{len(source)} bytes from rank 0>" if isinstance(source, (bytes, bytearray)) else str(source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
