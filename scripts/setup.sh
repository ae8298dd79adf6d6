#!/usr/bin/env bash
# Installs what sinkhorn_ext needs and builds it in place against the installed torch.
# torch is pinned: an unpinned request would pull a newer torch with several GB of CUDA
# packages. Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

"$PYTHON" -m pip install --quiet "torch==2.13.0"
"$PYTHON" -m pip install --quiet numpy ninja setuptools wheel
if [ "${1:-}" = "--test" ]; then
  # scikit-learn, matplotlib and tqdm: the example scripts, which the tests run.
  "$PYTHON" -m pip install --quiet pytest pytest-benchmark scipy pot expecttest \
    scikit-learn matplotlib tqdm
  command -v cmake >/dev/null || "$PYTHON" -m pip install --quiet cmake
fi
# --no-build-isolation: compile against the torch installed above, not a fresh download.
"$PYTHON" -m pip install --quiet --no-build-isolation --no-deps -e .
