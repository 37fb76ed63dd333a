"""Build a case-level k-fold datalist (MSD-style JSON) from a KiTS19/21/23 folder, real or synthetic.

The folder layout is exactly the one KiTS distributes::

    <dataset_dir>/case_00000/imaging.nii.gz
    <dataset_dir>/case_00000/segmentation.nii.gz
    ...

Every case gets a ``fold`` (0..num_folds-1) from a seeded shuffle, so a case is never split across
training and validation. Paths are stored relative to ``dataset_dir`` and resolved with MONAI's
``load_decathlon_datalist`` (the same call the model-zoo bundles use).

Command line::

    python -m scripts.data.datalist --dataset_dir /data/kits23 --output configs/datalist.json
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..common.atomic import atomic_write_text
from ..common.errors import InputError
from .checks import check_datalist
from .layout import CASE_PATTERN, IMAGE_NAME, LABEL_NAME

__all__ = ["find_kits_cases", "build_datalist", "write_datalist", "load_datalist", "LazyDatalist", "split_folds",
           "evaluation_datalist"]



def find_kits_cases(dataset_dir: str | os.PathLike, require_label: bool = True) -> list[dict[str, str]]:
    """List ``case_XXXXX`` folders of a KiTS-layout directory as ``{"image", "label"}`` relative paths."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder does not exist")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and CASE_PATTERN.match(p.name))
    if not cases:
        raise InputError(f"{root}: no case_XXXXX folders found (expected the KiTS layout case_XXXXX/{IMAGE_NAME})")
    items = []
    for case in cases:
        if not (case / IMAGE_NAME).exists():
            raise InputError(f"{case / IMAGE_NAME}: image file does not exist")
        item = {"image": f"{case.name}/{IMAGE_NAME}"}
        if (case / LABEL_NAME).exists():
            item["label"] = f"{case.name}/{LABEL_NAME}"
        elif require_label:
            raise InputError(f"{case / LABEL_NAME}: label file does not exist")
        items.append(item)
    return items


def build_datalist(dataset_dir: str | os.PathLike, num_folds: int = 5, seed: int = 0) -> dict:
    """Return an MSD-style datalist whose ``training`` items carry a case-level ``fold`` index."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    items = find_kits_cases(dataset_dir)
    if len(items) < num_folds:
        raise InputError(f"{dataset_dir}: {len(items)} cases cannot be split into {num_folds} folds")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    for rank, index in enumerate(order):
        items[index]["fold"] = rank % num_folds
    return {
        "name": "KiTS-layout kidney and kidney tumour CT",
        "description": f"case-level {num_folds}-fold split, seed {seed}, built by scripts/data/datalist.py",
        "labels": {"0": "background", "1": "kidney", "2": "tumor", "3": "cyst (KiTS21/23 only)"},
        "num_folds": num_folds,
        "seed": seed,
        "numTraining": len(items),
        "training": items,
    }


def write_datalist(datalist: dict, output: str | os.PathLike) -> str:
    """Write ``datalist`` as JSON atomically (temporary file, then rename)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(datalist, indent=2)  # fails before any file is created if datalist is not JSON
    atomic_write_text(output, text)
    return str(output)


def split_folds(items: list[dict], fold: int) -> dict[str, list[dict]]:
    """Split fold-annotated items into ``training`` (fold != ``fold``) and ``validation`` (fold == ``fold``)."""
    folds = {item["fold"] for item in items}
    if fold not in folds:
        raise ValueError(f"fold {fold} is not in the datalist folds {sorted(folds)}")
    return {
        "training": [i for i in items if i["fold"] != fold],
        "validation": [i for i in items if i["fold"] == fold],
    }


def load_datalist(dataset_dir: str, data_list_file_path: str | None = None, fold: int = 0, num_folds: int = 5,
                  seed: int = 0, check: bool = True) -> dict[str, list[dict]]:
    """Training/validation split for the workflows: from a datalist JSON when given, else built on the fly.

    A JSON may hold fold-annotated ``training`` items (this module's format) or separate ``training``
    and ``validation`` lists (plain MSD). Paths are resolved against ``dataset_dir``. With ``check``,
    every file is checked (exists, readable header, 3D, label shape == image shape) before caching starts.
    """
    from monai.data import load_decathlon_datalist  # MONAI only where a training datalist is read

    if data_list_file_path:
        if not Path(data_list_file_path).is_file():
            raise InputError(f"{data_list_file_path}: datalist file does not exist")
        training = load_decathlon_datalist(data_list_file_path, True, "training", base_dir=dataset_dir)
        if training and "fold" in training[0]:
            split = split_folds(training, fold)
        else:
            with open(data_list_file_path) as f:
                has_validation = "validation" in json.load(f)
            validation = (load_decathlon_datalist(data_list_file_path, True, "validation", base_dir=dataset_dir)
                          if has_validation else [])
            split = {"training": training, "validation": validation}
    else:
        datalist = build_datalist(dataset_dir, num_folds=num_folds, seed=seed)
        for item in datalist["training"]:
            for key in ("image", "label"):
                item[key] = os.path.join(dataset_dir, item[key])
        split = split_folds(datalist["training"], fold)
    if check:
        for items in split.values():
            if items:
                check_datalist(items)
    return split


class LazyDatalist(Mapping):
    """The split of :func:`load_datalist` (same arguments), loaded and checked on first access only.

    MONAI Label's trainer replaces ``train#dataset#data`` and ``validate#dataset#data`` with its own lists and
    runs the bundle with the run id Slicer sends, ``""``, which makes MONAI resolve every id of train.json:
    an eager ``load_datalist`` would then fail on the default ``dataset_dir`` although nothing uses it.
    """

    def __init__(self, *args, **kwargs) -> None:
        self._args, self._kwargs = args, kwargs
        self._split: dict[str, list[dict]] | None = None

    def _load(self) -> dict[str, list[dict]]:
        if self._split is None:
            self._split = load_datalist(*self._args, **self._kwargs)
        return self._split

    def __getitem__(self, key: str) -> list[dict]:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def evaluation_datalist(dataset_dir: str, data_list_file_path: str | None = None, fold: int = 0,
                        num_folds: int = 5, seed: int = 0, all_cases: bool = False) -> list[dict]:
    """Cases to evaluate: the validation fold of the training split, or every case of a held-out folder."""
    if not all_cases:
        return load_datalist(dataset_dir, data_list_file_path, fold, num_folds, seed)["validation"]
    items = [{key: os.path.join(dataset_dir, value) for key, value in item.items()}
             for item in find_kits_cases(dataset_dir)]
    return list(check_datalist(items))


def main(dataset_dir: str, output: str = "configs/datalist.json", num_folds: int = 5, seed: int = 0) -> str:
    """Command-line entry: build the datalist of ``dataset_dir`` and write it to ``output``."""
    datalist = build_datalist(dataset_dir, num_folds=num_folds, seed=seed)
    path = write_datalist(datalist, output)
    print(f"wrote {path}: {datalist['numTraining']} cases in {num_folds} folds (seed {seed})")
    return path


if __name__ == "__main__":
    import fire

    fire.Fire(main)
