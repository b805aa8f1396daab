#!/usr/bin/env python3
"""bf16 logits of wstream against timm's f32 logits, per image: cosine, max abs difference, top-1 agreement
and both margins (top-1 minus top-2 logit).

  bf16_accuracy.py --model DIR --bf16 DIR --wstream BIN IMAGE...

DIR is a timm-layout export (model.safetensors + config.json, as tools/export_timm.py writes); the bf16 copy
is `wstream convert DIR OUT --dtype bf16`. Each image goes through timm's eval transform once; the same
tensor (saved as .npy) feeds timm in f32 and wstream, so the figures measure the products' precision alone,
not preprocessing. Needs the reference venv (tools/setup_reference.sh). Prints one line per image and a
summary line; exits 1 if an image misses the issue's targets: cosine >= 0.9995, and the same top-1 wherever
timm's margin is above 0.1 (closer calls may swap).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors.torch
import timm
import torch
from PIL import Image


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, type=Path)
    p.add_argument('--bf16', required=True, type=Path)
    p.add_argument('--wstream', required=True)
    p.add_argument('images', nargs='+', type=Path)
    a = p.parse_args()
    config = json.loads((a.model / 'config.json').read_text())
    model = timm.create_model(config['architecture'], pretrained=False, **config.get('model_args', {}))
    model.load_state_dict(safetensors.torch.load_file(str(a.model / 'model.safetensors')), strict=True)
    model.eval()
    # The test size where the config has one, as wstream classifies (ConvNeXt-L: 288).
    data_cfg = timm.data.resolve_data_config({}, pretrained_cfg=config['pretrained_cfg'], use_test_size=True)
    transform = timm.data.create_transform(**data_cfg)
    worst = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs, refs = [], []
        for i, img in enumerate(a.images):
            x = transform(Image.open(img).convert('RGB')).unsqueeze(0)
            path = Path(tmp) / f'{i}.npy'
            np.save(path, x.numpy().astype(np.float32))
            inputs.append(str(path))
            with torch.no_grad():
                refs.append(model(x)[0].double().numpy())
        out = subprocess.run([a.wstream, 'classify', '--json', '--logits', '--model', str(a.bf16), *inputs],
                             check=True, capture_output=True, text=True).stdout
        got = [np.array(json.loads(line)['models'][0]['logits'], dtype=np.float64)
               for line in out.splitlines() if line.strip()]
    ok = True
    for img, ref, g in zip(a.images, refs, got):
        cos = float(ref @ g / np.linalg.norm(ref) / np.linalg.norm(g))
        top = np.argsort(-ref)[:2]
        gtop = np.argsort(-g)[:2]
        margin, gmargin = ref[top[0]] - ref[top[1]], g[gtop[0]] - g[gtop[1]]
        same = top[0] == gtop[0]
        good = cos >= 0.9995 and (same or margin <= 0.1)
        ok &= good
        worst.append(cos)
        print(f'{config["architecture"]:32} {img.name:24} cosine {cos:.6f} max|d| {np.abs(ref - g).max():.3e} '
              f'top-1 {top[0]}/{gtop[0]} {"same" if same else "DIFFERENT"} margin timm {margin:.3f} '
              f'bf16 {gmargin:.3f}{"" if good else "  MISSES TARGET"}')
    print(f'{config["architecture"]:32} {len(got)} images, worst cosine {min(worst):.6f}, '
          f'{"all on target" if ok else "SOME MISS THE TARGET"}')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
