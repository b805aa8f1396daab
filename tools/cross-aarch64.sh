#!/usr/bin/env bash
# Cross-builds wstream for aarch64-unknown-linux-gnu, lints it (clippy -D warnings, every target) and runs the
# test suite under qemu-user: the ARM check of .ci/run, for a Debian machine (trixie or bookworm) as root.
#
# Nothing is downloaded through rustup: the aarch64 standard library is built from source (-Zbuild-std), from
# the rustup component rust-src when it is installed, else from Debian's rust-src package of exactly
# `rustc -V`'s version (trixie-backports carries several), fetched through a private apt configuration (the
# system's sources stay untouched), unpacked with dpkg -x into the cache folder and never installed (it
# conflicts with rustup). The cache is reused on later runs; so is the build folder, target/aarch64.
#
# Usage: tools/cross-aarch64.sh [--no-run]
#   --no-run    build and lint only
# Environment:
#   WSTREAM_ARM_CACHE   cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/wstream-tools/aarch64)
#   WSTREAM_ARM_TARGET  build folder (default target/aarch64 in the repository)
#   QEMU_CPU            passed to qemu: `max` (its default: dotprod, i8mm, bf16) or e.g. cortex-a76 (a Pi 5)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${WSTREAM_ARM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wstream-tools/aarch64}
build=${WSTREAM_ARM_TARGET:-$root/target/aarch64}
triple=aarch64-unknown-linux-gnu
run_tests=1
case "${1:-}" in
  --no-run) run_tests=0 ;;
  "") ;;
  *) echo "usage: tools/cross-aarch64.sh [--no-run]" >&2; exit 2 ;;
esac

say() { echo "cross-aarch64: $*" >&2; }
die() { say "error: $*"; exit 1; }

# 1. The cross linker and C library, and qemu (the static build is what binfmt_misc starts).
packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-user-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run as root, or: apt-get install ${missing[*]}"
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The standard library's source, of exactly this rustc's version.
version=$(rustc -V | awk '{print $2}')
sysroot_src=$(rustc --print sysroot)/lib/rustlib/src/rust/library
src=""
if [ -f "$sysroot_src/std/Cargo.toml" ]; then
  say "std source: the toolchain's rust-src component ($sysroot_src)"
else
  src=$cache/rust-src-$version/usr/src/rustc-$version/library
  if [ ! -f "$src/std/Cargo.toml" ]; then
    apt_dir=$cache/apt
    mkdir -p "$apt_dir"/etc/sources.list.d "$apt_dir"/etc/preferences.d "$apt_dir"/lists/partial \
      "$apt_dir"/cache/archives/partial
    # The mirror this machine already uses (deb822 or one-line sources), else Debian's own.
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie-backports main" \
      >"$apt_dir/etc/sources.list"
    cat >"$apt_dir/apt.conf" <<CONF
Dir::Etc::sourcelist "$apt_dir/etc/sources.list";
Dir::Etc::sourceparts "$apt_dir/etc/sources.list.d";
Dir::Etc::preferencesparts "$apt_dir/etc/preferences.d";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
Dir::State::status "/var/lib/dpkg/status";
APT::Sandbox::User "root";
CONF
    export APT_CONFIG=$apt_dir/apt.conf
    say "looking for Debian's rust-src $version in trixie-backports ($mirror)"
    apt-get update -qq || die "apt-get update of trixie-backports failed (network, or the mirror $mirror)"
    available=$(apt-cache madison rust-src | awk '{print $3}')
    pkg=$(echo "$available" | awk -v v="$version" 'index($0, v "+") == 1 {print; exit}')
    if [ -z "$pkg" ]; then
      die "no rust-src for rustc $version in trixie-backports (it has: $(echo $available | tr ' ' ',')).
  Install the standard library's source of rustc $version (\`rustup component add rust-src\`), or use a
  rustc whose version is listed, then run this again."
    fi
    tmp=$(mktemp -d "$cache/download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq "rust-src=$pkg") || die "apt-get download rust-src=$pkg failed"
    dpkg -x "$tmp"/rust-src_*_all.deb "$tmp/unpacked"
    [ -f "$tmp/unpacked/usr/src/rustc-$version/library/std/Cargo.toml" ] ||
      die "rust-src $pkg holds no usr/src/rustc-$version/library"
    rm -rf "$cache/rust-src-$version"
    mv "$tmp/unpacked" "$cache/rust-src-$version"
    unset APT_CONFIG
  fi
  say "std source: Debian's rust-src ($src)"
  # Cargo's own override of where -Zbuild-std finds the library (undocumented; the documented way is a
  # lib/rustlib/src/rust link inside the sysroot, which would mean writing into the installed toolchain).
  export __CARGO_TESTS_ONLY_SRC_ROOT=$src
fi

# 3. Tests spawn the `wstream` binary: the kernel must hand aarch64 executables to qemu.
binfmt=/proc/sys/fs/binfmt_misc
if [ "$run_tests" = 1 ] && [ ! -e "$binfmt/qemu-aarch64" ]; then
  [ "$(id -u)" = 0 ] || die "binfmt_misc has no qemu-aarch64 entry; as root: $0 (or systemd-binfmt)"
  mountpoint -q "$binfmt" || mount -t binfmt_misc binfmt_misc "$binfmt" ||
    die "cannot mount binfmt_misc (a container without privileges?); register qemu-aarch64 on the host"
  # A binfmt.d file is one registration line, in the format the register file takes.
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -f "$conf" ] || die "$conf is missing: apt-get install --reinstall qemu-user-static"
  grep -v '^#' "$conf" >"$binfmt/register" || die "cannot register qemu-aarch64 with binfmt_misc"
  say "registered qemu-aarch64 with binfmt_misc"
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
# The build is most of this script's time, so it leaves out what holds nothing architecture-specific: candle
# (the `candle` feature's interop and the candle-transformers reference, both checked by the native run) and
# the test binaries' debug info; and they link with the toolchain's own lld through the gcc driver (as rustc
# does by default on x86_64 Linux) instead of GNU ld.
export RUSTFLAGS="${RUSTFLAGS:-} --cfg wstream_no_candle_peer -Zunstable-options -Clink-self-contained=+linker -Clinker-features=+lld"
export CARGO_PROFILE_RELEASE_DEBUG=0
cd "$root"
cross=(-Zbuild-std --target "$triple" --target-dir "$build" --no-default-features --features cli,serve)

