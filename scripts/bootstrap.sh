#!/usr/bin/env bash
# Create .venv with scrollseg installed. A torch already importable by $PYTHON is reused;
# otherwise torch $TORCH_VERSION is installed first (set TORCH_INDEX_URL, e.g.
# https://download.pytorch.org/whl/cpu, for the small CPU-only build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${EXTRAS:-test}

if [ ! -x .venv/bin/python ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m venv --system-site-packages .venv
  else
    "$PYTHON" -m venv .venv
  fi
fi
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install --quiet "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
stamp=".venv/.scrollseg-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $PIP install --quiet -e ".[${EXTRAS}]"
  touch "$stamp"
fi
