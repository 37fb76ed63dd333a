"""Build (or reuse) the MONAI Label 0.8.5 server environment that serves this bundle on a CPU-only machine.

    python tools/monailabel_env.py            # prints the server's python, building it first if needed

The environment is a virtual environment OUTSIDE the repository, keyed by the hash of what defines it
(``tools/monailabel-requirements.txt``, ``requirements.txt`` and this file):
``$KIDNEY_BUNDLE_CACHE`` or ``~/.cache/kidney-bundle``, folder ``monailabel-<hash>``. A build that did not finish
leaves no ``.complete`` marker and is redone from scratch; a lock file keeps two builds apart.

One repair is applied after ``pip install`` (the reason it is a separate step, see
``../shared/reference/monai_label.md``, "Versions and incompatibilities"): PyPI has no CPU build of torchvision,
and the only torchvision for torch 2.13.0 (0.28.0) is linked against CUDA torch. With the CPU torch its C++ ops
do not load (torchvision handles that), but ``torchvision/_meta_registrations.py`` registers two fake kernels
(``nms``, ``qnms``) without checking, so ``import torchvision`` raises
``RuntimeError: operator torchvision::nms does not exist``, and MONAI Label imports ``torchvision.utils``
unconditionally. The repair guards those two registrations the way torchvision already guards the others
(``torchvision.extension._has_ops()``). Nothing MONAI Label uses (``make_grid``, ``save_image``) needs the C++
ops. Installing torch's CUDA build instead would also work, but pulls about 3 GB of nvidia wheels.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
REQUIREMENTS = TOOLS / "monailabel-requirements.txt"
_DEFINING_FILES = (REQUIREMENTS, REPO / "requirements.txt", Path(__file__).resolve())

# torchvision 0.28.0's _meta_registrations.py as released (sha256); the repair refuses any other file.
_TORCHVISION_META_SHA256 = "7c55fdb854bb38899949edfa4e68c7bd69190ea1fed4ae51bf593277661fcbc3"
_UNGUARDED = '@torch.library.register_fake("torchvision::{op}")'
_GUARDED = '@_register_fake_if_ops("torchvision::{op}")'
_GUARD_HELPER = '''

def _register_fake_if_ops(op_name):
    # kidney-bundle tools/monailabel_env.py: register only when the C++ ops loaded (CPU torch + CUDA torchvision)
    if torchvision.extension._has_ops():
        return torch.library.register_fake(op_name)
    return lambda fn: fn

'''
_ANCHOR = "import torchvision.extension  # noqa: F401\n"


# Bundle requirements the server does not get: the DICOM SEG writer (highdicom) needs pydicom 3, while MONAI Label
# 0.8.5's pydicom-seg needs pydicom 2. MONAI Label writes its own outputs, so the server never calls that writer
# (scripts/outputs/formats.py imports these packages only when a DICOM SEG is written).
SERVER_EXCLUDED = ("pydicom", "highdicom", "pyjpegls")


def write_server_requirements(target: Path) -> Path:
    """Copy ``requirements.txt`` to ``target`` without the ``SERVER_EXCLUDED`` packages (kept as comments)."""
    lines = []
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        name = re.split(r"[=<>!~\[;\s]", line.strip(), maxsplit=1)[0].lower()
        lines.append(f"# not for the server: {line}" if name in SERVER_EXCLUDED else line)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


class EnvBuildError(RuntimeError):
    """The server environment could not be built (e.g. no network); the message names the step and the log."""


def env_hash() -> str:
    digest = hashlib.sha256()
    for path in _DEFINING_FILES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def env_dir() -> Path:
    cache = Path(os.environ.get("KIDNEY_BUNDLE_CACHE", Path.home() / ".cache" / "kidney-bundle"))
    return cache / f"monailabel-{env_hash()}"


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(args: list[str], log: Path, step: str) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(map(str, args))}\n")
        out.flush()
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        raise EnvBuildError(f"{step} failed (exit {done.returncode}); full log {log}; last lines:\n{tail}")


def repair_torchvision(python: Path) -> str:
    """Guard torchvision 0.28.0's two unguarded fake-kernel registrations; returns what was done."""
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    meta = Path(site) / "torchvision" / "_meta_registrations.py"
    text = meta.read_text(encoding="utf-8")
    if "_register_fake_if_ops" in text:
        return f"already repaired: {meta}"
    found = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if found != _TORCHVISION_META_SHA256:
        raise EnvBuildError(f"{meta}: not the torchvision 0.28.0 file this repair was written for "
                            f"(sha256 {found}); check tools/monailabel-requirements.txt")
    text = text.replace(_ANCHOR, _ANCHOR + _GUARD_HELPER, 1)
    for op in ("nms", "qnms"):
        text = text.replace(_UNGUARDED.format(op=op), _GUARDED.format(op=op))
    meta.write_text(text, encoding="utf-8")
    return f"repaired: {meta}"


def _check_env(python: Path) -> None:
    """The environment imports the server and kept the CPU torch."""
    probe = ("import torch, torchvision, monailabel, monai, pydicom_seg; "
             "assert '+cpu' in torch.__version__ or not torch.version.cuda, torch.__version__; "
             "print(torch.__version__, torchvision.__version__, monailabel.__version__, monai.__version__)")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        raise EnvBuildError(f"server environment {python.parent.parent} does not import: {done.stderr[-2000:]}")
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    cuda = [line for line in listing.stdout.splitlines() if line.lower().startswith(("nvidia-", "cuda-"))]
    if cuda:
        raise EnvBuildError(f"server environment pulled CUDA packages {cuda}; torch must stay the CPU build")


def ensure_env(log=print) -> Path:
    """Return the server environment's python, building the environment first when it is missing."""
    venv = env_dir()
    python = _python_of(venv)
    marker = venv / ".complete"
    if marker.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return python
        if venv.exists():
            shutil.rmtree(venv)
        venv.mkdir(parents=True)
        build_log = venv.parent / f"{venv.name}.build.log"
        build_log.write_text("", encoding="utf-8")
        start = time.monotonic()
        log(f"[monailabel-env] building {venv} (log {build_log}); minutes the first time")
        _run([sys.executable, "-m", "venv", str(venv)], build_log, "creating the virtual environment")
        bundle_requirements = write_server_requirements(venv / "bundle-requirements.txt")
        _run([str(python), "-m", "pip", "install", "--quiet", "-r", str(bundle_requirements), "-r",
              str(REQUIREMENTS)], build_log, f"pip install -r requirements.txt (filtered) -r {REQUIREMENTS.name}")
        log(f"[monailabel-env] {repair_torchvision(python)}")
        _check_env(python)
        marker.write_text(f"built in {time.monotonic() - start:.0f} s\n", encoding="utf-8")
        log(f"[monailabel-env] ready after {time.monotonic() - start:.0f} s")
    return python


if __name__ == "__main__":
    try:
        print(ensure_env(log=lambda msg: print(msg, file=sys.stderr)))
    except EnvBuildError as err:
        sys.exit(f"error: {err}")
