#!/usr/bin/env bash
# Runs a cargo build command with clippy-driver compiling the workspace's own crates and clippy's warnings as
# errors, as `cargo clippy -- -D warnings` lints them: one build serves the lints and the binaries. CLIPPY_ARGS
# carries clippy's arguments, separated as cargo-clippy separates them. The wrapper is part of cargo's
# fingerprint, so later commands on the same build go through this too, or they compile it again.
# Usage: tools/with-clippy.sh cargo test --release --no-run ...
set -euo pipefail
driver=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver) || {
  echo "with-clippy: clippy-driver not found: rustup component add clippy" >&2
  exit 1
}
RUSTC_WORKSPACE_WRAPPER=$driver CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" exec "$@"
