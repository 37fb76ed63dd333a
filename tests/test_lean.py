"""``kidney-seg --lean`` (issue 17): the streaming path without torch or MONAI in the process.

Checked in fresh subprocesses on SYNTHETIC phantoms with the tiny random network: the first run exports
``<weights>.lean.onnx`` (torch + MONAI, once); a later run in a child where torch, MONAI and ignite cannot be
imported writes the same files as ``kidney-seg`` without ``--lean`` (labels equal, same volumes and cohort rows);
changed configs or weights, or a damaged export, make a new export; a 3D network and ``--device cuda`` are refused
with one line.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import BUNDLE_ROOT, TINY_OVERRIDES, small_tmpfs

# the child: torch, MONAI and ignite made unimportable, then kidney-seg's main with the given arguments
NO_TORCH = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "monai", "ignite"):
            raise ImportError(f"{name}: blocked by tests/test_lean.py")
        return None

sys.meta_path.insert(0, Blocked())
from scripts.cli.main import main
code = main(sys.argv[1:])
assert not any(m.partition(".")[0] in ("torch", "monai", "ignite") for m in sys.modules), "torch/MONAI was imported"
sys.exit(code)
"""


def _kidney_seg(args, blocked: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    command = [sys.executable, "-c", NO_TORCH] if blocked else [sys.executable, "-m", "scripts.cli.main"]
    return subprocess.run([*command, *map(str, args)], cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def tiny_setup(tmp_path, tiny_weights):
    """A copy of the tiny weights (the export lands beside them) and the tiny network's overlay."""
    weights = tmp_path / "weights" / "model.pt"
    weights.parent.mkdir()
    shutil.copy(tiny_weights, weights)
    overlay = tmp_path / "tiny.json"
    overlay.write_text(json.dumps(TINY_OVERRIDES))
    return weights, overlay


def _labels(folder: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(folder / f"{case}.nii.gz").dataobj)


def _cohort_rows(folder: Path) -> list[dict]:
    with open(folder / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("seconds", None)  # run time differs
    return rows


def test_lean_run_imports_no_torch_and_writes_what_kidney_seg_writes(phantom_dir, tiny_setup, tmp_path):
    weights, overlay = tiny_setup
    common = ["-i", phantom_dir, "-m", weights, "--config", overlay, "-q"]
    first = _kidney_seg([*common, "-o", tmp_path / "first", "--lean"])  # exports (torch + MONAI allowed)
    assert first.returncode == 0, first.stderr[-3000:]
    export = Path(f"{weights}.lean.onnx")
    assert export.is_file()
    exported_at = export.stat().st_mtime_ns
    lean = _kidney_seg([*common, "-o", tmp_path / "lean", "--lean"], blocked=True)
    assert lean.returncode == 0, lean.stderr[-3000:]
    assert export.stat().st_mtime_ns == exported_at  # the cached export was used, not remade
    full = _kidney_seg([*common, "-o", tmp_path / "full"])
    assert full.returncode == 0, full.stderr[-3000:]
    cases = sorted(p.name for p in phantom_dir.iterdir() if p.name.startswith("case_"))
    assert len(cases) == 4
    for case in cases:
        expected = _labels(tmp_path / "full", case)
        np.testing.assert_array_equal(_labels(tmp_path / "lean", case), expected)
        np.testing.assert_array_equal(_labels(tmp_path / "first", case), expected)
        assert (tmp_path / "lean" / f"{case}_preview.png").is_file()
        volumes = [json.loads((tmp_path / run / f"{case}_volumes.json").read_text()) for run in ("lean", "full")]
        assert {k: v for k, v in volumes[0].items() if k != "files"} == {k: v for k, v in volumes[1].items()
                                                                         if k != "files"}
    assert _cohort_rows(tmp_path / "lean") == _cohort_rows(tmp_path / "full")


def test_lean_export_follows_the_weights_and_configs_and_replaces_a_damaged_one(phantom_dir, tiny_setup, tmp_path):
    import torch

    from scripts.networks import WPUNet

    weights, overlay = tiny_setup
    case = phantom_dir / "case_00001"
    export = Path(f"{weights}.lean.onnx")
    run = ["-i", case, "-m", weights, "--config", overlay, "-q", "--lean"]
    assert _kidney_seg([*run, "-o", tmp_path / "a"]).returncode == 0
    # other weights of the same network: a new export, and the lean run's labels follow them
    torch.manual_seed(7)
    net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))
    torch.save({"model": net.state_dict()}, weights)
    before = export.read_bytes()
    assert _kidney_seg([*run, "-o", tmp_path / "b"]).returncode == 0
    assert export.read_bytes() != before
    full = _kidney_seg(["-i", case, "-m", weights, "--config", overlay, "-q", "-o", tmp_path / "b_full"])
    assert full.returncode == 0, full.stderr[-2000:]
    np.testing.assert_array_equal(_labels(tmp_path / "b", "case_00001"), _labels(tmp_path / "b_full", "case_00001"))
    # another HU window in the configs: the settings travel with a new export
    overlay.write_text(json.dumps({**TINY_OVERRIDES, "hu_window": [-200, 400]}))
    before = export.read_bytes()
    assert _kidney_seg([*run, "-o", tmp_path / "c"]).returncode == 0
    assert export.read_bytes() != before
    full = _kidney_seg(["-i", case, "-m", weights, "--config", overlay, "-q", "-o", tmp_path / "c_full"])
    np.testing.assert_array_equal(_labels(tmp_path / "c", "case_00001"), _labels(tmp_path / "c_full", "case_00001"))
    # a truncated export (killed copy, full disk) is made again
    export.write_bytes(export.read_bytes()[:1000])
    again = _kidney_seg([*run, "-o", tmp_path / "d"])
    assert again.returncode == 0, again.stderr[-2000:]
    np.testing.assert_array_equal(_labels(tmp_path / "d", "case_00001"), _labels(tmp_path / "c", "case_00001"))


def test_lean_refuses_what_it_cannot_run_in_one_line(phantom_dir, tiny_setup, tmp_path):
    weights, overlay = tiny_setup
    case = phantom_dir / "case_00000"
    gpu = _kidney_seg(["-i", case, "-o", tmp_path / "o", "-m", weights, "--config", overlay, "--lean", "-d", "cuda"])
    assert gpu.returncode == 2 and "--lean runs on the CPU" in gpu.stderr.strip().splitlines()[-1]
    missing = _kidney_seg(["-i", case, "-o", tmp_path / "o", "-m", tmp_path / "none.pt", "--lean"], blocked=True)
    assert missing.returncode == 2 and "none.pt" in missing.stderr.strip().splitlines()[-1]
    assert "Traceback" not in missing.stderr
    three_d = _kidney_seg(["-i", case, "-o", tmp_path / "o", "-m", weights, "-n", "pocket_unet_3d", "--lean"])
    assert three_d.returncode == 2 and "3D" in three_d.stderr.strip().splitlines()[-1]
    assert "Traceback" not in three_d.stderr


def test_lean_export_on_a_full_disk_is_one_line_and_leaves_nothing(phantom_dir, tiny_setup, tmp_path):
    """The weights on a tmpfs with room for them but not for the export: one line, exit 2, no partial export."""
    weights, overlay = tiny_setup
    full = tmp_path / "full"
    with small_tmpfs(full, size_kib=weights.stat().st_size // 1024 + 8):
        shutil.copy(weights, full / "model.pt")
        result = _kidney_seg(["-i", phantom_dir / "case_00000", "-o", tmp_path / "o", "-m", full / "model.pt",
                              "--config", overlay, "--lean"])
        left = sorted(p.name for p in full.iterdir())
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot write its export" in result.stderr.strip().splitlines()[-1]
    assert left == ["model.pt"]


def test_lean_runs_a_channel_pruned_network_like_the_full_path(phantom_dir, tiny_setup, tmp_path):
    """``configs/structured.json`` builds its network from the weights file (channel widths): the export must too."""
    import torch

    from scripts.networks import WPUNet
    from scripts.pruning.structured import prune_channels

    _, overlay = tiny_setup
    torch.manual_seed(3)
    net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)).eval()
    prune_channels(net, torch.rand(1, 1, 64, 64), ratio=0.5)
    weights = tmp_path / "pruned" / "model_structured.pt"
    weights.parent.mkdir()
    torch.save({"model": net.state_dict()}, weights)
    run = ["-i", phantom_dir / "case_00003", "-m", weights, "--config", "configs/structured.json", "--config",
           overlay, "-q"]
    lean = _kidney_seg([*run, "-o", tmp_path / "lean", "--lean"])
    assert lean.returncode == 0, lean.stderr[-3000:]
    full = _kidney_seg([*run, "-o", tmp_path / "full"])
    assert full.returncode == 0, full.stderr[-3000:]
    np.testing.assert_array_equal(_labels(tmp_path / "lean", "case_00003"), _labels(tmp_path / "full", "case_00003"))
