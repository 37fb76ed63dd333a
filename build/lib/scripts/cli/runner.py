"""Run ``configs/inference.json``'s ``inferring`` workflow in this process with overrides: the same
``ConfigWorkflow`` as ``python -m monai.bundle run inferring --config_file configs/inference.json ...``
(the console command and the Python API add no second pipeline; :func:`inference_overrides` is all they change).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .paths import bundle_root, config_dir
from .validate import check_config_files, check_network, check_weights, choose_fast_network

__all__ = ["RunOptions", "inference_configs", "inference_overrides", "run_inferring", "torchrun_part"]

RunOptions = Mapping[str, object]


def torchrun_part() -> tuple[int, int] | None:
    """``(num_parts, part_id)`` from ``torchrun``'s ``WORLD_SIZE``/``RANK`` (any number of nodes), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (world, int(os.environ.get("RANK", "0") or 0)) if world > 1 else None


def inference_configs(network: str | None = None, fast: bool = False, model: str | None = None,
                      extra_configs: Sequence[str] = ()) -> tuple[list[Path], str | None]:
    """The config files to merge (inference.json, the network overlay, extra overlays) and the weights path."""
    files = [config_dir() / "inference.json"]
    model_path = str(check_weights(model)) if model else None
    if fast:
        overlays, weights, _ = choose_fast_network(model)
        files += list(overlays)
        model_path = str(weights)
    elif network:
        files.append(check_network(network))
    files += check_config_files(extra_configs)
    return files, model_path


def inference_overrides(options: RunOptions) -> dict:
    """Config overrides for the options of the console command / API (real booleans: no python-fire strings)."""
    overrides = {
        "bundle_root": str(bundle_root()),
        "input_path": str(options["input"]),
        "output_dir": str(options["output"]),
        "output_format": options.get("output_format", "nifti"),
        "preview": bool(options.get("preview", True)),
        "resume": bool(options.get("resume", False)),
        "stop_on_error": bool(options.get("stop_on_error", True)),
        "cohort_statistics": bool(options.get("statistics", True)),
        "progress": bool(options.get("progress", False)),
        "input_pattern": options.get("pattern") or "",
        "num_parts": int(options.get("num_parts", 1)),
        "part_id": int(options.get("part_id", 0)),
        "num_workers": 0,
    }
    if options.get("model_path"):
        overrides["model_path"] = str(options["model_path"])
    device = options.get("device")
    if device:
        overrides["device"] = f"$torch.device({str(device)!r})"
    overrides.update(options.get("overrides") or {})
    return overrides


class _QuietWorkflowNotes(logging.Filter):
    """Drop ConfigWorkflow's notes that hold for every run of this module (no logging file; overlays elsewhere)."""

    NOTES = ("Logging file is set to False", "Not all config files are in")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTES)


def run_inferring(config_files: Sequence[Path], overrides: Mapping) -> object:
    """``initialize``, ``inferring`` and ``finalize`` of the merged configs in this process.

    Leaves the process as it found it: the one-line excepthook ``initialize`` installs and the bundle root that
    ``ConfigWorkflow.run`` puts on ``sys.path`` are taken back afterwards (the API runs inside other programs).
    """
    from monai.bundle import ConfigWorkflow

    hook, path = sys.excepthook, list(sys.path)
    notes = logging.getLogger("monai.bundle.workflows")
    if not any(isinstance(f, _QuietWorkflowNotes) for f in notes.filters):
        notes.addFilter(_QuietWorkflowNotes())
    meta = config_dir() / "metadata.json"
    workflow = ConfigWorkflow(config_file=[str(f) for f in config_files], meta_file=str(meta) if meta.is_file()
                              else None, logging_file=False, workflow_type="infer", run_id="inferring",
                              **dict(overrides))
    try:
        workflow.initialize()
        try:
            return workflow.run()
        finally:
            workflow.finalize()
    finally:
        sys.excepthook = hook
        sys.path[:] = path
