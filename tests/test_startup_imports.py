"""What the inference path imports (issue 17: start-up before the first slice), checked in fresh subprocesses.

Not a timed test (times belong to ``bench/startup.py`` and ``docs/perf_notes/issue17_startup.md``): these check
which modules get imported, which is what start-up time is made of and what a change can silently make worse.

- The console command's module ``scripts.cli.main`` (``kidney-seg``; also ``--help`` and argument errors) imports no
  torch, MONAI or other heavy library until a run starts.
- The streaming path logs the wall-clock time of the process's first network batch once, at DEBUG: the mark
  ``bench/startup.py`` measures "process start to first slice" by.
- The inference modules and the ``imports`` of ``configs/inference.json`` import nothing of ``scripts.training``
  or ``scripts.evaluation`` and do not try to import DICOM (pydicom, highdicom), ONNX Runtime or matplotlib: those
  are made unavailable in the child (an import of them raises ``ImportError``, which MONAI's own optional imports
  tolerate) and every attempt is recorded, so a module-level import added to the inference path fails here even
  though ``import monai`` itself loads pydicom and matplotlib when they are installed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import numpy as np
import torch

from conftest import BUNDLE_ROOT

INFERENCE_MODULES = ("scripts.inference.streaming", "scripts.inference.fast_path", "scripts.inference.slice_inferer",
                     "scripts.inference.onnx_backend", "scripts.data.inputs", "scripts.data.ct_reader",
                     "scripts.outputs.writer", "scripts.outputs.formats", "scripts.common.checks",
                     "scripts.common.weights", "scripts.common.errors", "scripts.networks", "scripts.cli.main",
                     "scripts.cli.runner")
UNAVAILABLE = ("pydicom", "highdicom", "onnxruntime", "matplotlib")
NOT_INFERENCE = ("scripts.training", "scripts.evaluation")

# Runs in the child: import MONAI (it needs none of UNAVAILABLE), then the modules; report what was tried and loaded.
CHILD = """
import importlib, importlib.abc, json, sys

unavailable, tried = set(sys.argv[1].split(",")), []


class Unavailable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in unavailable:
            tried.append(name)
            raise ImportError(f"{name}: made unavailable by tests/test_startup_imports.py")
        return None


sys.meta_path.insert(0, Unavailable())
import monai  # noqa: E402,F401  every inference module needs it; its optional imports of these fail quietly

del tried[:]
for module in json.loads(sys.argv[2]):
    importlib.import_module(module)
for line in json.loads(sys.argv[3]):
    exec(line.lstrip("$"))
print("RESULT " + json.dumps({"tried": sorted(set(tried)), "loaded": sorted(sys.modules)}))
"""


def _child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=BUNDLE_ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(BUNDLE_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(line[-1].split(" ", 1)[1])


def _packages(loaded: list[str], names) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def test_console_command_module_imports_no_heavy_library():
    code = "import json, sys\nimport scripts.cli.main\nprint('RESULT ' + json.dumps({'loaded': sorted(sys.modules)}))"
    loaded = _child(code)["loaded"]
    assert "scripts.cli.main" in loaded  # the check below looked at a real import
    heavy = ("torch", "monai", "ignite", "numpy", "nibabel", "scipy", "tqdm") + UNAVAILABLE + NOT_INFERENCE
    assert _packages(loaded, heavy) == []


def test_inference_path_imports_no_training_evaluation_dicom_onnx_or_matplotlib():
    config = json.loads((BUNDLE_ROOT / "configs" / "inference.json").read_text())
    result = _child(CHILD, ",".join(UNAVAILABLE), json.dumps(INFERENCE_MODULES), json.dumps(config["imports"]))
    for module in INFERENCE_MODULES:
        assert module in result["loaded"]
    assert result["tried"] == [], f"the inference path tried to import {result['tried']}"
    assert _packages(result["loaded"], NOT_INFERENCE) == []
    assert _packages(result["loaded"], UNAVAILABLE) == []


def test_the_check_sees_an_import_of_an_unavailable_module():
    """The child's recorder itself: importing a module that imports pydicom shows up (no silent pass)."""
    result = _child(CHILD, "pydicom", json.dumps(["scripts.data.layout"]),
                    json.dumps(["try:\n    import pydicom\nexcept ImportError:\n    pass"]))
    assert result["tried"] == ["pydicom"]
    assert "scripts.data.layout" in result["loaded"]


def test_first_network_batch_is_logged_once_with_its_time(caplog, monkeypatch):
    from scripts.data.ct_reader import LoadedCT
    from scripts.inference import streaming

    monkeypatch.setattr(streaming, "_first_batch_logged", False)  # as in a fresh process
    ct = LoadedCT("synthetic.nii.gz", np.full((24, 24, 3), 100, np.int16), np.eye(4))  # SYNTHETIC: 3 body slices
    segmenter = streaming.StreamingSegmenter(torch.nn.Conv2d(1, 3, 1), slice_size=(16, 16), lcc_enabled=False,
                                             chunk_slices=1)
    with caplog.at_level(logging.DEBUG, logger="scripts.inference.streaming"):
        before = time.time()
        segmenter.segment(ct)
        segmenter.segment(ct)
        after = time.time()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("first network batch done")]
    assert len(lines) == 1  # six batches, one line
    assert before - 0.001 <= float(lines[0].rsplit(" ", 1)[1]) <= after + 0.001  # logged to the millisecond
