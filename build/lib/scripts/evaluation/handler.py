"""Ignite handler: KiTS per-case metrics during a MONAI evaluation run, reported as CSV and JSON at epoch end."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai.config import PathLike
from monai.data import MetaTensor, decollate_batch
from monai.handlers.utils import from_engine
from monai.utils import (
    IgniteInfo,
    ImageMetaKey,
    convert_to_tensor,
    min_version,
    optional_import,
    string_list_all_gather,
)

from ..data.layout import case_name
from .case_metrics import DEFAULT_TOLERANCE_MM, KiTSCaseMetrics
from .report import write_metrics_csv

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["KiTSMetricsHandler"]

logger = logging.getLogger(__name__)


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
        keep_cyst: labelling and regions, see :func:`scripts.evaluation.regions.region_definitions`.
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

        {"_target_": "scripts.evaluation.handler.KiTSMetricsHandler", "output_dir": "$@output_dir + '/metrics'",
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
                return case_name(filename)
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
