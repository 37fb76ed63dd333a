"""Preprocess once (issue 16): every case of a KiTS folder as one slice-major uint8 array on disk, plus an index.

nnU-Net preprocesses a data set once and trains from arrays read memory-mapped; this is the same idea on top of the
bundle's own transforms. Each case is read once (in parallel worker processes), run through the config's
``deterministic_transforms`` (load, checks, RAS, label mapping, the ``intensity_and_resize`` HU window and area
resize: exactly what ``CacheDataset`` holds in RAM today) and written as::

    <cache_dir>/case_00000.npy   (slices, 2, H, W) uint8: [:, 0] image round(255 * windowed), [:, 1] label
    <cache_dir>/case_00000.json  the entry: slices, per class the slices holding it and their voxel counts,
                                 the source files' size, mtime and BLAKE2 hash, the settings it was built with
    <cache_dir>/index.json       all entries of the last run, for people and tools

Slice-major means one training slice is one contiguous 2*H*W-byte read. ``uint8`` for the windowed image: the
quantisation step is 1/255 of the window (1.5 HU for [-79, 304]), 0.2 % at most after rounding, well under
the +-5 % intensity shift of the training augmentation; ``docs/performance.md`` (issue 16) measures the Dice and
loss difference against float32.

An entry is complete when its ``.json`` exists: the ``.npy`` is written to a temporary file and renamed first, the
``.json`` last, and a rebuilt entry loses its old ``.json`` before anything else is written, so a killed run
leaves no entry that looks complete. A rerun rebuilds what is missing or stale (source size or mtime changed and
its hash differs, or other settings) and skips the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..common.atomic import atomic_write, atomic_write_text
from ..common.errors import InputError
from .layout import case_name

__all__ = ["CACHE_VERSION", "SliceCache", "no_cache_dir", "file_stamp", "file_hash", "quantise", "dequantise"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: in-plane padding to slice_size's aspect before the resize
INDEX_NAME = "index.json"
LEVELS = 255  # uint8 image levels over the HU window


def quantise(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Windowed image in [0, 1] -> uint8 (nearest of 256 levels)."""
    values = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.rint(np.clip(values, 0.0, 1.0) * LEVELS).astype(np.uint8)


def dequantise(image: np.ndarray) -> torch.Tensor:
    """uint8 levels -> float32 in [0, 1] (the inverse of :func:`quantise` up to 1 / (2 * 255))."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).mul_(1.0 / LEVELS)


def file_stamp(path: str | os.PathLike) -> dict:
    """``{"size", "mtime_ns"}`` of a file: the quick test of whether a source changed."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """BLAKE2b (128-bit) of a file's bytes: a touched but unchanged source is not rebuilt."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _sources(item: Mapping) -> dict[str, str]:
    return {key: str(item[key]) for key in ("image", "label")}


class _CaseJobs(torch.utils.data.Dataset):
    """One item per case to (re)build; a worker process preprocesses it and writes its entry."""

    def __init__(self, cache: SliceCache, items: Sequence[Mapping]) -> None:
        self.cache, self.items = cache, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.cache.build_entry(self.items[index])


def _identity(x):
    return x


