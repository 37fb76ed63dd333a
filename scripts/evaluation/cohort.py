"""Cohort statistics and QC flags of an inference run: ``cohort.csv``, ``failures.csv`` and a summary PNG (issue 15).

Each finished case gets one row (:func:`case_statistics`), saved atomically as ``cohort_cases/<case>.json`` in the
output folder; a case that fails gets ``cohort_cases/<case>.failed.json`` instead. :func:`merge_cohort` gathers
every row and failure in that folder into ``cohort.csv``, ``failures.csv`` and ``cohort_summary.png``. Since each
process writes only its own cases' files, the same merge serves one process, the ranks of ``torchrun`` and the
``--num-parts/--part-id`` parts of a scheduler array: each merges when it finishes (under a file lock) and the last
one to finish writes the complete table; ``kidney-seg --merge -o OUT`` merges again at any time.

Left and right are read from the RAS x coordinate (+x is the patient's right): of the two largest foreground
(kidney + tumour) components, the one with the larger centroid x is the right kidney; a single component is placed
by the side of the field-of-view centre it lies on. Volumes count voxels of the segmentation in the input's grid
(as ``<case>_volumes.json``); mean HU is taken at the network's resolution (the in-plane area average of the CT
the network saw, before the HU window), which the streaming segmenter keeps for this purpose.

QC flags (a reader should look at the case; they are not diagnoses):

- ``no_kidney``: no kidney voxel in the output.
- ``components_before_lcc``: more than two foreground components of at least ``MIN_COMPONENT_ML`` before the
  largest-connected-component step discarded the extra ones (the network saw kidney-like tissue elsewhere).
- ``kidney_volume``: a kidney's volume (label 1, tumour excluded) outside ``KIDNEY_ML_RANGE``. Normal adult
  kidneys are about 100-250 mL each (e.g. Cheong et al., "Normal values for renal length and volume as measured
  by magnetic resonance imaging", Clin J Am Soc Nephrol 2007;2:38-45); the range is deliberately wide around that
  so it catches segmentation failures (a fragment, a kidney merged with liver/spleen) rather than anatomy.
- ``tumour_outside_kidney``: a tumour component that touches no kidney voxel.
- ``spacing``: in-plane spacing outside ``IN_PLANE_MM`` or slice spacing outside ``SLICE_MM``, roughly the range of
  the KiTS19 training CTs (Heller et al., arXiv:1904.00445: in-plane about 0.44-1.04 mm, slices 0.5-5 mm).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..common.atomic import atomic_write, atomic_write_text
from ..data.layout import case_name

__all__ = ["CASES_FOLDER", "CASE_COLUMNS", "FAILURE_COLUMNS", "CohortRecorder", "case_statistics",
           "merge_cohort", "KIDNEY_ML_RANGE", "IN_PLANE_MM", "SLICE_MM", "MIN_COMPONENT_ML"]

logger = logging.getLogger(__name__)

KIDNEY_ML_RANGE = (50.0, 400.0)
IN_PLANE_MM = (0.4, 1.1)
SLICE_MM = (0.5, 5.0)
MIN_COMPONENT_ML = 1.0
CASES_FOLDER = "cohort_cases"
CASE_COLUMNS = ("case", "source", "left_kidney_ml", "right_kidney_ml", "tumour_count", "tumour_ml",
                "largest_tumour_ml", "largest_tumour_diameter_mm", "kidney_mean_hu", "tumour_mean_hu",
                "components_before_lcc", "slices", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "seconds",
                "qc_flags")
FAILURE_COLUMNS = ("case", "file", "error")
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as MONAI's KeepLargestConnectedComponent (connectivity=None)


def _voxel_ml(affine: np.ndarray) -> float:
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes along RAS x, y, z (the stored axes reordered as ``Orientationd`` would)."""
    sizes = nib.affines.voxel_sizes(affine)
    ornt = nib.io_orientation(affine)
    ras = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        ras[int(target)] = float(sizes[axis])
    return ras[0], ras[1], ras[2]


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the nonzero voxels of ``mask`` (boolean or unsigned labels; ``None`` when empty), from
    its maximum along each pair of axes: 0.01 s for a 512x512x200 volume, where ``ndimage.find_objects`` on a uint8
    copy took 0.6 s. Unsigned labels are read as they are (no boolean copy)."""
    if mask.dtype == bool:
        flat = mask.view(np.uint8)
    elif mask.dtype.kind == "u":
        flat = mask
    else:
        flat = (mask != 0).view(np.uint8)
    box = []
    for axis in range(flat.ndim):
        hits = np.flatnonzero(flat.max(axis=tuple(a for a in range(flat.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _max_diameter_mm(coords_mm: np.ndarray) -> float:
    """Largest distance between two voxel centres of a component (over its convex hull's vertices)."""
    if len(coords_mm) < 2:
        return 0.0
    points = coords_mm
    if len(points) > 4:
        from scipy.spatial import ConvexHull, QhullError

        try:
            points = points[ConvexHull(points).vertices]
        except (QhullError, ValueError):  # flat or degenerate component: all points
            pass
    diffs = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diffs ** 2).sum(-1)).max())


