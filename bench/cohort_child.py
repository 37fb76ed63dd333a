"""``kidney-seg`` for ``bench/cohort_bench.py``: runs the console command's ``main`` and, at exit, saves this
process's peak RSS (``VmHWM``) as ``$COHORT_BENCH_RSS_DIR/<pid>.json`` (one file per torchrun rank)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb  # noqa: E402

from scripts.cli.main import main  # noqa: E402

if __name__ == "__main__":
    code = main()
    folder = os.environ.get("COHORT_BENCH_RSS_DIR")
    if folder:
        Path(folder, f"{os.getpid()}.json").write_text(json.dumps({"peak_rss_mb": peak_rss_mb(),
                                                                   "rank": os.environ.get("RANK", "0")}))
    sys.exit(code)
