#!/usr/bin/env bash
# bench_serve.sh: load tests of `wstream serve` (issue #16) with oha, a real external HTTP load generator,
# against the real server on 127.0.0.1 only. Prints one Markdown row per run and the issue's checks; the
# raw figures (oha JSON, /metrics scrapes, server logs) stay in target/bench_serve/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
usage() {
  cat <<EOF
usage: tools/bench_serve.sh [--quick] [--only LIST] [--soak [SECONDS]] [--duration SECONDS] [--threads N]
                            [--no-build] [--wstream BIN] [--image FILE] [--out FILE] [MODEL_DIR...]

Scenarios (the models: MODEL_DIR..., else \$WSTREAM_BENCH_MODELS (space-separated), else the three Large
models under \$WSTREAM_WEIGHTS, else weights/, synthesised there like 'wstream demo' does when missing; f32
unless said):
  a  warm page cache, 8 clients, vs 'classify --batch 8' images/s of the same binary on the same image
  b  under 'tools/membox 512M' (weights dropped from the page cache first): 1 client, then 8 clients
  c  int8 copies ('wstream convert --dtype int8 --layout exec', made once in target/bench_serve/int8)
     under 'tools/membox --read-bps 80M:<their folder> 256M', an SD card's speed: 1 client, then 8 clients
  d  warm, 50 clients against '--queue 16': every answer 200 or 503, none hangs, RSS bounded
  e  (--soak only) scenario b's 8 clients for SECONDS (default 600): 0 failures, no OOM kill, peak charged
     memory within the limit
Each server runs '--threads N --max-batch 8' on 127.0.0.1:0. Each load run is bounded in requests (oha -n)
and in time (SIGINT after the run's duration: oha then reports what it has; -t bounds each request).

Options:
  --quick          short runs: a couple of batches each (2 x clients requests, 3 for 1 client, at most 240 s; d 15 s;
                   classify 1 batch): proves the script end to end, noisy figures
  --only LIST      comma-separated subset of a,b,c,d (default all four)
  --soak [SECS]    run only scenario e, for SECS seconds (default 600)
  --duration SECS  the time bound of every load run (default: 300 for a and b, 400 for c, 60 for d)
  --threads N      compute threads of the server and of classify (default 2)
  --no-build       use target/release/wstream as it is (default: cargo build --release first)
  --wstream BIN    use this wstream binary (implies --no-build)
  --serve-args STR extra flags for every server (split on spaces), e.g. "--evict cache" or "--memory 256M"
  --image FILE     the request body, a JPEG or PNG (default tests/data/cat.jpg)
  --out FILE       also write the table and checks to FILE (default target/bench_serve/results.md)

Needs: bash, python3 (standard library), coreutils, procps (pgrep); root and cgroup v1 memory + blkio for
b, c and e (tools/membox). oha is installed on first use with 'cargo install oha --locked' into
\${WSTREAM_TOOLS:-~/.cache/wstream-tools} (set OHA=BIN to use another). Exits 1 if a run fails or a check
on correctness fails (a failed request, a hang, an OOM kill); throughput ratios are reported, not enforced.
EOF
}

serve_extra=(); quick=0; build=1; threads=2; duration=""; soak=""; only="a,b,c,d"; wstream=""
image=$root/tests/data/cat.jpg
work=$root/target/bench_serve
out=$work/results.md
models=()
cmdline="tools/bench_serve.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --only) only=${2:?--only needs a list}; shift 2 ;;
    --soak)
      soak=600; shift
      if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then soak=$1; shift; fi ;;
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    --no-build) build=0; shift ;;
    --serve-args) read -r -a serve_extra <<< "${2?--serve-args needs flags}"; shift 2 ;;
    --wstream) wstream=${2:?--wstream needs a binary}; build=0; shift 2 ;;
    --image) image=${2:?--image needs a file}; shift 2 ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "bench_serve: unknown option \`$1\` (see --help)" >&2; exit 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
