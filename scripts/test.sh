#!/usr/bin/env bash
# The full test suite on a fresh machine: set-up, then pytest (which also builds and runs the
# C++ kernel tests under ctest). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec "${PYTHON:-python3}" -m pytest python_tests "$@"
