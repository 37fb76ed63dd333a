"""The one way the demo, the docs generators, bench/ and the tests run a bundle workflow.

In a child process (:func:`bundle_command`, :func:`run_bundle`, :func:`run_step`) each call is the command line a
user types (``python -m monai.bundle run <id> --config_file ...``), so what they run is what the README documents;
:func:`run_workflow_in_process` runs the same ``ConfigWorkflow`` in this process, for tests that inspect its exceptions.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BUNDLE_ROOT", "bundle_command", "run_bundle", "run_step", "run_workflow_in_process"]

BUNDLE_ROOT = Path(__file__).resolve().parents[2]


def _config_list(config_files: str | Sequence[str]) -> str:
    if isinstance(config_files, (str, Path)):
        return str(config_files)
    return "[" + ",".join(f"'{name}'" for name in config_files) + "]"


def _cli_value(value) -> str:
    """python-fire's reading of a command-line value: text as is, booleans as True/False, the rest as JSON."""
    return value if isinstance(value, str) else repr(value) if isinstance(value, bool) else json.dumps(value)


def bundle_command(run_id: str, config_files: str | Sequence[str], logging_file: str | None = "configs/logging.conf",
                   **overrides) -> list[str]:
    """The argument list of ``python -m monai.bundle run <run_id>`` with ``--key value`` for every override."""
    args = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", _config_list(config_files),
            "--bundle_root", str(BUNDLE_ROOT)]
    if logging_file:
        args += ["--logging_file", logging_file]
    for key, value in overrides.items():
        args += [f"--{key}", _cli_value(value)]
    return args


def run_bundle(run_id: str, config_files: str | Sequence[str], timeout: float = 600,
               **overrides) -> subprocess.CompletedProcess:
    """Run a workflow from the bundle root and return the finished process with its text output (for tests)."""
    args = bundle_command(run_id, config_files, logging_file=None, **overrides)
    return subprocess.run(args, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=timeout)


def run_step(args: list[str], log_path: Path) -> float:
    """Run one bundle command, echo it, tee its output to ``log_path``; return seconds taken (exits on failure)."""
    shown = ["python" if a == sys.executable else f'"{a}"' if "'" in a else shlex.quote(a) for a in args]
    print("\n$ " + " ".join(shown), flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, cwd=BUNDLE_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            log.flush()
            if " - INFO - " not in line or "Epoch[" in line and "Metrics" in line or "resumed" in line:
                sys.stdout.write(line)
        process.wait()
    if process.returncode != 0:
        sys.exit(f"step failed (exit {process.returncode}); full log in {log_path}")
    return time.perf_counter() - start


def run_workflow_in_process(run_id: str, config_files: str | Sequence[str], workflow_type: str = "infer",
                            **overrides) -> None:
    """``initialize``, ``run`` and ``finalize`` a bundle workflow in this process (config paths from the bundle root)."""
    from monai.bundle import ConfigWorkflow

    files = [config_files] if isinstance(config_files, (str, Path)) else list(config_files)
    workflow = ConfigWorkflow(config_file=[str(BUNDLE_ROOT / f) for f in files], workflow_type=workflow_type,
                              run_id=run_id, bundle_root=str(BUNDLE_ROOT), **overrides)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
