"""FLOPs of each block of a timm model at its default input size, batch 1, as wstream's profile names the
blocks: the matrix products and convolutions torch's FlopCounterMode counts (2 per multiply-add), which is
what the `gemm` crate and the depthwise kernel do; the element-wise work (LayerNorm, GELU, softmax) is left
out. Used for the Raspberry Pi estimate in BENCHMARKS.md (issue 20). Builds the models on torch's meta
device, so nothing is allocated or downloaded.

Usage: .venv-ref/bin/python tools/block_flops.py [--json] [MODEL...]
"""
import json
import re
import sys

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

DEFAULT = ["vit_large_patch16_224", "convnext_large", "swin_large_patch4_window7_224"]
# A module whose name matches is one block of wstream's executor.
BLOCK = re.compile(
    r"^(patch_embed|stem|blocks\.\d+|stages\.\d+\.(downsample|blocks\.\d+)|layers\.\d+\.(downsample|blocks\.\d+)|head)$"
)


def block_flops(name):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False).eval()
        size = model.pretrained_cfg["input_size"]
        x = torch.empty(1, *size)
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        model(x)
    root = type(model).__name__ + "."
    blocks = {}
    for module, ops in counter.get_flop_counts().items():
        short = module[len(root):] if module.startswith(root) else None
        if short is not None and BLOCK.match(short):
            blocks[short] = {str(op).split(".")[1]: n for op, n in ops.items()}
    return {"model": name, "total": counter.get_total_flops(), "blocks": blocks}


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    results = [block_flops(n) for n in (args or DEFAULT)]
    if "--json" in sys.argv:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        print(f"{r['model']}: {r['total'] / 1e9:.2f} GFLOP")
        for b, ops in r["blocks"].items():
            detail = ", ".join(f"{op} {n / 1e9:.3f}" for op, n in sorted(ops.items()))
            print(f"  {b:<28} {sum(ops.values()) / 1e9:8.3f}  ({detail})")


if __name__ == "__main__":
    main()
