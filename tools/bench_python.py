#!/usr/bin/env python3
"""wstream from Python against the wstream CLI and timm (PyTorch), on the three Large models: process start
to first ensemble answer with its peak RSS, warm per-image latency at batch 1, and the Python layer's own
cost per call. Prints a markdown table for BENCHMARKS.md.

  python tools/bench_python.py bench --large DIR [--threads 2] [--rounds 3] [--ref-python PY] [--wstream BIN]

runs with a Python where the wheel is installed (tools/python_tests.sh's recipe: maturin build --release,
pip install the wheel); timm runs in --ref-python (default .venv-ref/bin/python, the reference venv of
tools/setup_reference.sh) through tools/bench_vs_torch.py's `once` and its TimmEngine, so
it loads and preprocesses exactly as in that benchmark. The engines take turns in each round; medians.

`once` and `warm` are the child processes the driver times.
"""

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["vit_large_patch16_224", "convnext_large", "swin_large_patch4_window7_224"]
SHORT = {"vit_large_patch16_224": "ViT-L/16", "convnext_large": "ConvNeXt-L",
         "swin_large_patch4_window7_224": "Swin-L"}
IMAGE = ROOT / "tests" / "data" / "cat.jpg"


def cmd_once(args):
    """Process start to the first ensemble answer: import, three create_model, Ensemble, one image."""
    import wstream

    models = [wstream.create_model(Path(args.large) / m, threads=args.threads) for m in MODELS]
    r = wstream.Ensemble(models)([str(IMAGE)])
    print(json.dumps(dict(top=int(r.probs[0].argmax()), inside_s=time.perf_counter() - T_START)))


def cmd_warm(args):
    """Per-image latency at batch 1 (median of --repeats after one warm-up) of each model on its own
    preprocessed image and of the ensemble from the image file; the Python layer's cost per call."""
    import numpy as np
    import wstream

    out = {}
    models = {m: wstream.create_model(Path(args.large) / m, threads=args.threads) for m in MODELS}
    for name, m in models.items():
        x = m.transform(IMAGE)[None]
        m(x)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            m(x)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e3
    ens = wstream.Ensemble(list(models.values()))
    ens([str(IMAGE)])
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ens([str(IMAGE)])
        times.append(time.perf_counter() - t0)
    out["ensemble"] = statistics.median(times) * 1e3
    # The layer's own cost: a call's wall time less the executor's span (its block records), on a model
    # so small the rest of the pipeline (input copy, softmax of 1000 classes) is microseconds.
    tiny = wstream.create_model(ROOT / "tests" / "fixtures" / "vit_tiny", threads=args.threads)
    x = np.load(ROOT / "tests" / "fixtures" / "vit_tiny" / "reference" / "cat.input.npy").reshape(1, 3, 32, 32)
    over, walls = [], []
    for _ in range(200):
        t0 = time.perf_counter()
        tiny(x)
        walls.append(time.perf_counter() - t0)
        _, prof = tiny(x, profile=True)
        span = prof.records[-1]["end_ms"] / 1e3
        over.append(span)
    out["tiny_call_ms"] = statistics.median(walls) * 1e3
    out["tiny_executor_ms"] = statistics.median(over) * 1e3
    out["overhead_ms"] = out["tiny_call_ms"] - out["tiny_executor_ms"]
    out["peak_rss"] = wstream.peak_rss()
    print(json.dumps(out))


