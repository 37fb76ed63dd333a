"""Per-case KiTS evaluation: hierarchical regions, Dice, HD95, surface Dice and volumes, CSV/JSON reports.

KiTS evaluates *hierarchical evaluation regions* (HECs), unions of labels, rather than single labels, because a
kidney label alone is not comparable across editions (KiTS19 folds cysts into the kidney, KiTS21/23 label them 3).
Everything here is per case and in 3D (never slice-wise, never a Dice pooled over all voxels of a data set), and
every distance is in millimetres using the voxel spacing of the case.

The distance computations are MONAI's (``compute_dice``, ``compute_hausdorff_distance``,
``compute_surface_dice``); this module only builds the region masks, handles the empty-region cases explicitly
and writes the reports.

Edge cases, per region (``<region>_status`` records which one applied):

=================  ======  =============  ===========  =============
status             Dice    surface Dice   HD95 (mm)    meaning
=================  ======  =============  ===========  =============
``ok``             MONAI   MONAI          MONAI        both masks non-empty
``both_empty``     1.0     1.0            0.0          region absent in prediction and reference
``pred_empty``     0.0     0.0            NaN          region missed entirely
``true_empty``     0.0     0.0            NaN          region predicted but absent in the reference
=================  ======  =============  ===========  =============

``both_empty`` follows the KiTS21 evaluation code (Dice 1 and surface Dice 1 when both are empty); HD95 is 0.0
there because the two (empty) surfaces agree perfectly. A one-sided empty region has no finite Hausdorff distance:
it is reported as NaN (``inf`` cannot be averaged or plotted) and the summary statistics ignore NaN, so read the
``n`` column of the summary and the status counts alongside the HD95 mean.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai.config import KeysCollection, NdarrayOrTensor, PathLike
from monai.data import MetaTensor, decollate_batch
from monai.handlers.utils import from_engine
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from monai.transforms import MapTransform
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import (
    IgniteInfo,
    ImageMetaKey,
    convert_to_tensor,
    min_version,
    optional_import,
    string_list_all_gather,
)

from ..common.atomic import atomic_write_text
from ..data.layout import case_name

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "region_definitions",
    "labels_to_regions",
    "LabelToRegionsd",
    "spacing_from_meta",
    "case_name_from_path",
    "KiTSCaseMetrics",
    "summarise_metrics",
    "write_metrics_csv",
    "KiTSMetricsHandler",
]

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE_MM = 2.0
"""Default surface-Dice tolerance in mm (see :class:`KiTSCaseMetrics` for the KiTS21 values)."""

STATUS_OK, STATUS_BOTH_EMPTY, STATUS_PRED_EMPTY, STATUS_TRUE_EMPTY = "ok", "both_empty", "pred_empty", "true_empty"

_METRIC_SUFFIXES = ("dice", "hd95_mm", "nsd", "pred_ml", "true_ml", "status")
_SUMMARY_STATS = ("mean", "std", "median", "n")


def region_definitions(keep_cyst: bool) -> dict[str, tuple[int, ...]]:
    """
    The KiTS hierarchical evaluation regions (HECs) for one of the two labellings.

    Args:
        keep_cyst: ``False`` for the KiTS19 labelling (0 background, 1 kidney, 2 tumour; cysts are part of the
            kidney): regions ``kidney`` = {1, 2} and ``tumour`` = {2}. ``True`` for the KiTS21/23 labelling with
            3 = cyst: regions ``kidney_and_masses`` = {1, 2, 3}, ``masses`` = {2, 3} and ``tumour`` = {2}.

    Returns:
        a new dict, region name -> label values whose union forms the region, in reporting order.
    """
    if keep_cyst:
        return {"kidney_and_masses": (1, 2, 3), "masses": (2, 3), "tumour": (2,)}
    return {"kidney": (1, 2), "tumour": (2,)}


def _region_mask(label: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """Boolean mask of the voxels whose label is one of ``values`` (floating label maps are rounded first)."""
    if label.is_floating_point():
        label = torch.round(label)
    mask = label == int(values[0])
    for v in values[1:]:
        mask = mask | (label == int(v))
    return mask


def labels_to_regions(
    label: NdarrayOrTensor,
    regions: Mapping[str, Sequence[int]],
    channel_dim: int = 0,
    dtype: torch.dtype = torch.bool,
) -> torch.Tensor:
    """
    Replace the single channel of a label map with one binary channel per region.

    Args:
        label: integer label map with a channel axis of size 1 at ``channel_dim``: a channel-first item
            ``(1, H, W[, D])`` (``channel_dim=0``) or a batch ``(B, 1, H, W[, D])`` (``channel_dim=1``).
        regions: region name -> label values, e.g. :func:`region_definitions`; channel order follows its order.
        channel_dim: index of the size-1 channel axis.
        dtype: output dtype; ``torch.bool`` by default (one byte per voxel, accepted by MONAI's metrics).

    Returns:
        ``(R, H, W[, D])`` or ``(B, R, H, W[, D])`` with R = ``len(regions)``. A MetaTensor input gives a
        MetaTensor with the same metadata.

    Raises:
        ValueError: when ``regions`` is empty or the axis at ``channel_dim`` does not have size 1.
    """
    if len(regions) == 0:
        raise ValueError("regions must define at least one region.")
    label_t = label if isinstance(label, torch.Tensor) else convert_to_tensor(label)
    if label_t.ndim <= channel_dim or label_t.shape[channel_dim] != 1:
        raise ValueError(
            f"label must have a channel axis of size 1 at dim {channel_dim}, got shape {tuple(label_t.shape)}."
        )
    masks = [_region_mask(label_t, values).to(dtype) for values in regions.values()]
    return torch.cat(masks, dim=channel_dim)


class LabelToRegionsd(MapTransform):
    """
    Dictionary transform: channel-first KiTS label maps ``(1, H, W[, D])`` -> one binary channel per HEC region.

    Args:
        keys: keys of the label maps to convert.
        keep_cyst: choose the labelling, see :func:`region_definitions`.
        regions: explicit region name -> label values; overrides ``keep_cyst`` when given.
        dtype: output dtype, ``torch.bool`` by default.
        allow_missing_keys: don't raise when a key is missing.

    Example::

        LabelToRegionsd(keys="label", keep_cyst=True)({"label": seg})["label"].shape  # (3, H, W, D)
    """

    def __init__(
        self,
        keys: KeysCollection,
        keep_cyst: bool = False,
        regions: Mapping[str, Sequence[int]] | None = None,
        dtype: torch.dtype = torch.bool,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.regions = dict(regions) if regions is not None else region_definitions(keep_cyst)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = labels_to_regions(d[key], self.regions, channel_dim=0, dtype=self.dtype)
        return d


def spacing_from_meta(img: Any) -> tuple[float, ...] | None:
    """
    Voxel spacing in mm of an un-batched MetaTensor, in array-axis order (from its affine, as ``MetaTensor.pixdim``).

    Returns ``None`` for anything that is not a MetaTensor. KiTS arrays are stored slices-first, so a KiTS case
    typically gives ``(5.0, 0.78, 0.78)`` here, not ``(0.78, 0.78, 5.0)``.
    """
    if not isinstance(img, MetaTensor):
        return None
    if img.is_batch:
        raise ValueError("spacing_from_meta expects one case (an un-batched MetaTensor), got a batch.")
    return tuple(float(s) for s in np.asarray(img.pixdim, dtype=np.float64).ravel())




def case_name_from_path(path: PathLike) -> str:
    """Case identifier from an image path, as the inference writer names outputs (:func:`scripts.data.layout.case_name`)."""
    return case_name(str(path))


def _is_missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


class KiTSCaseMetrics:
    """
    Per-case KiTS metrics: for each HEC region, Dice, 95th-percentile Hausdorff distance (mm), normalised surface
    Dice at a tolerance (mm) and the region volume (mL) in prediction and reference.

    Args:
        keep_cyst: choose the labelling and regions, see :func:`region_definitions`.
        tolerance_mm: surface-Dice tolerance in mm, one number for all regions or a mapping region -> mm that
            covers every region. Default :data:`DEFAULT_TOLERANCE_MM` (2 mm). The KiTS21 challenge instead used a
            per-region tolerance derived from inter-rater variability (``kits21/evaluation/compute_tolerances.py``
            in neheller/kits21, about 1-2 mm, and the values in ``kits21/configuration/labels.py`` changed between
            commits); ours is a configurable default, so surface Dice here is comparable with published KiTS21
            numbers only when the same tolerances are passed.
        regions: explicit region name -> label values; overrides ``keep_cyst`` when given.
        use_subvoxels: surface Dice weights each surface element by its area (``True``, the DeepMind
            ``surface-distance`` definition that the KiTS21 evaluation code uses) or counts edge voxels
            (``False``, faster).

    Calling it with ``(pred, label, spacing=None)`` returns a flat dict with, for each region ``r``:
    ``r_dice``, ``r_hd95_mm``, ``r_nsd``, ``r_pred_ml``, ``r_true_ml`` (floats) and ``r_status`` (one of
    ``ok``, ``both_empty``, ``pred_empty``, ``true_empty``; see the module docstring for the values each implies).

    HD95 is MONAI's symmetric variant: the larger of the two directed 95th percentiles of the distances between
    edge voxels (prediction -> reference and back), in mm. Inputs are moved to CPU; the distances use scipy there.

    Example::

        metrics = KiTSCaseMetrics(keep_cyst=False)
        row = metrics(pred_labels, true_labels, spacing=(5.0, 0.78, 0.78))
        row["tumour_dice"], row["kidney_hd95_mm"]
    """

    def __init__(
        self,
        keep_cyst: bool = False,
        tolerance_mm: float | Mapping[str, float] = DEFAULT_TOLERANCE_MM,
        regions: Mapping[str, Sequence[int]] | None = None,
        use_subvoxels: bool = True,
    ) -> None:
        self.regions = dict(regions) if regions is not None else region_definitions(keep_cyst)
        if len(self.regions) == 0:
            raise ValueError("regions must define at least one region.")
        if isinstance(tolerance_mm, Mapping):
            missing = set(self.regions) - set(tolerance_mm)
            unknown = set(tolerance_mm) - set(self.regions)
            if missing or unknown:
                raise ValueError(
                    f"tolerance_mm must give one value per region {list(self.regions)}; "
                    f"missing {sorted(missing)}, unknown {sorted(unknown)}."
                )
            self.tolerance_mm = {r: float(tolerance_mm[r]) for r in self.regions}
        else:
            self.tolerance_mm = {r: float(tolerance_mm) for r in self.regions}
        bad = {r: t for r, t in self.tolerance_mm.items() if not (math.isfinite(t) and t >= 0)}
        if bad:
            raise ValueError(f"tolerance_mm must be finite and >= 0, got {bad}.")
        self.use_subvoxels = use_subvoxels
        self._max_label = max(v for values in self.regions.values() for v in values)
        self._warned_labels = False

    @property
    def keys(self) -> list[str]:
        """The keys of the dict returned by ``__call__``, in order."""
        return [f"{r}_{s}" for r in self.regions for s in _METRIC_SUFFIXES]

    def __call__(
        self, pred: NdarrayOrTensor, label: NdarrayOrTensor, spacing: Sequence[float] | None = None
    ) -> dict[str, float | str]:
        """
        Args:
            pred: predicted label map of one case, ``(H, W[, D])`` or ``(1, H, W[, D])``.
            label: reference label map, same shape as ``pred``.
            spacing: voxel spacing in mm per array axis. ``None``: read it from ``label`` if that is a MetaTensor,
                else from ``pred``.

        Raises:
            ValueError: no spacing can be found, or the shapes don't match each other or the spacing.
        """
        if spacing is None:
            spacing = self._spacing_from_inputs(pred, label)
        spacing_mm = [float(s) for s in spacing]  # MONAI's prepare_spacing rejects mixed int/float sequences
        if any(not (math.isfinite(s) and s > 0) for s in spacing_mm):
            raise ValueError(f"spacing must be positive and finite, got {spacing_mm}.")
        pred_t, label_t = self._as_spatial(pred, len(spacing_mm)), self._as_spatial(label, len(spacing_mm))
        if pred_t.shape != label_t.shape:
            raise ValueError(f"pred and label shapes differ: {tuple(pred_t.shape)} vs {tuple(label_t.shape)}.")
        self._check_labels(pred_t, label_t)

        pred_t, label_t = self._crop_to_foreground(pred_t, label_t)

        # (1, R, *spatial) boolean region stacks, as MONAI's metric functions expect (batch, channel, ...)
        pred_r = labels_to_regions(pred_t[None, None], self.regions, channel_dim=1)
        true_r = labels_to_regions(label_t[None, None], self.regions, channel_dim=1)
        voxel_ml = float(np.prod(spacing_mm)) / 1000.0
        spatial_dims = tuple(range(2, pred_r.ndim))
        n_pred = pred_r.sum(dim=spatial_dims)[0].tolist()
        n_true = true_r.sum(dim=spatial_dims)[0].tolist()

        names = list(self.regions)
        dice = compute_dice(pred_r, true_r, include_background=True, ignore_empty=False)[0].tolist()
        both = [i for i, r in enumerate(names) if n_pred[i] > 0 and n_true[i] > 0]
        hd95 = nsd = []
        if both:  # MONAI only sees regions present on both sides: no empty-mask warnings, no inf
            with warnings.catch_warnings():
                # MONAI 1.6.1 passes its own deprecated `always_return_as_numpy` argument internally
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
                p, t = pred_r[:, both], true_r[:, both]
                hd95 = compute_hausdorff_distance(
                    p, t, include_background=True, percentile=95, spacing=spacing_mm
                )[0].tolist()
                nsd = compute_surface_dice(
                    p,
                    t,
                    class_thresholds=[self.tolerance_mm[names[i]] for i in both],
                    include_background=True,
                    spacing=spacing_mm,
                    use_subvoxels=self.use_subvoxels,
                )[0].tolist()

        out: dict[str, float | str] = {}
        for i, r in enumerate(names):
            if i in both:
                j = both.index(i)
                status, r_hd, r_nsd = STATUS_OK, float(hd95[j]), float(nsd[j])
            elif n_pred[i] == 0 and n_true[i] == 0:
                status, r_hd, r_nsd = STATUS_BOTH_EMPTY, 0.0, 1.0
            else:
                status = STATUS_PRED_EMPTY if n_pred[i] == 0 else STATUS_TRUE_EMPTY
                r_hd, r_nsd = float("nan"), 0.0
            out[f"{r}_dice"] = float(dice[i])
            out[f"{r}_hd95_mm"] = r_hd
            out[f"{r}_nsd"] = r_nsd
            out[f"{r}_pred_ml"] = n_pred[i] * voxel_ml
            out[f"{r}_true_ml"] = n_true[i] * voxel_ml
            out[f"{r}_status"] = status
        return out

    @staticmethod
    def _spacing_from_inputs(pred: Any, label: Any) -> tuple[float, ...]:
        label_sp, pred_sp = spacing_from_meta(label), spacing_from_meta(pred)
        if label_sp is None and pred_sp is None:
            raise ValueError("spacing is required: pass spacing=(s0, s1, s2) in mm or MetaTensor inputs.")
        if label_sp is not None and pred_sp is not None and not np.allclose(label_sp, pred_sp, rtol=1e-3):
            logger.warning("pred spacing %s differs from label spacing %s; using the label's.", pred_sp, label_sp)
        return label_sp if label_sp is not None else pred_sp  # type: ignore[return-value]

    @staticmethod
    def _as_spatial(x: NdarrayOrTensor, spatial_ndim: int) -> torch.Tensor:
        """Plain CPU tensor of shape (*spatial); accepts (*spatial) or (1, *spatial)."""
        t = convert_to_tensor(x, track_meta=False, device="cpu")
        if t.ndim == spatial_ndim + 1 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != spatial_ndim:
            raise ValueError(
                f"expected a label map of shape (H, W[, D]) or (1, H, W[, D]) matching the {spatial_ndim}-D "
                f"spacing, got shape {tuple(t.shape)}."
            )
        return t

    def _check_labels(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        top = max(float(pred.max()), float(label.max())) if pred.numel() else 0.0
        if top > self._max_label and not self._warned_labels:
            self._warned_labels = True
            logger.warning(
                "label value %g is outside every region %s and is ignored; with keep_cyst=False, cysts (3) must "
                "be merged into the kidney (1) before evaluation.",
                top,
                self.regions,
            )

    def _crop_to_foreground(self, pred: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Crop both label maps to the bounding box of every region voxel in either, plus a 1-voxel margin (clipped at
        the image edge).

        This gives the same numbers as no crop: volumes and Dice only count voxels inside the box, and MONAI crops
        each region the same way (margin 1, zero-padded beyond the image) before it finds surface edges, while a
        crop moves no voxel relative to another. Doing it first keeps the region stacks and the float copies MONAI
        makes small on 512 x 512 x 1000 scans.
        """
        values = sorted({v for vs in self.regions.values() for v in vs})
        foreground = _region_mask(pred, values) | _region_mask(label, values)
        if not bool(foreground.any()):
            return pred, label
        start, end = generate_spatial_bounding_box(foreground[None], margin=1, allow_smaller=True)
        box = tuple(slice(s, e) for s, e in zip(start, end))
        return pred[box], label[box]


def summarise_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    Summary statistics of per-case metric rows, ignoring NaN.

    Returns:
        ``{"n_cases": N, "metrics": {metric: {"mean", "std", "median", "n"}}, "status_counts": {column: {status:
        count}}}``. ``metrics`` covers every numeric column except ``case``; ``n`` counts the non-NaN values and the
        statistics are NaN when ``n`` is 0. ``std`` is the population standard deviation (``ddof=0``, as
        ``numpy.nanstd`` and MONAI's ``MetricsSaver`` summary). ``status_counts`` covers the string columns
        ending in ``_status``.
    """
    columns = _column_order(rows)
    metrics: dict[str, dict[str, float | int]] = {}
    status_counts: dict[str, dict[str, int]] = {}
    for col in columns:
        if col == "case":
            continue
        values = [row.get(col) for row in rows]
        if col.endswith("_status"):
            counts: dict[str, int] = {}
            for v in values:
                if v is not None:
                    counts[str(v)] = counts.get(str(v), 0) + 1
            status_counts[col] = counts
            continue
        if not all(v is None or isinstance(v, (int, float, np.number)) for v in values):
            continue
        arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        finite = arr[~np.isnan(arr)]
        if finite.size == 0:
            metrics[col] = {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
        else:
            metrics[col] = {
                "mean": float(finite.mean()),
                "std": float(finite.std()),
                "median": float(np.median(finite)),
                "n": int(finite.size),
            }
    return {"n_cases": len(rows), "metrics": metrics, "status_counts": status_counts}


def _column_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: dict[str, None] = {"case": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6f}"
    return str(value)


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], csv_path: PathLike, summary_path: PathLike) -> dict[str, Any]:
    """
    Write per-case rows and their NaN-ignoring summary; every file is replaced atomically.

    Args:
        rows: one dict per case; each needs a ``case`` key, the other keys become columns (first-seen order).
        csv_path: per-case CSV, first column ``case``; floats with 6 decimals, NaN as ``nan``.
        summary_path: summary CSV with columns ``metric, mean, std, median, n`` (see :func:`summarise_metrics`).
            The same summary, plus the case count and the status counts, goes to ``summary_path`` with the suffix
            ``.json`` (NaN written as ``null``).

    Returns:
        the summary dict (as :func:`summarise_metrics`).

    Raises:
        ValueError: when a row has no ``case``.
    """
    for i, row in enumerate(rows):
        if "case" not in row:
            raise ValueError(f"row {i} has no 'case' key: {sorted(row)}.")
    columns = _column_order(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row.get(c)) for c in columns])
    atomic_write_text(Path(csv_path), buf.getvalue())

    summary = summarise_metrics(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("metric",) + _SUMMARY_STATS)
    for name, stats in summary["metrics"].items():
        writer.writerow([name] + [_format_cell(stats[s]) for s in _SUMMARY_STATS])
    summary_csv = Path(summary_path)
    atomic_write_text(summary_csv, buf.getvalue())

    def _nan_to_none(v: Any) -> Any:
        return None if _is_missing(v) else v

    json_ready = dict(summary)
    json_ready["metrics"] = {k: {s: _nan_to_none(v) for s, v in st.items()} for k, st in summary["metrics"].items()}
    atomic_write_text(summary_csv.with_suffix(".json"), json.dumps(json_ready, indent=2, allow_nan=False) + "\n")
    return summary


class KiTSMetricsHandler:
    """
    Ignite handler: KiTS per-case metrics during a MONAI evaluation run, written as CSV and JSON at epoch end.

    On every ``ITERATION_COMPLETED`` it reads the decollated items of ``engine.state.output`` (prediction and
    label) and ``engine.state.batch`` (image metadata for the case name), computes :class:`KiTSCaseMetrics` for each
    case on CPU, and keeps the row. On ``EPOCH_COMPLETED`` it writes, in ``output_dir``:
    ``metrics_per_case.csv``, ``metrics_summary.csv`` and ``metrics_summary.json`` (see :func:`write_metrics_csv`),
    and logs a compact table. Rows restart at every ``EPOCH_STARTED``, so a validation run inside training overwrites
    the files with the latest results.

    Args:
        output_dir: folder for the three report files (created if missing).
        keep_cyst: labelling and regions, see :func:`region_definitions`.
        pred_key: key of the prediction in ``engine.state.output`` items.
        label_key: key of the reference label in ``engine.state.output`` items.
        image_key: key of the image in ``engine.state.batch`` items, whose ``filename_or_obj`` names the case.
        tolerance_mm: surface-Dice tolerance, see :class:`KiTSCaseMetrics`.
        argmax: ``True`` when the prediction is channel-first scores or one-hot ``(C, H, W[, D])``; it is reduced
            with argmax over channels (on its device, before moving to CPU). ``False``: the prediction must already
            be a label map ``(1, H, W[, D])``. A multi-channel label is always taken as one-hot and reduced with
            argmax (as after ``AsDiscreted(keys="label", to_onehot=...)``).
        output_transform: callable on ``engine.state.output`` returning ``(preds, labels)``, each a list of
            channel-first tensors or a batch-first tensor. Default ``from_engine([pred_key, label_key])``.
        batch_transform: callable on ``engine.state.batch`` returning one item per case from which the case name is
            read (a MetaTensor, a metadata dict or a path). Default: the ``image_key`` entries. When no file name is
            found there, the label's and then the prediction's metadata are tried, then ``item_00000``, ....
        use_subvoxels: surface-Dice variant, see :class:`KiTSCaseMetrics`.
        save_rank: in multi-process evaluation, rows are gathered from all ranks and only this rank writes.
        name: logger name; default this module's logger.

    Example (evaluate.json)::

        {"_target_": "scripts.evaluation.metrics.KiTSMetricsHandler", "output_dir": "$@output_dir + '/metrics'",
         "keep_cyst": false, "argmax": true}
    """

    def __init__(
        self,
        output_dir: PathLike,
        keep_cyst: bool = False,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        tolerance_mm: float | Mapping[str, float] = DEFAULT_TOLERANCE_MM,
        argmax: bool = False,
        output_transform: Callable | None = None,
        batch_transform: Callable | None = None,
        use_subvoxels: bool = True,
        save_rank: int = 0,
        name: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric = KiTSCaseMetrics(keep_cyst=keep_cyst, tolerance_mm=tolerance_mm, use_subvoxels=use_subvoxels)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.argmax = argmax
        self.output_transform = output_transform or from_engine([pred_key, label_key])
        self.batch_transform = batch_transform or self._image_items
        self.save_rank = save_rank
        self.logger = logging.getLogger(name) if name else logger
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self._n_unnamed = 0

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: Ignite Engine, typically a MONAI ``SupervisedEvaluator``.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, _engine: Engine) -> None:
        self.rows = []
        self._n_unnamed = 0

    def _iteration_completed(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        preds, labels = self._as_items(preds), self._as_items(labels)
        if len(preds) != len(labels):
            raise ValueError(f"got {len(preds)} predictions but {len(labels)} labels in this iteration.")
        meta_items = self._as_items(self.batch_transform(engine.state.batch))
        for i, (pred, label) in enumerate(zip(preds, labels)):
            meta_item = meta_items[i] if i < len(meta_items) else None
            case = self._case_name(meta_item, label, pred)
            label_map = self._to_label_map(label, argmax=None)
            pred_map = self._to_label_map(pred, argmax=self.argmax)
            row: dict[str, Any] = {"case": case}
            row.update(self.metric(pred_map, label_map))
            self.rows.append(row)

    def __call__(self, engine: Engine) -> None:
        """Gather rows (multi-process), write the reports on ``save_rank`` and log the summary table."""
        world_size = idist.get_world_size()
        if self.save_rank >= world_size:
            raise ValueError("target save rank is greater than the distributed group size.")
        rows = self.rows
        if world_size > 1:
            gathered = string_list_all_gather(strings=[json.dumps(r) for r in self.rows])
            rows = [json.loads(s) for s in gathered]
        if idist.get_rank() != self.save_rank:
            return
        if not rows:
            self.logger.warning("KiTSMetricsHandler: no cases were evaluated; no report written.")
            return
        self.summary = write_metrics_csv(
            rows, self.output_dir / "metrics_per_case.csv", self.output_dir / "metrics_summary.csv"
        )
        self.logger.info(self._table(self.summary))

    def _table(self, summary: dict[str, Any]) -> str:
        """Compact log table: one line per region, mean +/- std over the cases where the value exists."""
        lines = [
            f"KiTS metrics, {summary['n_cases']} case(s), written to {self.output_dir}; mean +/- std over cases "
            "with a value (n), NaN ignored:",
            f"{'region':<18} {'dice':>20} {'nsd':>20} {'hd95_mm':>22} {'status counts'}",
        ]
        for region in self.metric.regions:
            cells = []
            for metric, width in (("dice", 20), ("nsd", 20), ("hd95_mm", 22)):
                st = summary["metrics"].get(f"{region}_{metric}", {"mean": float("nan"), "std": float("nan"), "n": 0})
                cells.append(f"{st['mean']:.4f} +/- {st['std']:.4f} ({st['n']})".rjust(width))
            counts = summary["status_counts"].get(f"{region}_status", {})
            lines.append(f"{region:<18} {' '.join(cells)} {counts}")
        return "\n".join(lines)

    def _image_items(self, batch: Any) -> list[Any]:
        if isinstance(batch, list):
            return [b.get(self.image_key) if isinstance(b, Mapping) else None for b in batch]
        if isinstance(batch, Mapping) and batch.get(self.image_key) is not None:
            return self._as_items(batch[self.image_key])
        return []

    @staticmethod
    def _as_items(data: Any) -> list[Any]:
        """A list of per-case items from a list, tuple or batch-first tensor/array."""
        if data is None:
            return []
        if isinstance(data, (list, tuple)):
            return list(data)
        if isinstance(data, (torch.Tensor, np.ndarray)):
            return list(decollate_batch(data, detach=True))
        return [data]

    def _case_name(self, *candidates: Any) -> str:
        for item in candidates:
            filename = None
            if isinstance(item, MetaTensor):
                filename = item.meta.get(ImageMetaKey.FILENAME_OR_OBJ)
            elif isinstance(item, Mapping):
                filename = item.get(ImageMetaKey.FILENAME_OR_OBJ)
            elif isinstance(item, (str, os.PathLike)):
                filename = item
            if isinstance(filename, (list, tuple)) and len(filename) == 1:
                filename = filename[0]
            if isinstance(filename, (str, os.PathLike)) and str(filename):
                return case_name_from_path(filename)
        name = f"item_{self._n_unnamed:05d}"
        self._n_unnamed += 1
        return name

    @staticmethod
    def _to_label_map(x: Any, argmax: bool | None) -> torch.Tensor:
        """
        Channel-first item -> (1, *spatial) label map on CPU, keeping MetaTensor metadata for the spacing.
        ``argmax=None`` reduces only multi-channel (one-hot) inputs. Plain tensors must be channel-first.
        """
        t = x if isinstance(x, torch.Tensor) else convert_to_tensor(x)
        if isinstance(t, MetaTensor) and not t.is_batch and t.ndim == t.spatial_ndim:
            t = t[None]  # a label map saved without a channel axis
        if argmax is None:
            argmax = t.shape[0] > 1
        if argmax:
            if t.shape[0] < 2:
                raise ValueError(f"argmax needs a multi-channel (C, H, W[, D]) input, got {tuple(t.shape)}.")
            t = torch.argmax(t, dim=0, keepdim=True)
        elif t.shape[0] != 1:
            raise ValueError(
                f"expected a label map (1, H, W[, D]), got shape {tuple(t.shape)}; "
                "set argmax=True for channel-first scores or one-hot predictions."
            )
        return t.detach().cpu()