die() { echo "bench_serve: $*" >&2; exit 1; }
for n in "$threads" ${duration:+"$duration"} ${soak:+"$soak"}; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench_serve: \`$n\` is not a positive whole number" >&2; exit 2; }
done
IFS=, read -r -a scenarios <<< "$only"
for s in "${scenarios[@]}"; do
  case "$s" in a|b|c|d) ;; *) echo "bench_serve: unknown scenario \`$s\` in --only (a, b, c, d)" >&2; exit 2 ;; esac
done
[ -n "$soak" ] && scenarios=(e)
[ -f "$image" ] || die "no image $image"
case "$image" in
  *.jpg|*.jpeg|*.JPG|*.JPEG) ctype=image/jpeg ;;
  *.png|*.PNG) ctype=image/png ;;
  *) die "--image must be a .jpg/.jpeg or .png file: $image" ;;
esac
command -v python3 >/dev/null || die "needs python3 (standard library only) to read oha's and the server's reports"
stats() { python3 "$root/tools/bench_serve_stats.py" "$@"; }
mkdir -p "$work"

# -- the binary, the models, oha
if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release --quiet) || die "cargo build --release failed"
fi
wstream=${wstream:-$root/target/release/wstream}
[ -x "$wstream" ] || die "no $wstream; run cargo build --release (or drop --no-build)"
"$wstream" serve --help >/dev/null 2>&1 || die "$wstream has no 'serve' command"

if [ ${#models[@]} = 0 ] && [ -n "${WSTREAM_BENCH_MODELS:-}" ]; then
  read -r -a models <<< "$WSTREAM_BENCH_MODELS"
fi
if [ ${#models[@]} = 0 ]; then
  for arch in vit_large_patch16_224 convnext_large swin_large_patch4_window7_224; do
    m=${WSTREAM_WEIGHTS:-$root/weights}/$arch
    if [ ! -f "$m/model.safetensors" ]; then
      echo "bench_serve: $m missing; writing synthetic weights (see weights/README.md for the real ones)" >&2
      "$wstream" synth --arch "$arch" --out "$m" >&2 || die "synth $arch failed"
    fi
    models+=("$m")
  done
fi
for m in "${models[@]}"; do
  [ -f "$m/model.safetensors" ] || die "$m: not a model folder (no model.safetensors)"
done

tools=${WSTREAM_TOOLS:-$HOME/.cache/wstream-tools}
oha=${OHA:-}
if [ -z "$oha" ]; then
  oha=$(command -v oha || true)
  oha=${oha:-$tools/bin/oha}
  if [ ! -x "$oha" ]; then
    echo "bench_serve: installing oha (cargo install oha --locked --root $tools; a few minutes, once)" >&2
    cargo install oha --locked --root "$tools" >&2 || die "cargo install oha failed"
  fi
fi
[ -x "$oha" ] || die "no oha at $oha"

# -- page cache: files of a model folder, dropped or read back in
weight_files() { for m in "$@"; do ls "$m"/*.safetensors; done; }
# The same call as residency::drop_file_cache (which 'wstream profile --cold' uses): write back, then
# posix_fadvise(DONTNEED) on the whole file, here through GNU dd's iflag=nocache with count=0. A box must
# read every page itself: a page cached before it started is charged to another cgroup and never evicted
# by the box's limit.
drop_cache() {
  local f
  for f in $(weight_files "$@"); do
    sync "$f"
    dd if="$f" iflag=nocache count=0 status=none
  done
  if command -v fincore >/dev/null; then
    local left
    left=$(fincore --bytes --noheadings --output RES $(weight_files "$@") | awk '{s += $1} END {print s + 0}')
    [ "$left" -lt $((64 << 20)) ] ||
      echo "bench_serve: note: $((left >> 20)) MiB of the weights stayed cached (mapped by another process?)" >&2
  fi
}
# Dropped first, then read sequentially: the state a copy or a first run leaves (the kernel caches a
# sequential read in large folios, which wstream maps whole).
warm_cache() { drop_cache "$@"; cat $(weight_files "$@") > /dev/null; }

# -- one server at a time
server_pid=""; launcher=""; port=""; log=""
start_server() { # NAME BOXED(0|1) [membox args --] serve args...
  local name=$1 boxed=$2; shift 2
  local prefix=()
  if [ "$boxed" = 1 ]; then
    while [ "$1" != -- ]; do prefix+=("$1"); shift; done
    shift
    prefix=(bash "$root/tools/membox" "${prefix[@]}")
  fi
  log=$work/$name
  # Emptied here, not by the redirection below: that happens in the background job, possibly after the
  # first look for the 'listening on' line, which would then find the previous run's.
  : > "$log.out"
  local margs=()
  for m in "${serve_models[@]}"; do margs+=(--model "$m"); done
  "${prefix[@]}" "$wstream" serve "${margs[@]}" --addr 127.0.0.1:0 --threads "$threads" --max-batch 8 "${serve_extra[@]}" "$@" \
    > "$log.out" 2> "$log.err" < /dev/null &
  launcher=$!
  local line="" i
  for ((i = 0; i < 1200; i++)); do
    line=$(head -n 1 "$log.out" 2>/dev/null || true)
    [[ "$line" == "listening on http://127.0.0.1:"* ]] && break
    kill -0 "$launcher" 2>/dev/null || { cat "$log.err" >&2; die "$name: the server exited before listening"; }
    sleep 0.1
  done
  [[ "$line" == "listening on http://127.0.0.1:"* ]] || die "$name: no 'listening on' line within 120 s"
  port=${line##*:}; port=${port%%/*}
  server_pid=$launcher
  if [ "$boxed" = 1 ]; then
    # membox runs the server as its child (exec'd in a subshell).
    server_pid=$(pgrep -P "$launcher" | head -n 1) || die "$name: cannot find the server under membox"
  fi
}
# Stops the server (SIGTERM: it drains, then exits 0); sets vmhwm, charged, oom, exit_status.
stop_server() {
  vmhwm=$(awk '$1 == "VmHWM:" {print $2 * 1024}' "/proc/$server_pid/status" 2>/dev/null || echo 0)
  kill -TERM "$server_pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 600; i++)); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$launcher" 2>/dev/null; then
    echo "bench_serve: the server did not exit within 60 s of SIGTERM; killed" >&2
    kill -KILL "$server_pid" 2>/dev/null || true
    hard_fail=1
  fi
  exit_status=0
  wait "$launcher" || exit_status=$?
  [ "$exit_status" = 0 ] || { echo "bench_serve: the server exited with status $exit_status" >&2; hard_fail=1; }
  charged=$(sed -n 's/^membox: .* max usage \([0-9]*\) bytes.*/\1/p' "$log.err" | tail -n 1)
  oom=$(sed -n 's/^membox: .*oom-killed: \([a-z]*\).*/\1/p' "$log.err" | tail -n 1)
  server_pid=""; launcher=""
}
# On any exit with a server still up (a failed step, Ctrl-C): stop it, so it does not outlive the script.
cleanup() {
  [ -n "$launcher" ] || return 0
  local pid=${server_pid:-$(pgrep -P "$launcher" | head -n 1 || true)}
  kill -TERM "${pid:-$launcher}" 2>/dev/null || true
}
trap cleanup EXIT

# -- one load run: oha, bounded in requests and time, with /metrics scraped before and after
mib() { [ -n "${1:-}" ] && [ "$1" -gt 0 ] 2>/dev/null && echo "$(($1 >> 20)) MiB" || echo -; }
load() { # NAME CLIENTS SECONDS MAX_REQUESTS|qps:QPS
  local name=$1 clients=$2 secs=$3 bound=$4 url="http://127.0.0.1:$port" rc=0
  # Warm-up: one request per client, so the first batch's page-ins are not the whole measurement.
  "$oha" -n "$clients" -c "$clients" -m POST -T "$ctype" -D "$image" -t 600s --no-tui \
    --output-format json -o "$work/$name.warmup.json" "$url/v1/classify" > /dev/null ||
    die "$name: warm-up failed"
  stats get "$url/metrics" "$work/$name.metrics.before" || die "$name: GET /metrics failed"
  local common=(-c "$clients" -m POST -T "$ctype" -D "$image" -t 300s --no-tui --stats-success-breakdown
    --output-format json -o "$work/$name.json" "$url/v1/classify")
  if [[ "$bound" == qps:* ]]; then
    # At most QPS x SECONDS requests, and every request started is waited for (-w) up to its own time
    # limit (-t): a request that hangs shows as a timeout error, and the run as a whole cannot hang.
    timeout -s INT -k 30 "$((secs + 330))" "$oha" -z "${secs}s" -w -q "${bound#qps:}" "${common[@]}" \
      > /dev/null || rc=$?
    [ "$rc" = 0 ] || { echo "bench_serve: $name: oha did not finish within the run's bound (status $rc)" >&2; hard_fail=1; }
  else
    # At most MAX_REQUESTS, stopped with SIGINT at SECONDS (oha then reports the requests completed; those
    # in flight are not counted, at most one per client).
    timeout -s INT -k 30 "$secs" "$oha" -n "$bound" "${common[@]}" > /dev/null || true
  fi
  [ -s "$work/$name.json" ] || die "$name: oha wrote no report"
  stats get "$url/metrics" "$work/$name.metrics.after" || die "$name: GET /metrics failed after the run"
  IFS=$'\t' read -r requests ok n503 other errors seconds ok_per_s p50 p99 status < <(stats oha "$work/$name.json")
  batches=$(stats metrics "$work/$name.metrics.before" "$work/$name.metrics.after")
}

header="| run | clients | requests (status) | answered/s | p50 ms | p99 ms | failures | batches (sizes) | peak RSS | peak charged / limit |
| --- | --: | --- | --: | --: | --: | --: | --- | --: | --: |"
rows=(); checks=(); hard_fail=0; declare -A rate
row() { # NAME CLIENTS FAILURES LIMIT
  rows+=("| $1 | $2 | $requests ($status) | $ok_per_s | $p50 | $p99 | $3 | $batches | $(mib "$vmhwm") | $(mib "${charged:-}")${4:+ / $4} |")
  echo "${rows[-1]}"
  rate[$1]=$ok_per_s
}
check() { # HARD(0|1) OK(0|1) TEXT
  local verdict=met
  if [ "$2" != 1 ]; then verdict="NOT met"; [ "$1" = 1 ] && hard_fail=1; fi
  checks+=("- $3: $verdict")
  echo "${checks[-1]}"
}
ge() { python3 -c "import sys; a, b, f = map(float, sys.argv[1:]); sys.exit(0 if a >= f * b else 1)" "$1" "$2" "$3"; }
secs() { # DEFAULT QUICK
  if [ -n "$duration" ]; then echo "$duration"; elif [ "$quick" = 1 ]; then echo "$2"; else echo "$1"; fi
}
# The request bound: whole batches' worth (QUICK with --quick, else FULL), so that a run ends with its last
# answer: answered/s is then not cut short by a batch still running when a time bound stops oha. The time
# bound is only a backstop.
reqs() { if [ "$quick" = 1 ]; then echo "$1"; else echo "$2"; fi; }
boxed_ok() { [ "${oom:-}" = no ] && [ -n "${charged:-}" ] && [ "$charged" -le "$1" ]; }

echo "$header"
serve_models=("${models[@]}")

for s in "${scenarios[@]}"; do
  case "$s" in
  a)
    warm_cache "${models[@]}"
    batches_n=$([ "$quick" = 1 ] && echo 1 || echo 3)
    margs=(); for m in "${models[@]}"; do margs+=(--model "$m"); done
    imgs=(); for ((i = 0; i < 8 * batches_n; i++)); do imgs+=("$image"); done
    [ "$quick" = 1 ] || "$wstream" classify --json --threads "$threads" --batch 8 "${margs[@]}" "${imgs[@]:0:8}" > /dev/null
    "$wstream" classify --json --threads "$threads" --batch 8 "${margs[@]}" "${imgs[@]}" > "$work/a.classify.jsonl" ||
      die "a: classify --batch 8 failed"
    IFS=$'\t' read -r _ classify_rate < <(stats classify "$work/a.classify.jsonl")
    echo "| a: classify --batch 8 (elapsed_ms) | - | $((8 * batches_n)) images | $classify_rate | - | - | - | $batches_n x 8 | - | - |"
    rows+=("| a: classify --batch 8 (elapsed_ms) | - | $((8 * batches_n)) images | $classify_rate | - | - | - | $batches_n x 8 | - | - |")
    start_server a-warm-8 0
    load a-warm-8 8 "$(secs 300 240)" "$(reqs 16 48)"
    stop_server
    row "a: warm, f32" 8 $((requests - ok))
    check 1 "$([ "$ok" -gt 0 ] && [ $((requests - ok)) = 0 ] && echo 1)" "a: every request answered 200 ($ok)"
    check 0 "$(ge "$ok_per_s" "$classify_rate" 1 && echo 1)" "a: warm 8 clients >= classify --batch 8 ($ok_per_s vs $classify_rate /s)"
    ;;
  b|e)
    limit=512M; limit_bytes=$((512 << 20))
    runs=("1" "8"); [ "$s" = e ] && runs=("8")
    for c in "${runs[@]}"; do
      name=$s-membox512-$c
      drop_cache "${models[@]}"
      start_server "$name" 1 "$limit" --
      if [ "$s" = e ]; then load "$name" "$c" "$soak" 1000000; else load "$name" "$c" "$(secs 300 240)" "$(reqs $((c > 1 ? 2 * c : 3)) $((c > 1 ? 6 * c : 12)))"; fi
      stop_server
      row "$s: membox $limit, f32" "$c" $((requests - ok)) "$limit"
      check 1 "$([ "$ok" -gt 0 ] && [ $((requests - ok)) = 0 ] && boxed_ok $limit_bytes && echo 1)" \
        "$s ($c-client run): 0 failed of $requests, no OOM kill, peak charged $(mib "$charged") <= $limit"
      [ "$s" = e ] || rate[b$c]=$ok_per_s
    done
    if [ "$s" = b ]; then
      check 0 "$(ge "${rate[b8]}" "${rate[b1]}" 1.3 && echo 1)" "b: 8 clients >= 1.3x 1 client under 512M (${rate[b8]} vs ${rate[b1]} /s)"
      [ -z "${rate[a: warm, f32]:-}" ] ||
        check 0 "$(ge "${rate[b8]}" "${rate[a: warm, f32]}" 0.9 && echo 1)" "b: 8 clients under 512M >= 0.9x warm 8 clients (${rate[b8]} vs ${rate[a: warm, f32]} /s)"
    fi
    ;;
  c)
    int8=$work/int8
    mkdir -p "$int8"
    serve_models=()
    for m in "${models[@]}"; do
      dst=$int8/$(basename "$m")
      if [ ! -f "$dst/model.safetensors" ]; then
        "$wstream" convert "$m" "$dst" --dtype int8 --layout exec >&2 || die "convert $m to int8 failed"
      fi
      serve_models+=("$dst")
    done
    limit=256M; limit_bytes=$((256 << 20))
    for c in 1 8; do
      name=c-int8-80M-membox256-$c
      drop_cache "${serve_models[@]}"
      start_server "$name" 1 --read-bps "80M:$int8" "$limit" --
      load "$name" "$c" "$(secs 400 240)" "$(reqs $((c > 1 ? 2 * c : 3)) $((c > 1 ? 4 * c : 6)))"
      stop_server
      row "c: int8, reads 80 MiB/s, membox $limit" "$c" $((requests - ok)) "$limit"
      check 1 "$([ "$ok" -gt 0 ] && [ $((requests - ok)) = 0 ] && boxed_ok $limit_bytes && echo 1)" \
        "c ($c-client run): 0 failed of $requests, no OOM kill, peak charged $(mib "$charged") <= $limit"
      rate[c$c]=$ok_per_s
    done
    check 0 "$(ge "${rate[c8]}" "${rate[c1]}" 4 && echo 1)" "c: 8 clients >= 4x 1 client at 80 MiB/s (${rate[c8]} vs ${rate[c1]} /s)"
    serve_models=("${models[@]}")
    ;;
  d)
    warm_cache "${models[@]}"
    start_server d-queue16-50 0 --queue 16
    load d-queue16-50 50 "$(secs 60 15)" qps:200
    health=0
    stats get "http://127.0.0.1:$port/healthz" "$work/d.healthz" && health=1
    stop_server
    row "d: warm, --queue 16" 50 $((other + errors))
    check 1 "$([ $((other + errors)) = 0 ] && [ "$health" = 1 ] && echo 1)" \
      "d: only 200 ($ok) and 503 ($n503), no request timed out or failed otherwise, /healthz answers after"
    check 1 "$([ "$n503" -gt 0 ] && echo 1)" "d: the queue overflowed into 503s"
    ;;
  esac
done

{
  echo "Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r); $("$wstream" --version) at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'); $("$oha" --version)"
  echo "Command: $cmdline (models: ${models[*]})"
  echo
  echo "$header"
  printf '%s\n' "${rows[@]}"
  echo
  printf '%s\n' "${checks[@]}"
} > "$out"
echo "bench_serve: written to $out; raw figures in $work/" >&2
exit $hard_fail