def child_peak(cmd):
    """Wall seconds, peak RSS in bytes (the child's own, via wait4) and stdout."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({status}):\n{err.decode()}")
    return wall, ru.ru_maxrss * 1024, out.decode()


def cmd_bench(args):
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--large", args.large, "--threads", str(args.threads)]
    cli = [args.wstream, "classify", "--threads", str(args.threads)]
    for m in MODELS:
        cli += ["--model", str(Path(args.large) / m)]
    timm = [args.ref_python, str(ROOT / "tools" / "bench_vs_torch.py"), "once", "--engine", "timm",
            "--fullsize", args.large, "--onnx-dir", "/nonexistent", "--threads", str(args.threads),
            "--image", str(IMAGE)]
    engines = {"python": me + ["once"] + common, "cli": cli + [str(IMAGE)], "timm": timm}
    start = {e: [] for e in engines}
    for r in range(args.rounds):
        order = list(engines)[r % 3:] + list(engines)[: r % 3]
        for e in order:
            wall, peak, _ = child_peak(engines[e])
            start[e].append((wall, peak))
            print(f"round {r} {e}: {wall:.2f} s, peak {peak >> 20} MiB", file=sys.stderr)
    _, _, warm = child_peak(me + ["warm", "--repeats", str(args.repeats)] + common)
    warm = json.loads(warm)
    # The CLI's warm per-image latency: elapsed_ms of the second of two identical inputs in one process.
    cli_warm = {}
    for m in MODELS:
        npy = Path(args.large) / m / "reference" / "cat.input.npy"
        src = [str(npy)] * 2 if npy.exists() else [str(IMAGE)] * 2
        _, _, out = child_peak([args.wstream, "classify", "--json", "--threads", str(args.threads), "--model",
                                str(Path(args.large) / m)] + src)
        cli_warm[m] = json.loads(out.strip().split("\n")[-1])["elapsed_ms"]
    _, _, out = child_peak(cli + ["--json", str(IMAGE), str(IMAGE)])
    cli_warm["ensemble"] = json.loads(out.strip().split("\n")[-1])["elapsed_ms"]
    timm_warm = json.loads(child_peak([args.ref_python, "-c", TIMM_WARM, args.large, str(args.threads),
                                       str(args.repeats), str(IMAGE)])[2])
    med = {e: (statistics.median(w for w, _ in v), statistics.median(p for _, p in v)) for e, v in start.items()}
    lines = [
        "| | wstream (Python) | wstream (CLI) | timm (PyTorch) |",
        "|---|---|---|---|",
        "| start to first ensemble answer, warm cache (s) | "
        + " | ".join(f"{med[e][0]:.2f}" for e in engines) + " |",
        "| peak RSS of that process (MiB) | " + " | ".join(f"{med[e][1] / 2**20:.0f}" for e in engines) + " |",
    ]
    for m in MODELS + ["ensemble"]:
        name = SHORT.get(m, "three-model ensemble (from the JPEG)")
        lines.append(f"| {name}, warm, batch 1 (ms/image) | {warm[m]:.0f} | {cli_warm[m]:.0f} | "
                     f"{timm_warm[m]:.0f} |")
    lines.append(f"\nPython layer per call (ViT-Tiny fixture, median of 200): {warm['tiny_call_ms']:.3f} ms a call, "
                 f"{warm['tiny_executor_ms']:.3f} ms of it the executor's blocks: "
                 f"{warm['overhead_ms'] * 1e3:.0f} us outside them (input copy, pipeline, thread hand-off, "
                 f"arrays out).")
    print("\n".join(lines))


# timm's warm latency per model at batch 1 and of the ensemble from the JPEG, with bench_vs_torch's engine.
TIMM_WARM = r"""
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[4]).resolve().parents[2] / 'tools'))
from benchvt.engines import TimmEngine, classify_images
from benchvt.preprocess import decode, preprocess
large, threads, repeats, image = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
models = ['vit_large_patch16_224', 'convnext_large', 'swin_large_patch4_window7_224']
e = TimmEngine(large, models, threads)
out = {}
img = decode(image)
for m in models:
    x = preprocess(img, e.cfgs[m])[None]
    e.forward(m, x)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter(); e.forward(m, x); t.append(time.perf_counter() - t0)
    out[m] = statistics.median(t) * 1e3
classify_images(e, models, [image])
t = []
for _ in range(repeats):
    t0 = time.perf_counter(); classify_images(e, models, [image]); t.append(time.perf_counter() - t0)
out['ensemble'] = statistics.median(t) * 1e3
print(json.dumps(out))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ["once", "warm", "bench"]:
        sp = sub.add_parser(name)
        sp.add_argument("--large", required=True, help="folder of the three Large models (wstream synth)")
        sp.add_argument("--threads", type=int, default=2)
        sp.add_argument("--repeats", type=int, default=5)
        if name == "bench":
            sp.add_argument("--rounds", type=int, default=3)
            sp.add_argument("--wstream", default=str(ROOT / "target" / "release" / "wstream"))
            sp.add_argument("--ref-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    args = p.parse_args()
    {"once": cmd_once, "warm": cmd_warm, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
