#!/usr/bin/env python3
"""Reference tensors for wstream's transform resolution: timm's own resolve_data_config + create_transform
on PNG photos (no decoder difference, so wstream must match them bit for bit).

Writes OUT_DIR/cases.json (per case: the pretrained_cfg, the inference.py-style args, use_test_size, the
image, the resolved data config) and OUT_DIR/<case>.npy (float32 [3, H, W]).

    .venv-ref/bin/python tools/transform_refs.py tests/fixtures/transforms
"""

import json
import sys
from pathlib import Path

import numpy as np
import PIL
import timm
from PIL import Image
from timm.data import create_transform, resolve_data_config

ROOT = Path(__file__).resolve().parent.parent

BASE = {"input_size": [3, 48, 48], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# (name, image, pretrained_cfg changes, args as inference.py's flags, use_test_size)
CASES = [
    ("test_size", "coffee.png", {"test_input_size": [3, 64, 64], "test_crop_pct": 1.0}, {}, True),
    ("train_size", "coffee.png", {"test_input_size": [3, 64, 64], "test_crop_pct": 1.0}, {}, False),
    ("img_size_flag", "cat_grey.png", {"test_crop_pct": 1.0}, {"img_size": 40}, True),
    ("bilinear", "coffee.png", {"interpolation": "bilinear", "crop_pct": 0.8}, {}, True),
    ("bilinear_flag", "cat_grey.png", {}, {"interpolation": "bilinear", "crop_pct": 0.75}, True),
    ("lanczos", "coffee.png", {"interpolation": "lanczos"}, {}, True),
    ("lanczos_flag", "cat_grey.png", {"input_size": [3, 40, 56]}, {"interpolation": "lanczos"}, True),
    ("nearest", "coffee.png", {"interpolation": "nearest"}, {}, True),
    ("nearest_flag", "cat_grey.png", {"input_size": [3, 40, 56]}, {"interpolation": "nearest", "crop_pct": 1.0},
     True),
    ("squash", "coffee.png", {"crop_mode": "squash", "input_size": [3, 40, 56]}, {}, True),
    ("squash_flag", "cat_grey.png", {}, {"crop_mode": "squash"}, True),
    ("border", "coffee.png", {"crop_mode": "border"}, {}, True),
    ("border_flag", "cat_grey.png", {}, {"crop_mode": "border", "crop_pct": 1.0}, True),
    ("center_rect", "cat_grey.png", {"input_size": [3, 40, 56]}, {}, True),
    ("mean_std_flags", "coffee.png", {}, {"mean": [0.5], "std": [0.25, 0.5, 0.75]}, True),
]


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, image, cfg_changes, args, use_test_size in CASES:
        cfg = dict(BASE, **cfg_changes)
        data = resolve_data_config(dict(args), pretrained_cfg=cfg, use_test_size=use_test_size)
        t = create_transform(**data)
        x = t(Image.open(ROOT / "tests/data" / image).convert("RGB")).numpy().astype(np.float32)
        np.save(out / f"{name}.npy", x)
        cases.append({"name": name, "image": image, "pretrained_cfg": cfg, "args": args,
                      "use_test_size": use_test_size,
                      "resolved": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}})
    meta = {"timm": timm.__version__, "pillow": PIL.__version__, "cases": cases}
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
