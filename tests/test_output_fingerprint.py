"""tools/output_fingerprint.py's comparison: equal outputs pass, any real difference is reported (no workflow runs)."""

from __future__ import annotations

import importlib.util
import os

import torch

from conftest import BUNDLE_ROOT

_spec = importlib.util.spec_from_file_location("output_fingerprint", BUNDLE_ROOT / "tools" / "output_fingerprint.py")
fingerprint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fingerprint)


def _save_via_temporary_name(obj, target):
    """As the bundle's atomic writer does: torch.save to a temporary name, then rename (the zip keeps that name)."""
    tmp = target.parent / f".{target.name}.{os.getpid()}{id(obj)}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, target)


def _capture(root, weight: float, nrrd_data: bytes, date: bytes):
    (root / "inference").mkdir(parents=True)
    (root / "inference" / "case.seg.nrrd").write_bytes(b"NRRD0004\n# on " + date + b"\ntype: uint8\n\n" + nrrd_data)
    (root / "inference" / "case_volumes.json").write_text('{"kidney_ml": 1.0}')
    (root / "run.log").write_text(f"log of {root}")  # logs are not outputs
    _save_via_temporary_name({"model": {"w": torch.full((3,), weight)}}, root / "model.pt")


def test_same_outputs_written_at_other_times_and_names_agree(tmp_path):
    _capture(tmp_path / "a", 1.0, b"\x00\x01", b"2026-12-03 10:00:00")
    _capture(tmp_path / "b", 1.0, b"\x00\x01", b"2026-12-03 11:30:00")
    assert fingerprint.compare(tmp_path / "a", tmp_path / "b") == []


def test_changed_weights_labels_and_missing_files_are_reported(tmp_path):
    _capture(tmp_path / "a", 1.0, b"\x00\x01", b"d")
    _capture(tmp_path / "b", 2.0, b"\x00\x02", b"d")
    (tmp_path / "b" / "inference" / "case_volumes.json").unlink()
    (tmp_path / "b" / "extra.csv").write_text("x")
    assert fingerprint.compare(tmp_path / "a", tmp_path / "b") == [
        f"only in {tmp_path / 'a'}: inference/case_volumes.json",
        f"only in {tmp_path / 'b'}: extra.csv",
        "differs: inference/case.seg.nrrd",
        "differs: model.pt",
    ]
