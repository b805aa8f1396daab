"""timm's eval transform (Resize the shorter side to floor(size / crop_pct), PIL bicubic, CenterCrop,
ToTensor, Normalize) in PIL + numpy, so the ORT processes need no torch and every Python engine
preprocesses the same way. The driver checks it against each model's reference/cat.input.npy, which
timm's own transform made."""

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image


def load_cfg(model_dir):
    return json.loads((Path(model_dir) / 'config.json').read_text())


def decode(path):
    with Image.open(path) as im:
        return im.convert('RGB')


def preprocess(img, cfg):
    """One decoded RGB image -> float32 [3, H, W], as timm's transform for `cfg` (a config.json) makes it."""
    pc = cfg['pretrained_cfg']
    _, th, tw = pc['input_size']
    crop_pct = pc.get('crop_pct', 0.875)
    if pc.get('crop_mode', 'center') != 'center':
        raise SystemExit(f"crop_mode {pc.get('crop_mode')} not supported by the benchmark's preprocessing")
    interp = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}[pc.get('interpolation', 'bicubic')]
    sh, sw = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    if sh != sw:
        raise SystemExit('non-square scale size not supported by the benchmark preprocessing')
    w, h = img.size
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = sh, int(sh * long_ / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), interp)
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    img = img.crop((left, top, left + tw, top + th))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = x.transpose(2, 0, 1)
    mean = np.asarray(pc['mean'], dtype=np.float32)[:, None, None]
    std = np.asarray(pc['std'], dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()
