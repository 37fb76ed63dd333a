"""What the bench scripts share: the machine a run was on, child processes timed, interleaved latency.

Bundle workflows are launched with :func:`scripts.reports.workflow.bundle_command`, so a benchmark runs the same
command line the README documents.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.reports.workflow import bundle_command  # noqa: E402

SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone"]


def _cpuinfo() -> tuple[str, list[str]]:
    """CPU model name and its flags from ``/proc/cpuinfo`` (platform's processor name and no flags elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    field = {}
    for line in lines:
        key, _, value = line.partition(":")
        field.setdefault(key.strip(), value.strip())
    return field.get("model name") or platform.processor() or platform.machine(), field.get("flags", "").split()


def git_commit() -> str:
    """The bundle's commit, 12 hex digits ("" outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip()


def machine() -> dict:
    """CPU model, cores, SIMD flags, OS, torch/MONAI/Python versions, torch threads and the commit of this run."""
    import monai
    import torch

    from scripts.inference.fast_path import cpu_supports_bf16

    cpu, flags = _cpuinfo()
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": [f for f in SIMD_FLAGS if f in flags],
            "platform": platform.platform(), "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(), "commit": git_commit(), "bf16_native": cpu_supports_bf16()}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded (other jobs on a shared VM distort timings)."""
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``, Linux). Unlike ``ru_maxrss`` of a child, it holds nothing the parent
    had at fork time."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Child:
    seconds: float
    output: str


def run_child(args: list[str], log: Path | None = None, env: dict | None = None) -> Child:
    """Run ``args`` from the bundle root: wall seconds (process start included) and stdout + stderr, also written
    to ``log`` while it runs. Raises ``RuntimeError`` with the output's tail when it fails."""
    start = time.perf_counter()
    if log is None:
        done = subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = done.stdout
    else:
        with open(log, "w") as f:
            done = subprocess.run(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        output = Path(log).read_text()
    seconds = time.perf_counter() - start
    if done.returncode:
        where = f"; log {log}" if log else ""
        raise RuntimeError(f"{' '.join(args[1:6])} ... failed (exit {done.returncode}){where}:\n"
                           + "\n".join(output.splitlines()[-30:]))
    return Child(seconds, output)


def run_workflow(run_id: str, config_files: list[str] | str, log: Path | None = None, torchrun: bool = False,
                 echo: Callable[[str], None] = print, **overrides) -> Child:
    """``python -m monai.bundle run <run_id>`` (under a one-process ``torchrun`` if asked), shown through
    ``echo`` and timed; see :func:`run_child`."""
    args = bundle_command(run_id, config_files, logging_file=None, **overrides)
    if torchrun:
        args = args[:1] + TORCHRUN + args[1:]
    echo(f"[{time.strftime('%H:%M:%S')}] $ {' '.join(args[1:])}")
    return run_child(args, log)


def time_per_slice(models: dict, size: int, batch: int, repeats: int, iters: int) -> dict:
    """Median seconds per slice of each model on random ``(batch, 1, size, size)`` input, measured in interleaved
    rounds after one warm-up call (every model sees the same machine load)."""
    import torch

    x = torch.rand(batch, 1, size, size)
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                for _ in range(iters):
                    model(x)
                samples[name].append((time.perf_counter() - start) / (iters * batch))
    return {name: statistics.median(values) for name, values in samples.items()}
