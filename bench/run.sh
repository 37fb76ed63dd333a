#!/usr/bin/env bash
# CPU fast-path benchmark (issue 7): builds the separate benchmark environment .venv-bench (the bundle's pinned
# requirements + nnU-Net's dynamic-network-architectures, whose declared timm/torchvision dependencies are skipped so
# torch stays 2.13.0), then runs bench/run.py. About 13 min on 2 cores (plus building .venv-bench once); `bash bench/run.sh --quick` is a 2-min smoke run.
# Results: docs/performance.md and bench/results/performance_<date>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
_python="${PYTHON:-python3.11}"
command -v "$_python" >/dev/null 2>&1 || _python=python3
_venv=.venv-bench
_hash="$(cat requirements.txt bench/requirements-bench.txt | sha256sum | cut -d' ' -f1)-dna0.4.4"
if [ ! -x "$_venv/bin/python" ]; then
  echo "[bench] creating $_venv with $($_python --version)"
  "$_python" -m venv "$_venv"
fi
if [ "$(cat "$_venv/.stamp" 2>/dev/null)" != "$_hash" ]; then
  echo "[bench] installing the bundle requirements and dynamic-network-architectures into $_venv"
  "$_venv/bin/python" -m pip install --quiet --upgrade pip
  "$_venv/bin/python" -m pip install --quiet -r bench/requirements-bench.txt
  "$_venv/bin/python" -m pip install --quiet --no-deps dynamic-network-architectures==0.4.4
  echo "$_hash" > "$_venv/.stamp"
fi
"$_venv/bin/python" - <<'PY'
import importlib.metadata as md
import sys
torch = md.version("torch")
assert torch.split("+")[0] == "2.13.0", f"the benchmark environment must keep torch 2.13.0, found {torch}"
for unwanted in ("torchvision", "timm"):
    try:
        md.version(unwanted)
        sys.exit(f"{unwanted} is installed in .venv-bench: it would bring another torch")
    except md.PackageNotFoundError:
        pass
print(f"[bench] torch {torch}, dynamic-network-architectures {md.version('dynamic-network-architectures')}")
PY
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# one run per CPU class (issue 17): the native class, then, on a CPU with AVX-512 BF16/AMX, the AVX2 class emulated
"$_venv/bin/python" bench/run.py "$@"
if grep -q -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
  echo "[bench] bf16 CPU: measuring the AVX2 class too (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)"
  "$_venv/bin/python" bench/run.py --emulate-avx2 "$@"
fi
