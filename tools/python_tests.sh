#!/usr/bin/env bash
# The Python package's tests: makes a throwaway venv, installs maturin, numpy, pytest and Pillow from PyPI,
# builds the wheel (`maturin build --release`, the `python` feature), installs it and runs tests/python with
# the CLI built from this tree and the three synthetic Large models (made once into target/tmp/ensemble, where
# tests/memory.rs makes them too). PYTHON picks the interpreter (default python3, 3.9 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/wstream-py.XXXXXX")
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -m venv "$work/venv"
py=$work/venv/bin/python
"$py" -m pip install --quiet --disable-pip-version-check "maturin>=1.9,<2" "numpy>=1.21" pytest Pillow
# The wheel's build lints src/python.rs (the `python` feature) too (tools/with-clippy.sh).
tools/with-clippy.sh "$work/venv/bin/maturin" build --release --quiet --interpreter "$py" --out "$work/wheels"
"$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps "$work"/wheels/wstream-*.whl
# The CLI as `cargo test --release` builds it (CI's earlier step): after that, a plain `cargo build` would
# compile the crate and several dependencies again, since the tests' dev-dependencies add features to them.
cargo test --release --quiet --no-run --test suite
large=$root/target/tmp/ensemble
for arch in vit_large_patch16_224 convnext_large swin_large_patch4_window7_224; do
  if [ ! -f "$large/$arch/config.json" ]; then
    rm -rf "${large:?}/$arch"
    target/release/wstream synth --arch "$arch" --out "$large/$arch"
  fi
done
# From outside the source tree, so `import wstream` is the installed wheel, not src/python.
cd "$work"
WSTREAM_BIN=$root/target/release/wstream WSTREAM_LARGE_DIR=$large \
  "$py" -m pytest -q -p no:cacheprovider "$root/tests/python"
echo "python_tests.sh: $(($(date +%s) - start)) s" >&2
