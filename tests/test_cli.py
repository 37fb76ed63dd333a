"""The console command ``kidney-seg``, the checked ``python -m scripts.cli.bundle`` front, the Python API ``segment``
and ``pip install .`` (issue 15; one-line MONAI config errors from issue 14). Inputs are SYNTHETIC phantoms."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import BUNDLE_ROOT, TINY_OVERRIDES

from scripts.cli import main as cli
from scripts.cli import paths, validate
from scripts.cli.bundle import main as bundle_main

FLAGS = ["-i", "--input", "-o", "--output", "--model", "--device", "--network", "--output-format", "--fast",
         "--no-preview", "--resume", "--no-resume", "--stop-on-error", "--quiet", "--pattern", "--num-parts",
         "--part-id", "--merge", "--config", "--lean", "-h"]


@pytest.fixture
def captured(monkeypatch):
    """Run ``kidney-seg`` in this process with the workflow replaced by a recorder of its configs and overrides."""
    calls = []
    monkeypatch.setattr("scripts.cli.runner.run_inferring", lambda configs, overrides: calls.append((configs, overrides)))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> tuple[int, list[Path], dict]:
        code = cli.main(list(argv))
        return (code, *calls[-1]) if calls else (code, [], {})

    return run


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["-h"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", text), flag
    assert "exit codes" in text and "torchrun" in text


def test_bad_flag_is_usage_and_one_error_line():
    result = subprocess.run([sys.executable, "-m", "scripts.cli", "-i", "x", "-o", "y", "--bogus"], cwd=BUNDLE_ROOT,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "kidney-seg: error: unrecognized arguments: --bogus"
    assert lines[0].startswith("usage: kidney-seg") and "Traceback" not in result.stderr


def test_defaults_are_the_cohort_defaults(captured, tmp_path):
    code, configs, overrides = captured("-i", "in", "-o", str(tmp_path))
    assert code == 0 and [c.name for c in configs] == ["inference.json"]
    assert configs[0] == paths.config_dir() / "inference.json"
    assert overrides["input_path"] == "in" and overrides["output_dir"] == str(tmp_path)
    assert (overrides["resume"], overrides["stop_on_error"], overrides["preview"]) == (True, False, True)
    assert (overrides["cohort_statistics"], overrides["progress"]) == (True, True)
    assert (overrides["num_parts"], overrides["part_id"], overrides["output_format"]) == (1, 0, "nifti")
    assert "device" not in overrides and "model_path" not in overrides


def test_each_flag_reaches_the_workflow(captured, tmp_path, tiny_weights):
    code, configs, overrides = captured(
        "--input", "in", "--output", "out", "--model", str(tiny_weights), "--device", "cuda:1", "--network",
        "pocket_unet_2d", "--output-format", "seg_nrrd", "--no-preview", "--no-resume", "--stop-on-error",
        "--quiet", "--pattern", "*_venous.nii.gz", "--num-parts", "4", "--part-id", "3")
    assert code == 0
    assert [c.name for c in configs] == ["inference.json", "pocket_unet_2d.json"]
    assert overrides["model_path"] == str(tiny_weights)
    assert overrides["device"] == "$torch.device('cuda:1')"
    assert overrides["output_format"] == "seg_nrrd" and overrides["input_pattern"] == "*_venous.nii.gz"
    assert (overrides["preview"], overrides["resume"], overrides["stop_on_error"], overrides["progress"]) == (
        False, False, True, False)
    assert (overrides["num_parts"], overrides["part_id"]) == (4, 3)
    overlay = tmp_path / "extra.json"
    overlay.write_text("{}")
    _, configs, _ = captured("-i", "in", "-o", "out", "-n", "sd_unet.json", "--config", str(overlay))
    assert [c.name for c in configs] == ["inference.json", "sd_unet.json", "extra.json"]


def test_torchrun_environment_gives_the_part(captured, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")  # no MASTER_ADDR: no process group, just the share
    _, _, overrides = captured("-i", "in", "-o", "out")
    assert (overrides["num_parts"], overrides["part_id"]) == (3, 2)


@pytest.mark.parametrize("argv, expected", [
    (["--network", "foo"], "--network 'foo': no such network overlay; available: classic_unet, full_unet_2d, "),
    (["--network", "pocket_unet2d"], "did you mean 'pocket_unet_2d'?"),
    (["--model", "/nonexistent/model.pt"], "--model /nonexistent/model.pt: weights file does not exist"),
    (["--config", "/nonexistent/overlay.json"], "/nonexistent/overlay.json: config file not found"),
])
def test_bad_values_are_one_line(captured, capsys, argv, expected):
    code, _, _ = captured("-i", "in", "-o", "out", *argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("kidney-seg: error: ") and expected in err[0]


def test_part_flags_are_checked(captured, capsys):
    for argv in (["--num-parts", "2"], ["--num-parts", "2", "--part-id", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            captured("-i", "in", "-o", "out", *argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("kidney-seg: error: --")


def test_fast_picks_the_network_that_has_weights(captured, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(validate, "bundle_root", lambda: tmp_path)
    code, _, _ = captured("-i", "in", "-o", "out", "--fast")
    err = capsys.readouterr().err
    assert code == 2 and "--fast: no weights for a fast network" in err and "model_pocket_unet_2d.pt" in err
    (tmp_path / "models" / "derived").mkdir(parents=True)
    (tmp_path / "models" / "derived" / "model_structured.pt").write_bytes(b"x")
    _, configs, overrides = captured("-i", "in", "-o", "out", "--fast")
    assert configs[-1].name == "structured.json" and overrides["model_path"].endswith("derived/model_structured.pt")
    (tmp_path / "models" / "model_pocket_unet_2d.pt").write_bytes(b"x")
    _, configs, overrides = captured("-i", "in", "-o", "out", "--fast")
    assert configs[-1].name == "pocket_unet_2d.json" and overrides["model_path"].endswith("model_pocket_unet_2d.pt")
    with pytest.raises(SystemExit):  # one network choice at a time
        captured("-i", "in", "-o", "out", "--fast", "--network", "sd_unet")


# ------------------------------------------------------------------------ python -m scripts.cli.bundle (issue 14)
@pytest.mark.parametrize("argv, expected", [
    (["run", "infering", "--config_file", "configs/inference.json"],
     "run id 'infering' is not defined in inference.json; did you mean 'inferring'?"),
    (["run", "inferring", "--config_file", "configs/missing.json"], "configs/missing.json: config file not found"),
    (["run", "inferring", "--config_file", "['configs/inference.json','configs/networks/foo.json']"],
     "network overlays: classic_unet, full_unet_2d, pocket_unet_2d"),
    (["run", "--run_id", "trainig", "--config_file", "configs/train.json"], "did you mean 'training'?"),
])
def test_bundle_front_turns_monai_config_errors_into_one_line(capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(BUNDLE_ROOT)
    assert bundle_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]


@pytest.mark.slow
def test_bundle_front_runs_the_workflow(phantom_dir, tiny_weights, tmp_path):
    """The front passes a valid command line to MONAI unchanged: the same outputs as ``python -m monai.bundle``."""
    args = ["run", "inferring", "--config_file", "configs/inference.json", "--input_path",
            str(phantom_dir / "case_00000"), "--model_path", str(tiny_weights), "--preview", "False"]
    for key, value in TINY_OVERRIDES.items():
        args += [f"--{key}", json.dumps(value)]
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    outputs = []
    for module in ("scripts.cli.bundle", "monai.bundle"):
        out = tmp_path / module
        result = subprocess.run([sys.executable, "-m", module, *args, "--output_dir", str(out)], cwd=BUNDLE_ROOT,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(np.asarray(nib.load(out / "case_00000.nii.gz").dataobj))
    np.testing.assert_array_equal(*outputs)


# ------------------------------------------------------------------------------------------------ Python API
@pytest.mark.slow
def test_segment_api_path_and_nibabel_image(phantom_dir, tiny_weights, tmp_path):
    from scripts.cli.api import segment

    overlay = tmp_path / "tiny.json"
    overlay.write_text(json.dumps(TINY_OVERRIDES))
    source = phantom_dir / "case_00001" / "imaging.nii.gz"
    before = set(Path(tempfile.gettempdir()).glob("kidney-seg-*"))
    hook = sys.excepthook
    image, stats = segment(str(source), model=str(tiny_weights), configs=[str(overlay)], device="cpu")
    assert sys.excepthook is hook  # the workflow's one-line hook does not leak into the caller
    assert set(Path(tempfile.gettempdir()).glob("kidney-seg-*")) == before  # temporary outputs removed
    ct = nib.load(source)
    assert isinstance(image, nib.Nifti1Image) and image.shape == ct.shape
    np.testing.assert_allclose(image.affine, ct.affine, atol=1e-5)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1, 2}
    axial = int(np.flatnonzero(nib.io_orientation(ct.affine)[:, 0] == 2)[0])
    assert stats["case"] == "case_00001" and stats["slices"] == ct.shape[axial]
    assert stats["kidney_ml"] == pytest.approx(stats["left_kidney_ml"] + stats["right_kidney_ml"], abs=0.01)
    assert "qc_flags" in stats and "tumor_ml" in stats
    # the same CT as a nibabel image in memory, outputs kept in output_dir
    out = tmp_path / "kept"
    image2, stats2 = segment(nib.load(source), out, model=str(tiny_weights), configs=[str(overlay)], name="scan")
    np.testing.assert_array_equal(np.asarray(image2.dataobj), data)
    assert stats2["case"] == "scan" and (out / "scan.nii.gz").is_file() and (out / "cohort.csv").is_file()
    with pytest.raises(TypeError, match="unknown option"):
        segment(str(source), modle="x")


def test_segment_api_one_case_only(phantom_dir):
    from scripts.cli.api import segment
    from scripts.common.errors import InputError

    with pytest.raises(InputError, match="segment\\(\\) takes one case, this holds 4"):
        segment(phantom_dir)


# ------------------------------------------------------------------------------------------------ packaging
def test_pyproject_lists_every_package_and_the_pinned_requirements():
    config = tomllib.loads((BUNDLE_ROOT / "pyproject.toml").read_text())
    packages = set(config["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(BUNDLE_ROOT).parts) for p in (BUNDLE_ROOT / "scripts").rglob("__init__.py")}
    assert packages == folders | {"scripts.bundle_configs"}
    assert config["project"]["scripts"] == {"kidney-seg": "scripts.cli.main:main"}
    assert config["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]
    assert "torch==2.13.0" in (BUNDLE_ROOT / "requirements.txt").read_text().splitlines()


@pytest.mark.slow
def test_pip_install_gives_a_working_console_command(phantom_dir, tiny_weights, tmp_path):
    """``pip install .`` into a fresh venv (the project venv's packages visible through a .pth file, ``--no-deps``:
    no download), then ``kidney-seg`` from another folder, without PYTHONPATH, on a phantom."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    Path(site, "_project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # a clean copy of the checkout: setuptools builds in-tree, and a stale build/ of an earlier install would be reused
    source = tmp_path / "source"
    shutil.copytree(BUNDLE_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "demo_output", "models", "runs", "eval", "bench"))
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-build-isolation", "--no-index", str(source)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    command = venv / "bin" / "kidney-seg"
    overlay = tmp_path / "tiny.json"
    overlay.write_text(json.dumps(TINY_OVERRIDES))
    result = subprocess.run([str(command), "-i", str(phantom_dir / "case_00002"), "-o", str(tmp_path / "out"), "-m",
                             str(tiny_weights), "--config", str(overlay), "--quiet"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "case_00002.nii.gz").is_file() and (tmp_path / "out" / "cohort.csv").is_file()
    where = subprocess.run([str(python), "-c", "import scripts.cli.paths as p; print(p.config_dir())"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == Path(site) / "scripts" / "bundle_configs"  # the installed copy, not the checkout
    bad = subprocess.run([str(command), "-i", "x", "-o", "y", "--network", "foo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "available: classic_unet" in bad.stderr.strip().splitlines()[-1]


def test_progress_bar_only_on_a_terminal(monkeypatch):
    """The tqdm bar over cases shows with ``progress`` on a terminal only (log files keep the per-case lines)."""
    from scripts.inference.streaming import _progress_bar

    class Terminal:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Terminal(True))
    bar = _progress_bar(5, True, 1, 2)
    assert not bar.disable and bar.total == 5 and bar.desc.startswith("part 2/2")
    bar.close()
    assert _progress_bar(5, False, 0, 1).disable  # --quiet
    monkeypatch.setattr(sys, "stderr", Terminal(False))
    assert _progress_bar(5, True, 0, 1).disable  # redirected to a file
