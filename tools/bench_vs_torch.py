#!/usr/bin/env python3
"""The Python half of tools/bench_vs_torch.sh: wstream vs timm (PyTorch) vs ONNX Runtime. The work is in
the benchvt package next to this file (its __init__ says which module does what); this is the command
line, also what the driver starts its worker and start-to-answer processes with.

Run it through tools/bench_vs_torch.sh (which checks the environment and builds wstream); the
subcommands are:

  export  --fullsize DIR --onnx-dir DIR
          Exports each timm model of DIR to ONNX once and checks it with ONNX Runtime against the
          reference logits (<onnx-dir>/<model>/{model.onnx, model.onnx.data, export.json}).
  worker  --engine timm|ort ...
          A long-lived process that loads the models once, then runs timed loops on request
          (JSON lines on stdin/stdout), so the driver can interleave it with wstream runs.
  once    --engine timm|ort ... --image IMG
          Process start to first answer: imports, loads the models, classifies one image, prints
          the ensemble's answer. Timed from outside by the driver.
  bench   ...
          The driver: every measurement, the raw results in target/bench_vs_torch/, then the
          markdown section of BENCHMARKS.md. --peers adds the peer rows (benchvt/peers.py).
  render  RESULTS.json [--out FILE]
          The markdown section again from saved raw results.
  folios  FILES...
          Share of the files mapped in 2 MiB pages (a child process of the driver).

--models (default: all three) picks a subset, for a quick run on one model.
"""

import time

T_START = time.perf_counter()  # before the imports below: `once` counts them in what an answer costs

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchvt import MODELS  # noqa: E402

# subcommand -> (module of benchvt, function); imported on use, so `once --engine ort` loads no torch
COMMANDS = {'export': ('export', 'cmd_export'), 'worker': ('engines', 'cmd_worker'),
            'once': ('engines', 'cmd_once'), 'bench': ('driver', 'cmd_bench'),
            'render': ('report', 'cmd_render'), 'folios': ('system', 'cmd_folios')}


def model_list(text):
    models = text.split(',')
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f'unknown model(s) {", ".join(unknown)}; known: {", ".join(MODELS)}')
    return models


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)

    def common(sp):
        sp.add_argument('--fullsize', required=True)
        sp.add_argument('--onnx-dir', required=True)
        sp.add_argument('--threads', type=int, default=2)
        sp.add_argument('--models', type=model_list, default=MODELS, help='comma-separated subset of the models')

    common(sub.add_parser('export'))
    for name in ('worker', 'once'):
        sp = sub.add_parser(name)
        common(sp)
        sp.add_argument('--engine', choices=['timm', 'ort'], required=True)
        if name == 'once':
            sp.add_argument('--image', required=True)
    sp = sub.add_parser('bench')
    common(sp)
    sp.add_argument('--wstream', required=True)
    sp.add_argument('--image', required=True)
    sp.add_argument('--repeats', type=int, default=5)
    sp.add_argument('--per-round', type=int, default=1, help='timed images per engine per round (batch 1)')
    sp.add_argument('--tp-repeats', type=int)
    sp.add_argument('--cold-repeats', type=int)
    sp.add_argument('--batch', type=int, default=8)
    sp.add_argument('--quick', action='store_true')
    sp.add_argument('--only', help='comma-separated phases (warm,start,cold,membox), for debugging')
    sp.add_argument('--settle', type=float, default=0.3, help='pause before each timed turn (s)')
    sp.add_argument('--damon', choices=['pause', 'keep'], default='pause',
                    help='a running DAMON pageout scheme (proactive reclaim): paused for the run, or kept')
    sp.add_argument('--bisect-lo', type=int, default=32)
    sp.add_argument('--bisect-hi', type=int, default=8192)
    sp.add_argument('--bisect-precision', type=float, default=0.05)
    sp.add_argument('--membox-min-timeout', type=float, default=60)
    sp.add_argument('--membox-timeout-factor', type=float, default=4)
    sp.add_argument('--out')
    sp.add_argument('--command', default='')
    sp.add_argument('--wstream-version', default='?')
    sp.add_argument('--rustc', default='?')
    sp.add_argument('--dirty-files', default='')
    sp.add_argument('--storage', default='?')
    sp.add_argument('--peers', default='', help='comma-separated peer rows: wstream variants by name '
                    '(bf16, int8, int8-wo, packed, or --variant ones), ort-int8, candle; empty for none')
    sp.add_argument('--variant', action='append', metavar='NAME:CONVERT ARGS:CLASSIFY ARGS',
                    help='a wstream variant row (adds to or replaces the defaults of benchvt/peers.py)')
    sp.add_argument('--candle', help='the candle_convnext example binary (the candle row)')
    sp = sub.add_parser('render', help='re-render a results JSON into markdown')
    sp.add_argument('results')
    sp.add_argument('--out')
    sp = sub.add_parser('folios', help='share of files mapped in 2 MiB pages (prints a JSON number)')
    sp.add_argument('files', nargs='+')
    return p


def main():
    args = parser().parse_args()
    module, func = COMMANDS[args.cmd]
    run = getattr(importlib.import_module(f'benchvt.{module}'), func)
    if args.cmd == 'once':
        run(args, T_START)
    else:
        run(args)


if __name__ == '__main__':
    main()