class SliceCache:
    """The preprocessed cache of one data set in ``cache_dir`` (see the module docstring for the layout).

    Args:
        cache_dir: the folder of the cache; empty means no cache (``enabled`` is False).
        preprocess: the per-case transform of a ``{"image", "label"}`` item, giving channel-first ``(1, H, W, Z)``
            image in [0, 1] and label (the config's ``deterministic_transforms``).
        settings: what the arrays depend on besides the sources (HU window, slice size, label mapping); an entry
            built with other settings is stale.
        num_workers: worker processes that build entries in parallel (0: in this process).
    """

    def __init__(self, cache_dir: str | os.PathLike, preprocess: Callable | None = None,
                 settings: Mapping | None = None, num_workers: int = 0) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.preprocess = preprocess
        self.settings = json.loads(json.dumps(dict(settings or {})))  # plain JSON types, comparable with a file's
        self.num_workers = int(num_workers)

    @property
    def enabled(self) -> bool:
        return self.cache_dir is not None

    def array_path(self, case: str) -> Path:
        return self.cache_dir / f"{case}.npy"

    def entry_path(self, case: str) -> Path:
        return self.cache_dir / f"{case}.json"

    # ---- reading -------------------------------------------------------------------------------------------------

    def array(self, case: str) -> np.ndarray:
        """The case's ``(slices, 2, H, W)`` uint8 array, memory-mapped read-only (nothing read until indexed)."""
        return np.load(self.array_path(case), mmap_mode="r")

    def read_entry(self, case: str) -> dict | None:
        path = self.entry_path(case)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: rebuilt

    def is_fresh(self, item: Mapping, entry: dict | None) -> bool:
        """True when ``entry`` was built from ``item``'s sources as they are now, with these settings."""
        if entry is None or entry.get("version") != CACHE_VERSION or entry.get("settings") != self.settings:
            return False
        if not self.array_path(entry["case"]).is_file():
            return False
        for key, path in _sources(item).items():
            source = entry["sources"].get(key)
            if source is None or Path(source["path"]).resolve() != Path(path).resolve():
                return False
            stamp = file_stamp(path)
            if stamp != source["stamp"]:
                if file_hash(path) != source["blake2b"]:
                    return False
                source["stamp"] = stamp  # touched, same bytes: keep the entry, remember the new stamp
                atomic_write_text(self.entry_path(entry["case"]), json.dumps(entry))
        return True

    # ---- building ------------------------------------------------------------------------------------------------

    def build_entry(self, item: Mapping) -> dict:
        """Preprocess one case and write its array and entry (atomically, entry last); returns the entry."""
        case = case_name(item["image"])
        self.entry_path(case).unlink(missing_ok=True)  # from here on the old entry no longer counts as complete
        started = time.perf_counter()
        sources = {key: {"path": str(Path(path).resolve()), "stamp": file_stamp(path), "blake2b": file_hash(path)}
                   for key, path in _sources(item).items()}
        data = self.preprocess({"image": str(item["image"]), "label": str(item["label"])})
        image, label = data["image"], data["label"]
        if tuple(image.shape) != tuple(label.shape) or image.ndim != 4:
            raise InputError(f"{item['label']}: label shape {tuple(label.shape)} does not match the image's "
                             f"{tuple(image.shape)} after preprocessing")
        # channel-first (1, H, W, Z) -> slice-major (Z, 2, H, W)
        slices = np.stack([quantise(torch.as_tensor(image)[0].float()),
                           torch.as_tensor(label)[0].to(torch.uint8).numpy()], axis=0)
        slices = np.ascontiguousarray(slices.transpose(3, 0, 1, 2))
        atomic_write(self.array_path(case), lambda tmp: np.save(tmp, slices), suffix=".npy")
        entry = {"version": CACHE_VERSION, "case": case, "settings": self.settings, "sources": sources,
                 "shape": list(slices.shape), **class_slices(slices[:, 1], self.num_classes),
                 "seconds": round(time.perf_counter() - started, 3)}
        atomic_write_text(self.entry_path(case), json.dumps(entry))
        return entry

    @property
    def num_classes(self) -> int:
        values = self.settings.get("label_values") or [0, 1, 2]
        return int(max(values)) + 1

    def build(self, items: Sequence[Mapping]) -> dict:
        """Make the cache up to date for ``items`` (``{"image", "label"}`` paths): build missing and stale entries in
        ``num_workers`` processes, skip fresh ones, write ``index.json``; returns the index.

        Under ``torch.distributed`` rank 0 builds and the other ranks wait, then read.
        """
        if not self.enabled:
            raise InputError("--cache_dir: no cache folder given; pass --cache_dir DIR (a folder with room for about "
                             "2 * H * W bytes per slice, e.g. 14 GB for KiTS23 at 256x256)")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_rank() == 0:
                index = self._build(items)
            torch.distributed.barrier()
            return index if torch.distributed.get_rank() == 0 else self._build(items, build=False)
        return self._build(items)

    def build_split(self, split: Mapping[str, Sequence[Mapping]]) -> dict:
        """:meth:`build` for every case of a training/validation split (``run preprocessing``: all folds at once)."""
        return self.build([item for items in split.values() for item in items])

    def _build(self, items: Sequence[Mapping], build: bool = True) -> dict:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if build:
            for leftover in self.cache_dir.glob(".*"):  # temporary files of a killed run (atomic writes)
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
        entries, todo = {}, []
        names = [case_name(item["image"]) for item in items]
        if len(set(names)) != len(names):
            raise InputError(f"{self.cache_dir}: two cases share a name; the cache needs case_XXXXX folders")
        for item, case in zip(items, names):
            entry = self.read_entry(case)
            if self.is_fresh(item, entry):
                entries[case] = entry
            else:
                todo.append(item)
        if todo and not build:
            raise InputError(f"{self.cache_dir}: {len(todo)} case(s) missing or stale after rank 0 built the cache")
        if todo:
            logger.info("preprocessing %d case(s) into %s (%d up to date), %d worker(s)", len(todo), self.cache_dir,
                        len(entries), self.num_workers)
            started = time.perf_counter()
            loader = torch.utils.data.DataLoader(_CaseJobs(self, todo), batch_size=None, shuffle=False,
                                                 num_workers=min(self.num_workers, len(todo)), collate_fn=_identity)
            for done, entry in enumerate(loader, 1):
                entries[entry["case"]] = entry
                logger.info("cached %s (%d slices, %.1f s) [%d/%d]", entry["case"], entry["shape"][0],
                            entry["seconds"], done, len(todo))
            logger.info("preprocessed %d case(s) in %.1f s", len(todo), time.perf_counter() - started)
        else:
            logger.info("cache %s: all %d case(s) up to date", self.cache_dir, len(entries))
        index = {"version": CACHE_VERSION, "settings": self.settings,
                 "cases": {case: entries[case] for case in names}}
        if build:  # index.json: the cases of every build with these settings (training and validation fold)
            merged = self.read_index()
            merged["cases"].update(index["cases"])
            atomic_write_text(self.cache_dir / INDEX_NAME, json.dumps(merged))
        return index

    def read_index(self) -> dict:
        """``index.json`` when it was written with these settings, else an empty index."""
        try:
            index = json.loads((self.cache_dir / INDEX_NAME).read_text())
        except (OSError, ValueError):
            index = {}
        if index.get("version") != CACHE_VERSION or index.get("settings") != self.settings:
            index = {"version": CACHE_VERSION, "settings": self.settings, "cases": {}}
        return index


def no_cache_dir() -> None:
    """``run preprocessing`` without ``--cache_dir``: say so. A warning, not an error: MONAI Label resolves every id of
    train.json (run id ``""``), this one included, and must not fail on it."""
    logger.warning("run preprocessing: no --cache_dir given, nothing preprocessed (pass --cache_dir DIR)")


def class_slices(labels: np.ndarray, num_classes: int) -> dict:
    """Per foreground class, the slices that hold it and its voxel count in each (labels: ``(Z, H, W)``).

    Background is every slice, with ``H * W`` minus the foreground count; it is not stored.
    """
    depth = labels.shape[0]
    counts = np.stack([np.bincount(plane.ravel(), minlength=num_classes)[:num_classes] for plane in labels]) \
        if depth else np.zeros((0, num_classes), dtype=np.int64)
    found, voxels = {}, {}
    for c in range(1, num_classes):
        (where,) = np.nonzero(counts[:, c])
        found[str(c)] = where.tolist()
        voxels[str(c)] = counts[where, c].tolist()
    return {"class_slices": found, "class_voxels": voxels}
