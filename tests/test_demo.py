"""The README's main job, shrunk: ``python -m scripts.demo`` builds phantoms, trains, evaluates, prunes, evaluates the
pruned weights, infers and writes RESULTS.md (weights into a temporary folder, not the repository's models/)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import pytest

from conftest import BUNDLE_ROOT


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    out, models = tmp_path / "demo", tmp_path / "models"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--output_dir", str(out), "--models_dir", str(models),
         "--num_train", "6", "--num_test", "2", "--epochs", "1", "--finetune_epochs", "1", "--in_plane_size", "128"],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = (out / "RESULTS.md").read_text()
    assert "SYNTHETIC" in results and "## Pruned model" in results and "pruned + fine-tuned" in results
    assert "Training kidneys: procedural" in results  # which kidney shapes trained (KiTS23 masks or not)
    assert {p.name for p in models.iterdir()} >= {"model.pt", "model_pruned.pt", "derived"}
    assert (models / "derived" / "model_pruned.sparse.pt").is_file()  # not in models/*.pt, which MONAI Label lists
    assert (out / "pruning" / "pruning_report.json").is_file()
    assert (out / "evaluation_pruned" / "metrics_per_case.csv").is_file()
    case = sorted((out / "data" / "test").glob("case_*"))[0]
    assert nib.load(out / "inference" / f"{case.name}.nii.gz").shape == nib.load(case / "imaging.nii.gz").shape
