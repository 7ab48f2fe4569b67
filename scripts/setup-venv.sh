#!/usr/bin/env bash
# Create the virtual environment hvae runs in (default .venv) and install hvae into it.
#
# PyTorch: a torch the user already has is kept (the venv sees the system site-packages when the
# system Python imports torch). Otherwise torch==2.13.0 is installed before anything else, so that
# no dependency resolution pulls a multi-GB CUDA build on a machine without a GPU. Set
# HVAE_TORCH_SPEC to the pip arguments of the build you want (e.g. a CPU wheel index) to choose.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "hvae: using the torch already installed for $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "hvae: installing PyTorch (${HVAE_TORCH_SPEC:-torch==2.13.0})"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --disable-pip-version-check ${HVAE_TORCH_SPEC:-torch==2.13.0}
fi
# the pinned versions CI tests (requirements/constraints.txt) are for Python >= 3.11; on 3.10 pip resolves
# the ranges of pyproject.toml instead
if "$PY" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
  "$PY" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[dev]"
else
  "$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
fi
touch "$VENV/.hvae-installed"
