#!/usr/bin/env bash
# Makes the Python reference environment (timm + torch from PyPI, about 3 GB) outside git, in .venv-ref/.
# Used by tools/export_timm.py (fixtures, full-size parity checks) and the benchmark scripts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV_REF:-$root/.venv-ref}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet torch timm safetensors pillow numpy "$@"
"$venv/bin/python" -c 'import torch, timm; print("reference venv ready:", "torch", torch.__version__, "timm", timm.__version__)'