# One build both lints and compiles (tools/with-clippy.sh), so the crates are not compiled twice, once for the
# lints and once for the tests.
say "clippy (-D warnings) and release build of every target for $triple"
"$root/tools/with-clippy.sh" cargo test --release --no-run --all-targets "${cross[@]}"
[ "$run_tests" = 1 ] || exit 0
# The three synthetic Large models (2.6 GB of f32) run for many minutes under emulation, and two serve
# tests assert wall-clock bounds (a batch window, a client timeout) that emulation's 10-50x slowdown
# breaks; all of them run natively in the same CI. The estimate test also measures the process's RssAnon,
# which under qemu-user includes the emulator's own translation buffers. The 2 MiB page test reads the
# kernel's placement and page tables of a file mapping, which qemu-user makes itself for the guest (not on a
# 2 MiB boundary) and backs with the host's.
large=(three_large_models_in_a_few_hundred_mib batch_32_of_the_large_models_fits_a_512_mib_cgroup
       the_estimate_holds_the_measured_peak_of_a_large_batch)
timed=(a_batch_waits_for_requests_being_decoded stalled_clients_time_out_without_holding_up_others)
host=(weights_read_ahead_and_mapped_in_2mib_pages)
skipped=("${large[@]}" "${timed[@]}" "${host[@]}")
say "tests under qemu-aarch64 (QEMU_CPU=${QEMU_CPU:-max}); skipped under emulation, run by the native"
say "  cargo test: ${large[*]} (the Large models take many minutes in qemu)"
say "  ${timed[*]} (wall-clock bounds)"
say "  and ${host[*]} (the host's page tables, not the guest's)"
# The test binaries `cargo test` would run (not the examples or benches), from the build above (a no-op).
mapfile -t tests < <("$root/tools/with-clippy.sh" cargo test --release --no-run "${cross[@]}" \
  --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    kinds = set(m.get("target", {}).get("kind", []))
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and not kinds & {"example", "bench"}:
        print(m["target"]["name"] + ("-" + "-".join(sorted(kinds)) if kinds & {"lib", "bin"} else ""),
              m["executable"])
')
[ ${#tests[@]} -gt 0 ] || die "cargo listed no test binaries"
# Each process runs its tests one at a time: qemu-user can deadlock a fork made while another thread of the
# process runs (seen: a serve test's spawned child stuck in a futex before its exec, the test waiting on its
# pipe for ever). Two processes run at once instead, one per core, each on one group of one binary's tests:
# a module (a file of tests/suite, a module of the library) where the names have one, else the whole binary.
# Each group's output is printed whole when it ends.
logs=$(mktemp -d "${TMPDIR:-/tmp}/wstream-qemu.XXXXXX")
trap 'rm -rf "$logs" "${tmp:-}"' EXIT
printf '%s\n' "${skipped[@]}" >"$logs/skipped"
for entry in "${tests[@]}"; do
  read -r name exe <<<"$entry"
  "$exe" --list --format terse | sed -n 's/: test$//p' | { grep -vF -f "$logs/skipped" || true; } |
    awk -v name="$name" -v exe="$exe" '
      { group = index($0, "::") ? substr($0, 1, index($0, "::") - 1) : "-"; names[group] = names[group] " " $0 }
      END { for (g in names) print name, exe, g names[g] }'
done >"$logs/groups"
run_group() {
  local name=$1 exe=$2 group=$3 start=$SECONDS status=0
  shift 3
  "$exe" --test-threads=1 --exact "$@" >"$logs/$name.$group" 2>&1 || status=$?
  {
    echo "     Running $name ${group/#-/(all)} ($exe): $((SECONDS - start)) s, exit status $status"
    cat "$logs/$name.$group"
  } | flock "$logs" cat
  [ "$status" = 0 ] || echo "$name $group" >>"$logs/failed"
}
export -f run_group
export logs
# The largest groups first, so that none of them ends the run alone.
awk '{print NF, $0}' "$logs/groups" | sort -k1,1nr | cut -d' ' -f2- | xargs -P 2 -L 1 bash -c 'run_group "$@"' _
if [ -s "$logs/failed" ]; then
  die "tests failed under qemu in: $(paste -sd, "$logs/failed")"
fi
say "all $(wc -l <"$logs/groups") groups of ${#tests[@]} test binaries passed under qemu"
