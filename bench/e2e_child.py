"""One end-to-end inference run in its own process, for ``bench/run.py``: prints one JSON line with its peak RSS.

``python bench/e2e_child.py '<json>'`` where the JSON holds ``config_file`` (list) and ``overrides`` (config ids).
The workflow is the bundle's own ``ConfigWorkflow`` ("inferring"); the line gives the wall time of the whole
process (imports included), of ``initialize`` and of ``run``, and this process's ``VmHWM`` (its true peak RSS;
``ru_maxrss`` of a child would include what its parent held at fork time).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(spec: dict) -> dict:
    if spec.get("lean"):
        return lean(spec)
    from monai.bundle import ConfigWorkflow

    from bench.common import peak_rss_mb

    imported = time.perf_counter()
    workflow = ConfigWorkflow(config_file=[str(REPO / c) for c in spec["config_file"]], workflow_type="infer",
                              run_id="inferring", bundle_root=str(REPO), **spec["overrides"])
    workflow.initialize()
    initialized = time.perf_counter()
    workflow.run()
    finished = time.perf_counter()
    workflow.finalize()
    return {"import_s": imported - START, "initialize_s": initialized - imported, "run_s": finished - initialized,
            "process_s": time.perf_counter() - START, "peak_rss_mb": peak_rss_mb()}


def lean(spec: dict) -> dict:
    """``kidney-seg --lean``'s run (no torch or MONAI) with the configs as files; its export already made."""
    from bench.common import peak_rss_mb
    from scripts.cli.lean import run_lean

    imported = time.perf_counter()
    o = spec["overrides"]
    run_lean(o["input_path"], o["output_dir"], [REPO / c for c in spec["config_file"]], o["model_path"],
             preview=o.get("preview", True), resume=False, stop_on_error=True, progress=False, statistics=False,
             timings_path=o.get("timings_path", ""))
    finished = time.perf_counter()
    assert "torch" not in sys.modules and "monai" not in sys.modules, "the lean run imported torch or MONAI"
    return {"import_s": imported - START, "initialize_s": 0.0, "run_s": finished - imported,
            "process_s": time.perf_counter() - START, "peak_rss_mb": peak_rss_mb()}


if __name__ == "__main__":
    print("E2E_RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