def _centroid(components: np.ndarray, box: tuple[slice, ...], index: int) -> np.ndarray:
    """Voxel centroid of component ``index`` inside its bounding box ``box``, from the mask's projections on each
    axis (no voxel-coordinate arrays: a whole-body component costs one boolean mask of its box)."""
    mask = components[box] == index
    total = max(1, int(np.count_nonzero(mask)))
    others = [tuple(a for a in range(mask.ndim) if a != axis) for axis in range(mask.ndim)]
    return np.array([float(mask.sum(axis=others[axis]) @ np.arange(mask.shape[axis])) / total + box[axis].start
                     for axis in range(mask.ndim)])


def case_statistics(label: np.ndarray, affine: np.ndarray, *, source: str = "", label_names: Mapping[str, int]
                    = None, model_labels: np.ndarray | None = None, model_hu: np.ndarray | None = None,
                    pre_lcc_labels: np.ndarray | None = None, model_affine: np.ndarray | None = None,
                    seconds: float = float("nan")) -> dict:
    """One ``cohort.csv`` row for a segmentation ``label`` (input grid) with ``affine``; see the module docstring.

    ``model_labels``/``model_hu`` (final labels and HU at the network's resolution) give the mean HU;
    ``pre_lcc_labels`` and ``model_affine`` (that grid's affine) give ``components_before_lcc``.
    """
    names = dict(label_names or {"kidney": 1, "tumor": 2})
    kidney, tumour = int(names.get("kidney", 1)), int(names.get("tumor", 2))
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = _voxel_ml(affine)
    spacing = _ras_spacing(affine)
    ornt = nib.io_orientation(affine)
    slices = int(label.shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])])
    row = {"case": case_name(source) if source else "", "source": source, "left_kidney_ml": 0.0,
           "right_kidney_ml": 0.0, "tumour_count": 0, "tumour_ml": 0.0, "largest_tumour_ml": 0.0,
           "largest_tumour_diameter_mm": 0.0, "kidney_mean_hu": "", "tumour_mean_hu": "",
           "components_before_lcc": "", "slices": slices, "spacing_x_mm": round(spacing[0], 4),
           "spacing_y_mm": round(spacing[1], 4), "spacing_z_mm": round(spacing[2], 4),
           "seconds": round(float(seconds), 3) if math.isfinite(seconds) else ""}
    flags = []
    box = _bbox(np.asarray(label))
    if box is not None:
        crop = np.asarray(label[box])
        offset = np.array([s.start for s in box], dtype=np.float64)
        components, count = ndimage.label(crop > 0, structure=_FULL)
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        order = np.argsort(sizes)[::-1][:2] + 1  # the two largest components: the kidneys
        boxes = ndimage.find_objects(components)
        centroids = [_centroid(components, boxes[c - 1], int(c)) for c in order]
        world_x = [float((affine[:3, :3] @ (np.array(c) + offset) + affine[:3, 3])[0]) for c in centroids]
        if len(order) == 2:
            right = [order[int(np.argmax(world_x))]]
            left = [order[int(np.argmin(world_x))]]
        else:
            centre = (np.array(label.shape) - 1) / 2.0
            centre_x = float((affine[:3, :3] @ centre + affine[:3, 3])[0])
            right, left = (list(order), []) if world_x[0] > centre_x else ([], list(order))
        for side, ids in (("left", left), ("right", right)):
            voxels = int(np.count_nonzero(np.isin(components, ids) & (crop == kidney))) if ids else 0
            row[f"{side}_kidney_ml"] = round(voxels * voxel_ml, 3)
            if ids and not KIDNEY_ML_RANGE[0] <= voxels * voxel_ml <= KIDNEY_ML_RANGE[1]:
                flags.append(f"kidney_volume:{side}")
        tumour_mask = crop == tumour
        tumours, n_tumours = ndimage.label(tumour_mask, structure=_FULL)
        row["tumour_count"] = int(n_tumours)
        row["tumour_ml"] = round(int(np.count_nonzero(tumour_mask)) * voxel_ml, 3)
        if n_tumours:
            t_sizes = np.bincount(tumours.ravel(), minlength=n_tumours + 1)[1:]
            largest = int(np.argmax(t_sizes)) + 1
            row["largest_tumour_ml"] = round(float(t_sizes[largest - 1]) * voxel_ml, 3)
            coords = np.argwhere(tumours == largest) + offset
            row["largest_tumour_diameter_mm"] = round(_max_diameter_mm(coords @ affine[:3, :3].T), 2)
            kidney_near = ndimage.binary_dilation(crop == kidney, structure=_FULL)
            touching = np.unique(tumours[kidney_near & tumour_mask])
            if len(set(range(1, n_tumours + 1)) - set(int(t) for t in touching)):
                flags.append("tumour_outside_kidney")
    if not np.any(label == kidney):
        flags.append("no_kidney")
    if model_labels is not None and model_hu is not None:
        for key, value in (("kidney_mean_hu", kidney), ("tumour_mean_hu", tumour)):
            mask = model_labels == value
            if mask.any():
                row[key] = round(float(model_hu[mask].astype(np.float64).mean()), 1)
    if pre_lcc_labels is not None:
        comp, n = ndimage.label(pre_lcc_labels > 0, structure=_FULL)
        min_voxels = MIN_COMPONENT_ML / _voxel_ml(model_affine if model_affine is not None else affine)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        row["components_before_lcc"] = int(np.count_nonzero(sizes >= min_voxels))
        if row["components_before_lcc"] > 2:
            flags.append("components_before_lcc")
    if not (IN_PLANE_MM[0] <= min(spacing[:2]) and max(spacing[:2]) <= IN_PLANE_MM[1]) or \
            not SLICE_MM[0] <= spacing[2] <= SLICE_MM[1]:
        flags.append("spacing")
    row["qc_flags"] = ";".join(flags)
    return row


