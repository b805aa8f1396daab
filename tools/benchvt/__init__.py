"""wstream vs timm (PyTorch) vs ONNX Runtime on timm's Large models (issue #8), split by job.

tools/bench_vs_torch.sh checks the environment and runs tools/bench_vs_torch.py, the command line
over these modules:

  preprocess  timm's eval transform in PIL + numpy, shared by every Python engine and the driver's check
  engines     the timm and ORT engines, and the `worker` / `once` processes the driver times
  export      timm -> ONNX, once per model
  system      processes, page cache, machine facts: what the driver measures with
  driver      the measurement phases, saving the raw results as JSON
  report      the markdown section of BENCHMARKS.md from those raw results; its prose is report.md

torch, timm and onnx are imported only where used, so an `once --engine ort` process never imports
torch; report and system need only the standard library, so `render` runs on any Python 3.
"""

import sys
import time

MODELS = ['vit_large_patch16_224', 'convnext_large', 'swin_large_patch4_window7_224']
SHORT = {'vit_large_patch16_224': 'ViT-L/16', 'convnext_large': 'ConvNeXt-L',
         'swin_large_patch4_window7_224': 'Swin-L'}
ENGINES = ['wstream', 'timm', 'ort']
ENGINE_NAME = {'wstream': 'wstream', 'timm': 'timm (PyTorch)', 'ort': 'ONNX Runtime'}
OPSET = 17


def log(*a):
    print(f'[{time.strftime("%H:%M:%S")}]', *a, file=sys.stderr, flush=True)
