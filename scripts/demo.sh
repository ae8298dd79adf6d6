#!/usr/bin/env bash
# The main demo on a fresh machine: set-up, then examples/quickstart.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" examples/quickstart.py "$@"
