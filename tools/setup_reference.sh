#!/usr/bin/env bash
# Makes the Python reference environment (timm + torch from PyPI, about 3 GB) outside git, in .venv-ref/.
# Used by tools/export_timm.py (fixtures, full-size parity checks) and the benchmark scripts
# (tools/bench_vs_torch.sh also needs onnx + onnxruntime for its ONNX Runtime column).
#
# Usage: tools/setup_reference.sh [--no-onnx] [EXTRA PIP ARGS...]
#   By default onnx and onnxruntime are installed too (about 110 MB on top of torch's ~3 GB);
#   --no-onnx (or REF_ONNX=0) leaves them out. VENV_REF=DIR puts the venv elsewhere.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV_REF:-$root/.venv-ref}
with_onnx=${REF_ONNX:-1}
if [ "${1:-}" = "--no-onnx" ]; then
  with_onnx=0; shift
fi
pkgs=(torch timm safetensors pillow numpy)
if [ "$with_onnx" != 0 ]; then
  pkgs+=(onnx onnxruntime)
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "${pkgs[@]}" "$@"
"$venv/bin/python" -c 'import torch, timm; print("reference venv ready:", "torch", torch.__version__, "timm", timm.__version__)'
if [ "$with_onnx" != 0 ]; then
  "$venv/bin/python" -c 'import onnx, onnxruntime; print("  with onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)'
fi
