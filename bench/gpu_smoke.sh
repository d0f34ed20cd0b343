#!/usr/bin/env bash
# The GPU smoke test (bench/gpu_smoke.py says what it checks). On one H100 in under 8 minutes:
#   bash bench/gpu_smoke.sh [--out DIR]
# On the CPU with gloo and tiny sizes, as the test suite runs it:
#   bash bench/gpu_smoke.sh --dry-run [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
exec "$PYTHON" bench/gpu_smoke.py "$@"
