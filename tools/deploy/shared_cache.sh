#!/usr/bin/env bash
# shared_cache.sh BIN [K...]: runs K concurrent `wstream classify` processes (default 1 2 4) over the same
# three Large models inside ONE memory cgroup (tools/membox), the weight files dropped from the page cache
# first, and prints per K the cgroup's peak charge (RSS + page cache) and each process's --memory-report.
# MODELS (a folder holding the three model folders; default weights/, or `wstream synth` them anywhere) and
# IMAGES override the models and inputs. Needs root (a memory cgroup) and GNU dd.
set -euo pipefail
BIN=$1; shift
KS=${*:-1 2 4}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
MODELS=${MODELS:-$HERE/weights}
IMAGES=${IMAGES:-"$HERE/tests/data/cat.jpg $HERE/tests/data/coffee.png"}
ARCHS="vit_large_patch16_224 convnext_large swin_large_patch4_window7_224"
drop() {
  # Only these files leave the page cache (GNU dd: nocache with count=0 drops the whole file), so the
  # cgroup that reads them next is charged for them, and nobody else's cache is touched.
  for a in $ARCHS; do
    for f in "$MODELS/$a"/*.safetensors; do dd if="$f" iflag=nocache count=0 status=none; done
  done
}
model_args=""
for a in $ARCHS; do
  [ -d "$MODELS/$a" ] || { echo "shared_cache.sh: no model folder $MODELS/$a (set MODELS)" >&2; exit 2; }
  model_args="$model_args --model $MODELS/$a"
done
for k in $KS; do
  drop
  out=$(mktemp -d)
  # shellcheck disable=SC2086
  bash "$HERE/tools/membox" 16G bash -c '
    for i in $(seq 1 '"$k"'); do
      "'"$BIN"'" classify --threads 1 --memory-report '"$model_args"' '"$IMAGES"' >/dev/null 2>'"$out"'/p$i.err &
    done
    wait' 2>"$out/membox"
  echo "== k=$k: $(cat "$out/membox")"
  for i in $(seq 1 "$k"); do echo "  process $i: $(grep -h '^memory:' "$out/p$i.err")"; done
  rm -rf "$out"
done
