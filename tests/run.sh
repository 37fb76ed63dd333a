#!/usr/bin/env bash
# Run the test suite in the project virtual environment (created on first use). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_venv.sh requirements-dev.txt
exec python -m pytest tests "$@"