@contextmanager
def _merge_lock(folder: Path):
    """An exclusive lock on ``folder/.merge.lock`` (POSIX ``flock``; local and most cluster file systems)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".merge.lock", "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - no flock (Windows, some network mounts)
            pass
        yield


def _csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _read_records(folder: Path, suffix: str) -> list[dict]:
    records = []
    for path in sorted(folder.glob(f"*{suffix}")):
        if suffix == ".json" and path.name.endswith(".failed.json"):
            continue
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # a half-written record cannot exist (atomic), but a foreign file might
            logger.warning("%s: not a cohort record, skipped", path)
    return records


def merge_cohort(output_dir: str | Path, summary: bool = True) -> tuple[int, int]:
    """Write ``cohort.csv``, ``failures.csv`` (and ``cohort_summary.png``) from ``output_dir/cohort_cases``.

    Returns (cases in ``cohort.csv``, failures). Safe to call from several processes at once (file lock).
    """
    output_dir = Path(output_dir)
    folder = output_dir / CASES_FOLDER
    with _merge_lock(folder):
        rows = sorted(_read_records(folder, ".json"), key=lambda r: r.get("case", ""))
        failures = sorted(_read_records(folder, ".failed.json"), key=lambda r: r.get("case", ""))
        atomic_write_text(output_dir / "cohort.csv", _csv_text(rows, CASE_COLUMNS))
        if failures:
            atomic_write_text(output_dir / "failures.csv", _csv_text(failures, FAILURE_COLUMNS))
        else:
            (output_dir / "failures.csv").unlink(missing_ok=True)
        if summary and rows:
            atomic_write(output_dir / "cohort_summary.png", lambda tmp: _plot_summary(rows, tmp), suffix=".png")
    return len(rows), len(failures)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _plot_summary(rows: Sequence[Mapping], path: str) -> None:
    """Volume distributions and the flagged cases, one PNG a person can read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    left = [_number(r["left_kidney_ml"]) for r in rows]
    right = [_number(r["right_kidney_ml"]) for r in rows]
    axes[0].hist([[v for v in left if v > 0], [v for v in right if v > 0]], bins=20, label=["left", "right"])
    for bound in KIDNEY_ML_RANGE:
        axes[0].axvline(bound, color="grey", linestyle="--", linewidth=1)
    axes[0].set(title="kidney volume (label 1) per side", xlabel="mL", ylabel="cases")
    axes[0].legend()
    tumours = [_number(r["largest_tumour_ml"]) for r in rows if _number(r["tumour_count"]) > 0]
    axes[1].hist(tumours, bins=20, color="tab:red")
    axes[1].set(title=f"largest tumour volume ({len(tumours)} of {len(rows)} cases with tumour)", xlabel="mL",
                ylabel="cases")
    flagged = [r for r in rows if r.get("qc_flags")]
    axes[2].axis("off")
    lines = [f"{r['case']}: {r['qc_flags']}" for r in flagged[:25]]
    if len(flagged) > 25:
        lines.append(f"... and {len(flagged) - 25} more (cohort.csv, column qc_flags)")
    axes[2].text(0, 1, f"QC flags: {len(flagged)} of {len(rows)} cases\n\n" + "\n".join(lines), va="top",
                 family="monospace", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


class CohortRecorder:
    """What a cohort run records per case, for the streaming segmenter's ``run`` (the config's ``cohort``).

    Args:
        output_dir: the run's output folder (rows go to ``output_dir/cohort_cases``).
        output_format, preview: what the writer produces, for :meth:`is_complete`.
        outputs_complete: ``(output_dir, case, output_format, preview) -> bool``, the writer's own check that a
            case's outputs form one finished set (``scripts.outputs.transaction.case_outputs_complete``; passed in
            by the config, as ``evaluation`` may not import ``outputs``).
        label_names: ``{name: value}`` of the foreground labels.
        statistics: compute a ``cohort.csv`` row per case (and the summary); failures are recorded either way.
    """

    def __init__(self, output_dir: str | Path, output_format: str = "nifti", preview: bool = True,
                 label_names: Mapping[str, int] | None = None, statistics: bool = True,
                 outputs_complete: Callable[[Path, str, str, bool], bool] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.outputs_complete = outputs_complete
        self.output_format = output_format
        self.preview = bool(preview)
        self.label_names = dict(label_names or {"kidney": 1, "tumor": 2})
        self.statistics = bool(statistics)
        self.folder = self.output_dir / CASES_FOLDER

    def _record_path(self, source: str, failed: bool = False) -> Path:
        return self.folder / f"{case_name(source)}{'.failed' if failed else ''}.json"

    def is_complete(self, source: str) -> bool:
        """The case's outputs are complete (checked) and, with ``statistics``, its row was saved after them."""
        case = case_name(source)
        if self.outputs_complete is None or not self.outputs_complete(self.output_dir, case, self.output_format,
                                                                      self.preview):
            return False
        if not self.statistics:
            return True
        row = self._record_path(source)
        volumes = self.output_dir / f"{case}_volumes.json"
        return row.is_file() and row.stat().st_mtime >= volumes.stat().st_mtime

    def record(self, source: str, label: np.ndarray, affine: np.ndarray, info: Mapping | None = None,
               seconds: float = float("nan")) -> dict | None:
        """Save the row of a finished case (after its outputs are written); clear an earlier failure record."""
        row = None
        if self.statistics:
            info = dict(info or {})
            row = case_statistics(label, affine, source=source, label_names=self.label_names, seconds=seconds,
                                  model_labels=info.get("model_labels"), model_hu=info.get("model_hu"),
                                  pre_lcc_labels=info.get("pre_lcc_labels"), model_affine=info.get("model_affine"))
            atomic_write_text(self._record_path(source), json.dumps(row, indent=1))
        self._record_path(source, failed=True).unlink(missing_ok=True)
        return row

    def fail(self, source: str, error: str) -> None:
        """Record a failed case (``failures.csv``: case, file, error)."""
        record = {"case": case_name(source), "file": str(source), "error": error}
        atomic_write_text(self._record_path(source, failed=True), json.dumps(record, indent=1))

    def finish(self) -> tuple[int, int]:
        """Merge every process's records into ``cohort.csv``/``failures.csv``/the PNG (see :func:`merge_cohort`)."""
        if not self.folder.is_dir():
            return 0, 0
        if not self.statistics:
            failures = _read_records(self.folder, ".failed.json")
            if failures:
                atomic_write_text(self.output_dir / "failures.csv", _csv_text(failures, FAILURE_COLUMNS))
            return 0, len(failures)
        return merge_cohort(self.output_dir)
