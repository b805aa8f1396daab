"""The cost of the portable kernels (WSTREAM_KERNELS=portable) against the vector ones, per model and per kind
of block, from `wstream profile`'s block records: warm, batch 1, the same binary, the two variants taking
turns for N rounds. On a shared machine the least disturbed figure is the minimum: each block's compute time
is its minimum over the rounds, and a model's figure the sum of those (beside the best whole run's wall
time). Prints markdown.

Usage: python3 tools/bench_portable.py [--rounds N] [--threads N] [--wstream PATH] MODEL_DIR...
  (default models: the synthetic Large ones in /work/synth; `wstream synth` writes them anywhere)
"""
import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = [f"/work/synth/{m}" for m in ("vit_large_patch16_224", "convnext_large", "swin_large_patch4_window7_224")]


def profile(wstream, model, threads, portable):
    env = dict(os.environ)
    env.pop("WSTREAM_KERNELS", None)
    if portable:
        env["WSTREAM_KERNELS"] = "portable"
    out = subprocess.run(
        [wstream, "profile", "--format", "json", "--threads", str(threads), "--model", model,
         os.path.join(ROOT, "tests/data/cat.jpg")],
        env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def kind(block):
    """`stages.2.blocks.17` -> `stages.2.blocks`: blocks of one stage share their shapes."""
    return re.sub(r"\.\d+$", "", block) if re.search(r"blocks\.\d+$", block) else block


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wstream", default=os.path.join(ROOT, "target/release/wstream"))
    ap.add_argument("models", nargs="*", default=DEFAULT)
    a = ap.parse_args()
    rows = []
    for model in a.models:
        profile(a.wstream, model, a.threads, False)  # warm the page cache
        best, blocks = {}, defaultdict(lambda: [float("inf"), float("inf")])
        for _ in range(a.rounds):
            for portable in (False, True):
                p = profile(a.wstream, model, a.threads, portable)
                wall = p["totals"]["wall_ms"]
                if portable not in best or wall < best[portable]["totals"]["wall_ms"]:
                    best[portable] = p
                for r in p["blocks"]:
                    b = blocks[r["block"]]
                    b[portable] = min(b[portable], r["compute_ms"])
        name = best[False]["models"][0]["model"]
        kinds = defaultdict(lambda: [0, 0.0, 0.0])
        for block, (v, p) in blocks.items():
            k = kinds[kind(block)]
            k[0] += 1
            k[1] += v
            k[2] += p
        rows.append((name, best, kinds))
        print(f"{name}: {best[True]['kernels']} / {best[False]['kernels']}", file=sys.stderr)
    print("| model | vector kernels (ms) | portable kernels (ms) | portable / vector | best whole run, vector / portable (ms) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, best, kinds in rows:
        v, p = sum(k[1] for k in kinds.values()), sum(k[2] for k in kinds.values())
        wv, wp = best[False]["totals"]["wall_ms"], best[True]["totals"]["wall_ms"]
        print(f"| {name} | {v:,.0f} | {p:,.0f} | {p / v:.2f}x | {wv:,.0f} / {wp:,.0f} |")
    print()
    print("| model: blocks | count | vector compute (ms) | portable compute (ms) | extra (ms) | share of the extra |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, best, kinds in rows:
        extra_total = sum(k[2] - k[1] for k in kinds.values())
        for b, (n, v, p) in kinds.items():
            share = (p - v) / extra_total if extra_total > 0 else 0
            print(f"| {name}: {b} | {n} | {v:,.1f} | {p:,.1f} | {p - v:+,.1f} | {100 * share:.0f}% |")


if __name__ == "__main__":
    main()
