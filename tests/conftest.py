"""Shared pytest fixtures: repository paths, real data locations, tiny synthetic phantoms and weights."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = BUNDLE_ROOT.parent / "shared" / "data"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))
os.environ.setdefault("PYTHONPATH", str(BUNDLE_ROOT))
# Tiny networks run faster on one thread, and CI shares two cores with subprocess workflow runs.
torch.set_num_threads(1)

# A WP-UNet small enough for CPU tests; every workflow test uses these overrides.
TINY_OVERRIDES = {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2], "slice_size": [64, 64]}


def run_bundle(run_id: str, config_files, tiny: bool = True, **overrides):
    """``python -m monai.bundle run <run_id>`` in a subprocess from the bundle root (``TINY_OVERRIDES`` first when
    ``tiny``); returns the ``CompletedProcess`` with text output."""
    from scripts.reports.workflow import run_bundle as run

    return run(run_id, config_files, **{**(TINY_OVERRIDES if tiny else {}), **overrides})


def run_inference(input_path, output_dir, model_path, **overrides) -> None:
    """``run inferring`` of configs/inference.json in this process with the tiny network (``TINY_OVERRIDES``)."""
    from scripts.reports.workflow import run_workflow_in_process

    run_workflow_in_process("inferring", "configs/inference.json", input_path=str(input_path),
                            output_dir=str(output_dir), model_path=str(model_path), num_workers=0,
                            **{**TINY_OVERRIDES, **overrides})


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; skips the calling test (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Four small synthetic KiTS-layout phantoms (96x96 in-plane, 5 mm slices; both storage layouts)."""
    from scripts.synthetic.phantoms import generate_dataset

    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(str(out), num_cases=4, seed=3, in_plane_size=96, slice_thickness_range=(5.0, 5.0))
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Randomly initialised weights of the tiny network (geometry tests do not need a trained model)."""
    from scripts.networks import WPUNet

    torch.manual_seed(0)
    net = WPUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save({"model": net.state_dict()}, path)
    return path


@pytest.fixture(autouse=True)
def _restore_excepthook(monkeypatch):
    """A workflow's ``initialize`` installs the one-line excepthook; keep it out of the test process."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_kib: int):
    """A tmpfs of ``size_kib`` KiB mounted on ``path``; skips the test when not root or when mounting fails."""
    if os.geteuid() != 0:
        pytest.skip("full-disk test needs root to mount a small tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
