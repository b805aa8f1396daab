"""Where a model's CPU time goes, by kernel, with the vector kernels and with WSTREAM_KERNELS=portable: `perf
record` (DWARF call graphs, so inlined kernels count) of `wstream classify --threads 1` over the same photo
N times (batch 1, page cache warm after the first), then each kernel's inclusive share of the samples. CPU
time, not wall time: other processes on a shared machine slow it less than they slow a stopwatch.

Usage: python3 tools/perf_ops.py [--passes N] [--freq HZ] [--wstream PATH] [--vector-only] MODEL_DIR...
  (needs `perf`, apt package linux-perf; default models: the synthetic Large ones in /work/synth; a
  converted folder, e.g. `convert --dtype int8`, shows its own kernels' rows)
  --vector-only   skip the WSTREAM_KERNELS=portable run
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = [f"/work/synth/{m}" for m in ("vit_large_patch16_224", "convnext_large", "swin_large_patch4_window7_224")]
# Kernel -> the function whose inclusive samples are its time (first match of a sample's symbol list).
OPS = [
    ("matrix products (gemm crate)", r"^wstream::ops::gemm::gemm_into$"),
    # The converted files' kernels (`convert --layout packed`, `--dtype bf16`, `--dtype int8`).
    ("packed products + epilogue", r"^wstream::ops::packed::part$"),
    ("bf16 products", r"^wstream::ops::bf16::group$"),
    ("bf16 activation packing", r"^wstream::ops::bf16::pack_rows$"),
    ("int8 products + epilogue", r"^wstream::ops::int8::product_part$"),
    ("int8 activation quantizing", r"^wstream::ops::int8::(quantize_with|quantize_t_with)$"),
    ("attention", r"^wstream::ops::attention::attention$"),
    ("depthwise 7x7", r"^wstream::ops::conv::depthwise_conv$"),
    ("LayerNorm", r"^wstream::ops::norm::layer_norm$"),
    ("GELU (+ bias)", r"^wstream::ops::activation::(bias_gelu|bias_gelu_t|gelu)$"),
    ("transpose of y^T (+ bias)", r"^wstream::ops::simd::transposed$"),
    ("element-wise (residuals, pooling)", r"^wstream::ops::elementwise::"),
    ("prefetch + release (page tables)", r"^wstream::exec::(Prefetcher::serve|Executor::release)$"),
]


def record(wstream, model, passes, freq, portable, data):
    env = dict(os.environ)
    env.pop("WSTREAM_KERNELS", None)
    if portable:
        env["WSTREAM_KERNELS"] = "portable"
    photo = os.path.join(ROOT, "tests/data/cat.jpg")
    cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq), "--call-graph", "dwarf,8192", "-o", data, "--",
           wstream, "classify", "--threads", "1", "--model", model] + [photo] * passes
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rep = subprocess.run(["perf", "report", "-i", data, "--children", "--sort", "symbol", "--stdio", "-g", "none"],
                         check=True, capture_output=True, text=True).stdout
    # The cpu-clock event counts nanoseconds of CPU time.
    event = re.search(r"# Samples: .* of event '(\S+)'", rep)
    if not event or not event.group(1).startswith("cpu-clock"):
        sys.exit(f"perf sampled {event.group(1) if event else 'nothing'}, not cpu-clock: add -e cpu-clock")
    total = re.search(r"# Event count \(approx.\): (\d+)", rep)
    shares = {}
    for line in rep.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+[\d.]+%\s+\[\.\]\s+(.*?)(\s+\(inlined\))?\s+-\s+-\s*$", line)
        if m:
            shares.setdefault(m.group(2).strip(), float(m.group(1)))
    return int(total.group(1)) / 1e6, shares


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--freq", type=int, default=499)
    ap.add_argument("--wstream", default=os.path.join(ROOT, "target/release/wstream"))
    ap.add_argument("--vector-only", action="store_true")
    ap.add_argument("models", nargs="*", default=DEFAULT)
    a = ap.parse_args()
    if a.vector_only:
        print("| model: kernel | CPU ms per image | share |")
        print("| --- | ---: | ---: |")
    else:
        print("| model: kernel | vector: CPU ms per image | portable | portable / vector |")
        print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            name = os.path.basename(model.rstrip("/"))
            ms = {}
            for portable in (False,) if a.vector_only else (False, True):
                cpu_ms, shares = record(a.wstream, model, a.passes, a.freq, portable, os.path.join(tmp, "p.data"))
                per_image = cpu_ms / a.passes
                row = {}
                for op, pattern in OPS:
                    row[op] = sum(s for sym, s in shares.items() if re.search(pattern, sym)) / 100 * per_image
                row["whole process"] = per_image
                ms[portable] = row
            for op in [o for o, _ in OPS] + ["whole process"]:
                v = ms[False][op]
                if v < 0.05 and op != "whole process":
                    continue
                if a.vector_only:
                    print(f"| {name}: {op} | {v:,.1f} | {v / ms[False]['whole process']:.0%} |")
                    continue
                p = ms[True][op]
                ratio = f"{p / v:.2f}x" if v > 0.5 else ""
                print(f"| {name}: {op} | {v:,.1f} | {p:,.1f} | {ratio} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
