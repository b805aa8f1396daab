#!/usr/bin/env bash
# bench_vs_torch.sh: wstream vs timm (PyTorch) vs ONNX Runtime on timm's ViT-Large/16, ConvNeXt-Large and
# Swin-Large (issue #8), with the same weights, inputs and thread count, the engines taking turns in one
# run. Writes the results table between the bench_vs_torch markers of BENCHMARKS.md (raw figures in
# target/bench_vs_torch/). The Python half is tools/bench_vs_torch.py (the package tools/benchvt/).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
usage() {
  cat <<EOF
usage: tools/bench_vs_torch.sh [--repeats N] [--quick] [--no-build] [--wstream BIN] [--threads N]
                               [--batch N] [--models LIST] [--fullsize DIR] [--onnx-dir DIR]
                               [--out FILE|-] [--only PHASES] [--peers LIST] [--variant SPEC]...

Measures, for wstream, timm and ONNX Runtime (medians; the engines take turns, order rotated each round):
  1. per-image latency, warm, batch 1: each Large model alone on its own preprocessed input
     (reference/cat.input.npy) and the three-model ensemble from tests/data/cat.jpg (decode, each model's
     preprocessing, mean of softmax). wstream: elapsed_ms of a 'classify --json' process given the input
     twice, the first discarded; timm/ORT: a timed loop in a long-lived process loaded once and warmed up.
  2. process start to first ensemble answer, warm page cache: wall time of a whole process measured from
     outside (for Python: interpreter start-up, imports, create + load / create sessions, one image).
  3. ensemble throughput at batch N (default 8), images/s: timm/ORT a warm-up batch then a timed one;
     wstream (and its packed copies, with the peer rows) a 'classify --batch N' process of 2N inputs,
     the second batch's elapsed_ms.
  4. peak RSS (ru_maxrss = VmHWM) of the processes of 2.
  5. the smallest memory cgroup limit (tools/membox, RSS + page cache charged) under which each engine's
     process of 2 completes, bisected geometrically between 32 MiB and 8 GiB to ~5%, the weight files
     dropped from the page cache (posix_fadvise DONTNEED) before each try; a try must finish within
     max(60 s, 4x that engine's cold start-to-answer time). Skipped with --quick.
  6. process start to first answer cold (weight files dropped first), and 'cat' of the three
     safetensors files cold as the storage bound.
  and checks wstream's and ORT's logits against timm's in the same run.
  Peer rows (issue #19), in the same rounds for 1 (and 2 and 6 for the wstream variants): wstream on
  converted copies of the weights, ONNX Runtime's own int8, candle-transformers' ConvNeXt-L; each row's
  logits checked against timm f32 (cosine, max |diff|, top-1 with margins); ratios vs ORT f32 and int8.

Options:
  --repeats N     rounds for 1 and 2 (default 5); 3 uses max(2, ceil(N/2)), 6 uses min(N, 3)
  --quick         skip the cgroup bisection (5), the slow part
  --no-build      use target/release/wstream as it is (default: cargo build --release first)
  --wstream BIN   use this wstream binary as it is (implies --no-build; its checkout names the version)
  --threads N     compute threads for every engine (default 2)
  --batch N       batch size for the throughput figure (default 8)
  --models LIST   comma-separated subset of the three models (default all; the "ensemble" is then
                  of those). The quickest smoke run: --models convnext_large --repeats 1 --quick --out -
  --fullsize DIR  the timm exports (default \$WSTREAM_FULLSIZE or /work/fullsize): DIR/<model>/
                  {model.safetensors, config.json, reference/cat.input.npy, reference/cat.logits.npy}
  --onnx-dir DIR  where the ONNX exports live (default \$WSTREAM_BENCH_ONNX_DIR or DIR/onnx); made once
  --out FILE      the markdown file whose marked section is replaced (default BENCHMARKS.md; - for none)
  --only PHASES   comma-separated subset of warm,start,cold,membox (for debugging)
  --damon pause|keep  a running DAMON pageout scheme (proactive reclaim, which pages out page cache idle
                  for a while: wstream's weights between their turns, never ORT's or timm's anonymous
                  copies without swap) is paused for the run and restored after (default), or kept
  --peers LIST    peer rows (default bf16,int8,int8-wo,packed,ort-int8,candle; "none" for the old report):
                    bf16, int8, packed  wstream on 'convert --dtype bf16' / '--dtype int8' /
                                        '--layout packed' copies, made once under target/bench_vs_torch/weights/
                    int8-wo             the int8 copies run with 'classify --int8-activations off'
                    ort-int8            onnxruntime.quantization.quantize_dynamic (MatMul, per-channel s8
                                        weights) of the ONNX exports, made once under target/bench_vs_torch/ort-int8/
                    candle              candle-transformers' ConvNeXt-L (tools/candle_convnext.rs), ConvNeXt-L
                                        only; built with the bench profile, which optimizes candle (always,
                                        --no-build or not: a test build leaves it unoptimized)
                  a variant whose 'convert' or 'classify' refuses its flags is skipped with a note
  --variant SPEC  a wstream variant NAME:CONVERT ARGS:CLASSIFY ARGS, e.g.
                  'int8-wo:--dtype int8:--int8-activations off' (replaces that name's default); name it in --peers

Needs the reference venv (tools/setup_reference.sh, with onnx + onnxruntime; VENV_REF=DIR to use another),
the Rust toolchain, and root for the cgroup bisection. A full run takes about 15-20 minutes on 2 cores.
EOF
}

repeats=5; quick=0; build=1; threads=2; batch=8; only=""; wstream=""; damon=pause
peers=bf16,int8,int8-wo,packed,ort-int8,candle; variants=()
models=(vit_large_patch16_224 convnext_large swin_large_patch4_window7_224)
fullsize=${WSTREAM_FULLSIZE:-/work/fullsize}
onnx_dir=${WSTREAM_BENCH_ONNX_DIR:-}
out=$root/BENCHMARKS.md
cmdline="tools/bench_vs_torch.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) repeats=${2:?--repeats needs a number}; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-build) build=0; shift ;;
    --wstream) wstream=${2:?--wstream needs a binary}; build=0; shift 2 ;;
    --models) IFS=, read -r -a models <<< "${2:?--models needs a list}"; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    --batch) batch=${2:?--batch needs a number}; shift 2 ;;
    --fullsize) fullsize=${2:?--fullsize needs a folder}; shift 2 ;;
    --onnx-dir) onnx_dir=${2:?--onnx-dir needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a file or -}; shift 2 ;;
    --only) only=${2:?--only needs phases}; shift 2 ;;
    --peers) peers=${2:?--peers needs a list or none}; shift 2 ;;
    --damon) damon=${2:?--damon needs pause or keep}; shift 2 ;;
    --variant) variants+=(--variant "${2:?--variant needs NAME:CONVERT ARGS:CLASSIFY ARGS}"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench_vs_torch: unknown argument \`$1\` (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$repeats" "$threads" "$batch"; do
  if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench_vs_torch: \`$n\` is not a positive whole number" >&2; exit 2
  fi
done
onnx_dir=${onnx_dir:-$fullsize/onnx}
[ -n "$wstream" ] && wstream=$(realpath "$wstream")  # the script runs from $root
[ "$out" = "-" ] && out=""
[ "$peers" = "none" ] && peers=""

die() { echo "bench_vs_torch: $*" >&2; exit 1; }

# ---- environment checks
venv=${VENV_REF:-$root/.venv-ref}
py=$venv/bin/python
[ -x "$py" ] || die "no reference venv at $venv; make it with tools/setup_reference.sh (torch, timm, onnx, onnxruntime)"
if ! missing=$("$py" - <<'EOF'
import importlib.util, sys
miss = [m for m in ('torch', 'timm', 'safetensors', 'numpy', 'PIL', 'onnx', 'onnxruntime')
        if importlib.util.find_spec(m) is None]
print(' '.join(miss))
sys.exit(1 if miss else 0)
EOF
); then
  die "the reference venv $venv lacks: $missing; run tools/setup_reference.sh (it installs onnx + onnxruntime by default)"
fi
[ -d "$fullsize" ] || die "no folder $fullsize with the full-size timm exports; make each with
  $py tools/export_timm.py MODEL $fullsize/MODEL --image tests/data/cat.jpg
for MODEL in ${models[*]} (or pass --fullsize DIR / set WSTREAM_FULLSIZE)"
for m in "${models[@]}"; do
  for f in model.safetensors config.json reference/cat.input.npy reference/cat.logits.npy; do
    [ -f "$fullsize/$m/$f" ] || die "missing $fullsize/$m/$f; make it with
  $py tools/export_timm.py $m $fullsize/$m --image tests/data/cat.jpg"
  done
done
image=$root/tests/data/cat.jpg
[ -f "$image" ] || die "missing $image"
command -v timeout >/dev/null || die "needs timeout (coreutils)"
command -v fincore >/dev/null || echo "bench_vs_torch: note: no fincore (util-linux); cold runs will not check residency" >&2

# ---- wstream
cd "$root"
if [ $build = 1 ]; then
  echo "bench_vs_torch: cargo build --release" >&2
  cargo build --release --quiet || die "cargo build --release failed"
fi
wstream=${wstream:-$root/target/release/wstream}
candle=$root/target/release/examples/candle_convnext
# Built even with --no-build: `cargo test --release` leaves an example of the same path with candle compiled
# unoptimized (Cargo.toml's release profile); the bench profile optimizes it. A no-op when that one is there.
if [[ ",$peers," == *,candle,* ]]; then
  echo "bench_vs_torch: cargo build --profile bench --example candle_convnext" >&2
  cargo build --profile bench --quiet --example candle_convnext ||
    die "cargo build --profile bench --example candle_convnext failed"
fi
[ -x "$wstream" ] || die "no $wstream; run cargo build --release (or drop --no-build)"
checkout=$(dirname "$wstream")
version=$(git -C "$checkout" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty_files=$(git -C "$checkout" diff --name-only HEAD 2>/dev/null | paste -sd, - || true)
[ -n "$dirty_files" ] && version="$version-dirty"
rustc_v=$(rustc --version 2>/dev/null || echo "rustc ?")
storage=$(df --output=source,fstype "$fullsize" 2>/dev/null | awk 'NR==2 {print $1 " (" $2 ")"}')
echo "bench_vs_torch: wstream $version ($wstream); models ${models[*]}; fullsize $fullsize; onnx $onnx_dir; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}" >&2

# ---- ONNX exports (once)
"$py" tools/bench_vs_torch.py export --fullsize "$fullsize" --onnx-dir "$onnx_dir" --threads "$threads" \
  --models "$(IFS=,; echo "${models[*]}")"

# ---- measurements + markdown
args=(bench --fullsize "$fullsize" --onnx-dir "$onnx_dir" --threads "$threads" --wstream "$wstream"
      --models "$(IFS=,; echo "${models[*]}")"
      --image "$image" --repeats "$repeats" --batch "$batch" --command "$cmdline"
      --wstream-version "$version" --rustc "$rustc_v" --dirty-files "$dirty_files" --storage "${storage:-?}"
      --peers "$peers" --candle "$candle" --damon "$damon" "${variants[@]}")
[ $quick = 1 ] && args+=(--quick)
[ -n "$only" ] && args+=(--only "$only")
[ -n "$out" ] && args+=(--out "$out")
exec "$py" tools/bench_vs_torch.py "${args[@]}"
