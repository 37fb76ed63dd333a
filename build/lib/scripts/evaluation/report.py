"""Per-case metric rows -> NaN-ignoring summary statistics, and the CSV/JSON report files."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai.config import PathLike

from ..common.atomic import atomic_write_text

__all__ = ["summarise_metrics", "write_metrics_csv"]

_SUMMARY_STATS = ("mean", "std", "median", "n")


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
    metrics: dict[str, dict[str, float | int]] = {}
    status_counts: dict[str, dict[str, int]] = {}
    for col in _column_order(rows):
        if col == "case":
            continue
        values = [row.get(col) for row in rows]
        if col.endswith("_status"):
            status_counts[col] = _status_counts(values)
        elif all(v is None or isinstance(v, (int, float, np.number)) for v in values):
            metrics[col] = _nan_ignoring_stats(values)
    return {"n_cases": len(rows), "metrics": metrics, "status_counts": status_counts}


def _status_counts(values: Sequence[Any]) -> dict[str, int]:
    """How often each status occurs (missing values skipped)."""
    counts: dict[str, int] = {}
    for v in values:
        if v is not None:
            counts[str(v)] = counts.get(str(v), 0) + 1
    return counts


def _nan_ignoring_stats(values: Sequence[Any]) -> dict[str, float | int]:
    """Mean, population std, median and count of the values that are neither None nor NaN."""
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(np.median(finite)),
        "n": int(finite.size),
    }


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


def _csv_text(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue()


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _summary_json(summary: dict[str, Any]) -> str:
    """The summary as JSON text, NaN written as ``null``."""
    json_ready = dict(summary)
    json_ready["metrics"] = {k: {s: _nan_to_none(v) for s, v in st.items()} for k, st in summary["metrics"].items()}
    return json.dumps(json_ready, indent=2, allow_nan=False) + "\n"


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
    atomic_write_text(Path(csv_path), _csv_text(columns, ([_format_cell(row.get(c)) for c in columns] for row in rows)))
    summary = summarise_metrics(rows)
    stats = ([name] + [_format_cell(st[s]) for s in _SUMMARY_STATS] for name, st in summary["metrics"].items())
    summary_csv = Path(summary_path)
    atomic_write_text(summary_csv, _csv_text(("metric",) + _SUMMARY_STATS, stats))
    atomic_write_text(summary_csv.with_suffix(".json"), _summary_json(summary))
    return summary
