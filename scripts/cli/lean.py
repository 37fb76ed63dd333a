"""``kidney-seg --lean``: the streaming inference path with neither torch nor MONAI in the process (issue 17).

Every other way of running the ``inferring`` workflow goes through MONAI's ``ConfigWorkflow``, and ``import torch``
plus ``import monai`` cost about 4 s of a 2-core CPU before the first slice (``docs/perf_notes/issue17_startup.md``).
The lean run starts in well under a second because it needs only numpy, nibabel, scipy and ONNX Runtime:

- the network is the ONNX export of the chosen weights, cached next to them as ``<weights>.lean.onnx``
  (:func:`scripts.inference.onnx_backend.cached_export`); its metadata holds the SHA-256 of the weights and of the
  config files, and the settings the configs give the streaming path (HU window, slice size, classes, label names,
  largest-component step). The first run, or any run after the weights or configs changed, makes the export
  through the normal torch + MONAI config parsing (seconds, once); later runs read the metadata with ONNX Runtime
  and import neither;
- the steps are the streaming path's own (:class:`scripts.inference.streaming.StreamingSegmenter`, whose data path
  is numpy) with the same writer, cohort records, resume and per-case failure handling as ``kidney-seg``;
- it runs on the CPU with ONNX Runtime; the kidney-region cascade, int8 and GPU options are not offered here.

The labels equal the torch path's up to the ONNX export's float rounding (``tests/test_lean.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from ..common.digest import file_sha256
from ..common.errors import InputError
from .paths import bundle_root

__all__ = ["LEAN_SUFFIX", "lean_weights_path", "recipe_digest", "lean_predictor", "run_lean"]

logger = logging.getLogger(__name__)

LEAN_SUFFIX = ".lean.onnx"
CONFIGS_KEY = "bundle_lean_configs_sha256"
SETTINGS_KEY = "bundle_lean_settings"
LEAN_BATCH = 2  # slices per ONNX Runtime call, with concurrency_plan()'s calls at once (docs/perf_notes/issue17_concurrency.md)
SETTING_IDS = ("hu_window", "slice_size", "num_classes", "label_names", "lcc_enabled", "lcc_num_components",
               "skip_empty_slices")


def lean_weights_path(config_files: Sequence[Path], model_path: str | None) -> Path:
    """The weights file: ``model_path``, else ``<bundle>/models/<model_name>.pt`` with the configs' last
    ``model_name`` (the rule of ``configs/inference.json``), checked to exist."""
    if model_path:
        path = Path(model_path)
    else:
        name = "model"
        for file in config_files:
            values = json.loads(Path(file).read_text()) if Path(file).suffix == ".json" else {}
            if "model_path" in values and Path(file).name != "inference.json":
                raise InputError(f"--lean: {file} sets model_path; pass the weights with --model")
            name = values.get("model_name", name)
        path = bundle_root() / "models" / f"{name}.pt"
    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(f"{path}: no trained weights. Train first (python -m monai.bundle run training --config_file "
                         "configs/train.json --dataset_dir DIR), run the demo (bash demo.sh), or pass another file "
                         "with --model")
    return path


def recipe_digest(config_files: Sequence[Path]) -> str:
    """SHA-256 over the config files' bytes in merge order: what the export's settings were read from."""
    digest = hashlib.sha256()
    for file in config_files:
        digest.update(Path(file).name.encode() + b"\0")
        file_sha256(file, digest)
    return digest.hexdigest()


def lean_predictor(config_files: Sequence[Path], weights: Path):
    """``(predictor, settings)``: the ONNX Runtime predictor of the cached lean export and its settings, made
    first (torch + MONAI, once) when missing or out of date."""
    from ..inference.ort_session import WEIGHTS_KEY, OnnxSlicePredictor, concurrency_plan

    calls, threads = concurrency_plan()
    open_predictor = partial(OnnxSlicePredictor, num_threads=threads, concurrent_calls=calls)
    path = Path(f"{weights}{LEAN_SUFFIX}")
    wanted = {WEIGHTS_KEY: file_sha256(weights), CONFIGS_KEY: recipe_digest(config_files)}
    if path.is_file():
        try:
            predictor = open_predictor(path)
            metadata = predictor.metadata
            if all(metadata.get(key) == value for key, value in wanted.items()) and SETTINGS_KEY in metadata:
                return predictor, json.loads(metadata[SETTINGS_KEY])
        except (InputError, ValueError):  # damaged or foreign file: export again
            pass
    logger.info("--lean: exporting %s from %s (torch + MONAI, once for these weights and configs)", path, weights)
    try:
        _export(config_files, weights, wanted[CONFIGS_KEY])
    except OSError as exc:
        raise InputError(f"{path}: --lean cannot write its export beside the weights ({exc.strerror or exc}); copy "
                         "the weights to a writable folder and pass --model") from None
    predictor = open_predictor(path)
    return predictor, json.loads(predictor.metadata[SETTINGS_KEY])


def _export(config_files: Sequence[Path], weights: Path, configs_digest: str) -> Path:
    """Parse the configs as the workflow does, check the network is 2D, export it with the weights and settings."""
    from monai.bundle import ConfigParser

    from ..common.weights import load_weights
    from ..inference.onnx_backend import cached_export
    from ..inference.streaming import is_3d_network

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser["bundle_root"] = str(bundle_root())
    parser["model_path"] = str(weights)  # a channel-pruned network reads its widths from the weights file
    parser["backend"], parser["device"] = "torch", "$torch.device('cpu')"
    if is_3d_network(parser.get_parsed_content("network_def", instantiate=True)):
        raise InputError("--lean runs the 2D networks (slice by slice); this network is 3D: run without --lean")
    network = parser.get_parsed_content("network", instantiate=True)  # the config's network (structured: pruned)
    settings = {key: parser.get_parsed_content(key) for key in SETTING_IDS}
    settings = json.loads(json.dumps(settings, default=list))  # tuples and config lists as plain JSON
    props = {CONFIGS_KEY: configs_digest, SETTINGS_KEY: json.dumps(settings, sort_keys=True)}
    return cached_export(partial(load_weights, network, weights, "cpu"), weights, settings["slice_size"],
                         suffix=LEAN_SUFFIX, props=props)


def run_lean(input_path: str, output_dir: str, config_files: Sequence[Path], model_path: str | None, *,
             output_format: str = "nifti", preview: bool = True, resume: bool = True, stop_on_error: bool = False,
             progress: bool = True, pattern: str | None = None, num_parts: int = 1, part_id: int = 0,
             statistics: bool = True, timings_path: str = "") -> list[dict]:
    """Segment every case of ``input_path`` into ``output_dir`` as ``kidney-seg`` does, on the lean path; raises
    :class:`scripts.inference.streaming.CasesFailed` when some cases failed (they are in ``failures.csv``).
    ``statistics``: the cohort table's per-case statistics (``cohort_statistics``); ``timings_path``: per-case stage
    timings as JSON. Returns the per-case timings."""
    from ..common.checks import check_output_dir
    from ..data.inputs import list_inference_inputs
    from ..evaluation.cohort import CohortRecorder
    from ..inference.streaming import StreamingSegmenter
    from ..outputs.formats import check_output_format
    from ..outputs.transaction import case_outputs_complete
    from ..outputs.writer import write_segmentation

    weights = lean_weights_path(config_files, model_path)
    datalist = list_inference_inputs(input_path, pattern or "", stop_on_error)
    check_output_format(output_format, datalist)
    check_output_dir(output_dir)
    predictor, settings = lean_predictor(config_files, weights)
    label_names = {str(k): int(v) for k, v in settings["label_names"].items()}
    segmenter = StreamingSegmenter(predictor, "cpu", hu_window=settings["hu_window"],
                                   slice_size=settings["slice_size"], num_classes=settings["num_classes"],
                                   lcc_enabled=settings["lcc_enabled"],
                                   lcc_num_components=settings["lcc_num_components"],
                                   skip_empty_slices=settings["skip_empty_slices"], batch_size=LEAN_BATCH,
                                   chunk_slices=max(16, 2 * LEAN_BATCH * predictor.concurrent_calls))
    writer = partial(write_segmentation, output_dir=output_dir, output_format=output_format, label_names=label_names)
    recorder = CohortRecorder(output_dir, output_format=output_format, preview=preview, label_names=label_names,
                              statistics=statistics, outputs_complete=case_outputs_complete)
    return segmenter.run(datalist, writer=writer, preview=preview, recorder=recorder, resume=resume,
                         stop_on_error=stop_on_error, progress=progress, num_parts=num_parts, part_id=part_id,
                         timings_path=timings_path)
