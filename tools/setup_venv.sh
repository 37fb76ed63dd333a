#!/usr/bin/env bash
# Create (or reuse) the project virtual environment .venv with the pinned requirements.
# Usage: source tools/setup_venv.sh [requirements file]   (defaults to requirements-dev.txt)
# Reinstalls only when the requirements files changed (stamp file .venv/.requirements.sha256).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_req="${1:-requirements-dev.txt}"
_python="${PYTHON:-python3.11}"
command -v "$_python" >/dev/null 2>&1 || _python=python3
"$_python" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' \
  || { echo "error: Python >= 3.10 is required (3.11 recommended), found $($_python --version)" >&2; exit 1; }
if [ ! -x "$_root/.venv/bin/python" ]; then
  echo "[setup] creating $_root/.venv with $($_python --version)"
  "$_python" -m venv "$_root/.venv"
fi
_stamp="$_root/.venv/.requirements.sha256"
_hash="$(cat "$_root/requirements.txt" "$_root/$_req" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_hash" ]; then
  echo "[setup] installing $_req into .venv (torch CPU wheel; a few minutes the first time)"
  "$_root/.venv/bin/python" -m pip install --quiet --upgrade pip
  "$_root/.venv/bin/python" -m pip install --quiet -r "$_root/$_req"
  echo "$_hash" > "$_stamp"
fi
export PATH="$_root/.venv/bin:$PATH"
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
