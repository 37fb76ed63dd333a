"""Case-level k-fold datalists from a KiTS-layout folder (scripts/data/datalist.py), on tiny NIfTIs in tmp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from conftest import BUNDLE_ROOT
from scripts.common.errors import InputError
from scripts.data.datalist import (
    IMAGE_NAME,
    LABEL_NAME,
    build_datalist,
    evaluation_datalist,
    find_kits_cases,
    load_datalist,
    split_folds,
    write_datalist,
)

SHAPE = (8, 8, 4)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 3.0, 1.0])), str(path))


def make_kits(root: Path, num_cases: int, shape: tuple[int, ...] = SHAPE, first: int = 0) -> Path:
    """``root/case_XXXXX/{imaging,segmentation}.nii.gz``: int16 CT-like image and uint8 label."""
    for index in range(first, first + num_cases):
        case = root / f"case_{index:05d}"
        _save(case / IMAGE_NAME, np.full(shape, -1000, np.int16))
        _save(case / LABEL_NAME, np.zeros(shape, np.uint8))
    return root


def _case(item: dict) -> str:
    return Path(item["image"]).parent.name


@pytest.fixture(scope="module")
def kits10(tmp_path_factory) -> Path:
    return make_kits(tmp_path_factory.mktemp("kits10"), 10)


def test_find_kits_cases_relative_paths(kits10):
    (kits10 / "not_a_case").mkdir(exist_ok=True)  # ignored: does not match case_XXXXX
    items = find_kits_cases(kits10)
    assert [_case(i) for i in items] == [f"case_{i:05d}" for i in range(10)]
    assert items[0] == {"image": f"case_00000/{IMAGE_NAME}", "label": f"case_00000/{LABEL_NAME}"}


def test_folds_deterministic_for_a_seed(kits10):
    first = build_datalist(kits10, num_folds=5, seed=7)["training"]
    second = build_datalist(kits10, num_folds=5, seed=7)["training"]
    assert first == second
    other = build_datalist(kits10, num_folds=5, seed=8)["training"]
    assert [i["fold"] for i in first] != [i["fold"] for i in other]


@pytest.mark.parametrize("num_cases, num_folds", [(10, 5), (7, 3), (5, 5), (11, 4)])
def test_every_case_in_one_balanced_fold(tmp_path, num_cases, num_folds):
    datalist = build_datalist(make_kits(tmp_path, num_cases), num_folds=num_folds, seed=0)
    items = datalist["training"]
    assert datalist["numTraining"] == num_cases and datalist["num_folds"] == num_folds
    assert len({_case(i) for i in items}) == num_cases  # every case listed exactly once
    sizes = Counter(i["fold"] for i in items)
    assert set(sizes) == set(range(num_folds))
    assert max(sizes.values()) - min(sizes.values()) <= 1


def test_split_folds_disjoint_and_complete(kits10):
    items = build_datalist(kits10, num_folds=5, seed=0)["training"]
    seen_in_validation = []
    for fold in range(5):
        split = split_folds(items, fold)
        train = {_case(i) for i in split["training"]}
        val = {_case(i) for i in split["validation"]}
        assert not train & val
        assert train | val == {_case(i) for i in items}
        assert all(i["fold"] == fold for i in split["validation"])
        seen_in_validation += sorted(val)
    assert sorted(seen_in_validation) == sorted(_case(i) for i in items)  # each case validated exactly once
    with pytest.raises(ValueError, match="fold 5"):
        split_folds(items, 5)


def test_build_datalist_rejects_bad_fold_counts(tmp_path):
    root = make_kits(tmp_path, 3)
    with pytest.raises(ValueError, match="num_folds"):
        build_datalist(root, num_folds=1)
    with pytest.raises(InputError, match="3 cases cannot be split into 5 folds"):
        build_datalist(root, num_folds=5)


def test_write_datalist_round_trips_with_monai(kits10, tmp_path):
    datalist = build_datalist(kits10, num_folds=5, seed=0)
    output = tmp_path / "sub" / "datalist.json"
    assert write_datalist(datalist, output) == str(output)
    assert json.loads(output.read_text()) == datalist
    assert os.listdir(output.parent) == ["datalist.json"]  # no temporary file left
    assert output.stat().st_mode & 0o044  # readable by others, not mkstemp's private 0o600
    loaded = load_decathlon_datalist(str(output), True, "training", base_dir=str(kits10))
    assert len(loaded) == 10
    for item, original in zip(loaded, datalist["training"]):
        assert item["image"] == os.path.normpath(kits10 / original["image"])
        assert item["label"] == os.path.normpath(kits10 / original["label"])
        assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file()
        assert item["fold"] == original["fold"]


def test_write_datalist_failure_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        write_datalist({"training": [{"image": object()}]}, tmp_path / "datalist.json")
    assert os.listdir(tmp_path) == []


def test_load_datalist_with_and_without_json(kits10, tmp_path):
    built = load_datalist(str(kits10), None, fold=2, num_folds=5, seed=4)
    assert len(built["training"]) == 8 and len(built["validation"]) == 2
    for item in built["training"] + built["validation"]:
        assert Path(item["image"]).is_file() and Path(item["label"]).is_file()
    json_path = tmp_path / "datalist.json"
    write_datalist(build_datalist(kits10, num_folds=5, seed=4), json_path)
    from_json = load_datalist(str(kits10), str(json_path), fold=2)
    for key in ("training", "validation"):
        assert [os.path.normpath(i["image"]) for i in from_json[key]] == \
               [os.path.normpath(i["image"]) for i in built[key]]


def test_load_plain_msd_json_with_validation_list(kits10, tmp_path):
    msd = {
        "training": [{"image": f"case_0000{i}/{IMAGE_NAME}", "label": f"case_0000{i}/{LABEL_NAME}"} for i in range(7)],
        "validation": [{"image": f"case_0000{i}/{IMAGE_NAME}", "label": f"case_0000{i}/{LABEL_NAME}"}
                       for i in range(7, 10)],
    }
    path = tmp_path / "msd.json"
    path.write_text(json.dumps(msd))
    split = load_datalist(str(kits10), str(path))
    assert [_case(i) for i in split["training"]] == [f"case_0000{i}" for i in range(7)]
    assert [_case(i) for i in split["validation"]] == [f"case_0000{i}" for i in range(7, 10)]
    assert all(Path(i["label"]).is_absolute() for i in split["validation"])

    del msd["validation"]
    path.write_text(json.dumps(msd))
    assert load_datalist(str(kits10), str(path))["validation"] == []


def test_load_datalist_missing_json(kits10, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match="nope.json: datalist file does not exist"):
        load_datalist(str(kits10), str(missing))


def test_evaluation_datalist(kits10):
    every = evaluation_datalist(str(kits10), all_cases=True)
    assert [_case(i) for i in every] == [f"case_{i:05d}" for i in range(10)]
    assert all(Path(i["image"]).is_file() and Path(i["label"]).is_file() for i in every)
    validation = evaluation_datalist(str(kits10), None, fold=1, num_folds=5, seed=0)
    expected = load_datalist(str(kits10), None, fold=1, num_folds=5, seed=0)["validation"]
    assert validation == expected and len(validation) == 2


def test_folder_without_cases(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "ct.nii.gz").write_bytes(b"not a case folder")
    with pytest.raises(InputError) as info:
        find_kits_cases(tmp_path / "scans")
    assert str(tmp_path / "scans") in str(info.value) and "no case_XXXXX folders" in str(info.value)
    with pytest.raises(InputError, match="dataset folder does not exist"):
        find_kits_cases(tmp_path / "absent")


def test_missing_imaging_or_label(tmp_path):
    root = make_kits(tmp_path, 3)
    (root / "case_00001" / LABEL_NAME).unlink()
    with pytest.raises(InputError) as info:
        build_datalist(root, num_folds=2)
    assert str(root / "case_00001" / LABEL_NAME) in str(info.value) and "label file does not exist" in str(info.value)
    assert "label" not in find_kits_cases(root, require_label=False)[1]  # inference-style listing is fine

    (root / "case_00002" / IMAGE_NAME).unlink()
    with pytest.raises(InputError) as info:
        find_kits_cases(root, require_label=False)
    assert str(root / "case_00002" / IMAGE_NAME) in str(info.value) and "image file does not exist" in str(info.value)


@pytest.mark.slow  # a subprocess that imports MONAI
def test_cli_writes_datalist(tmp_path):
    root = make_kits(tmp_path / "kits", 6)
    output = tmp_path / "out" / "datalist.json"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.data.datalist", "--dataset_dir", str(root), "--output", str(output),
         "--num_folds", "3", "--seed", "1"],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}: 6 cases in 3 folds" in result.stdout
    datalist = json.loads(output.read_text())
    assert datalist == build_datalist(root, num_folds=3, seed=1)
