"""Python API: ``segment(input, output_dir=None, **options)``, as TotalSegmentator's ``totalsegmentator()`` (issue 15).

    from scripts.cli.api import segment
    label_image, stats = segment("scan.nii.gz")            # or a nibabel image; outputs in a temporary folder
    stats["left_kidney_ml"], stats["qc_flags"]

It runs the bundle's ``inferring`` workflow (:func:`scripts.cli.runner.run_inferring`, the same ``ConfigWorkflow``
as the console command and ``python -m monai.bundle``) on one case and returns the label image in the input's
geometry (a ``nibabel.Nifti1Image`` held in memory, uint8: 0 background, 1 kidney, 2 tumour) and the case's
``cohort.csv`` row (volumes in mL, tumours, mean HU, QC flags; :mod:`scripts.evaluation.cohort`) merged with its
``<case>_volumes.json``. Bad input raises :class:`scripts.common.errors.InputError` with one line.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..common.errors import InputError
from ..data.inputs import list_inference_inputs
from ..data.layout import case_name
from ..evaluation.cohort import CASES_FOLDER
from .runner import inference_configs, inference_overrides, run_inferring

__all__ = ["segment"]

_OPTIONS = {"model", "network", "fast", "device", "preview", "output_format", "configs", "overrides", "name"}


def segment(input: str | os.PathLike | nib.spatialimages.SpatialImage, output_dir: str | os.PathLike | None = None,
            **options) -> tuple[nib.Nifti1Image | None, dict]:
    """Segment one CT; returns ``(label image, statistics)``.

    Args:
        input: a NIfTI/NRRD/MHA file, a DICOM series folder, a KiTS case folder, or a nibabel image (saved to the
            working folder as ``<name>.nii.gz`` first).
        output_dir: where the outputs are written (segmentation, volumes JSON, preview, ``cohort.csv``); ``None``
            uses a temporary folder that is removed before returning.
        **options: ``model`` (weights file), ``network`` (overlay name) or ``fast``, ``device`` (``"cpu"``,
            ``"cuda:0"``), ``preview`` (default ``False`` here), ``output_format`` (``nifti``; another format
            returns ``None`` for the image), ``configs`` (extra overlay files), ``overrides`` (config ids to values),
            ``name`` (case name for a nibabel input, default ``image``).
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"segment(): unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    with tempfile.TemporaryDirectory(prefix="kidney-seg-") as folder:
        if isinstance(input, nib.spatialimages.SpatialImage):
            path = Path(folder) / "input" / f"{options.get('name', 'image')}.nii.gz"
            path.parent.mkdir()
            nib.save(nib.Nifti1Image(np.asanyarray(input.dataobj), input.affine, input.header), path)
            input = path
        return _segment(input, Path(output_dir) if output_dir is not None else Path(folder) / "output", options)


def _segment(input, output_dir: Path, options: dict) -> tuple[nib.Nifti1Image | None, dict]:
    cases = list_inference_inputs(input)
    if len(cases) != 1:
        raise InputError(f"{input}: segment() takes one case, this holds {len(cases)}; use the kidney-seg command "
                         "for folders")
    configs, model_path = inference_configs(options.get("network"), bool(options.get("fast")), options.get("model"),
                                            options.get("configs", ()))
    output_format = options.get("output_format", "nifti")
    run_inferring(configs, inference_overrides({
        "input": input, "output": output_dir, "output_format": output_format,
        "preview": options.get("preview", False), "resume": False, "stop_on_error": True, "statistics": True,
        "progress": False, "model_path": model_path, "device": options.get("device"),
        "overrides": options.get("overrides")}))
    name = case_name(cases[0]["image"])
    stats = _case_row(output_dir, name)
    volumes = output_dir / f"{name}_volumes.json"
    if volumes.is_file():
        stats = {**json.loads(volumes.read_text()), **stats}
    if output_format != "nifti":
        return None, stats
    stored = nib.load(output_dir / f"{name}.nii.gz")
    image = nib.Nifti1Image(np.asarray(stored.dataobj), stored.affine, stored.header)  # in memory: folder may go
    return image, stats


def _case_row(output_dir: Path, name: str) -> dict:
    """The case's ``cohort.csv`` row with its types (the JSON record the run saved)."""
    return json.loads((output_dir / CASES_FOLDER / f"{name}.json").read_text())
