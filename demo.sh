#!/usr/bin/env bash
# Demo on SYNTHETIC phantoms: make data, train WP-UNet briefly on the CPU (or GPU), evaluate on held-out
# phantoms, prune 50 % of the kernels and fine-tune, evaluate the pruned weights, run inference, and write
# everything under demo_output/ (weights: models/model.pt, models/model_pruned.pt).
# Extra arguments go to scripts/demo.py, e.g. `bash demo.sh --epochs 5`.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_venv.sh requirements.txt
exec python -m scripts.demo "$@"
