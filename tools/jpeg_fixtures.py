#!/usr/bin/env python3
"""Make tests/data/jpeg/: small JPEGs of every kind Pillow writes, a few other formats, and what Pillow and
timm make of them, for tests/suite/jpeg.rs.

For each image file NAME.EXT it writes NAME.EXT.pillow.png: `Image.open(NAME.EXT).convert("RGB")`, the pixels
timm sees (PNG, so lossless; wstream's PNG decoding is exact). For some of them and the tiny model fixtures
vit_tiny and swin_tiny it writes logits/FIXTURE.NAME.EXT.npy: the fixture's logits from timm's own eval
transform (from the config's pretrained_cfg) of the file, float32 [1, 1000].

The pictures are crops of tests/data/cat.jpg (CC0, see tests/data/README.md), at odd sizes so the edge
handling of chroma upsampling is covered. Run from the repository root with the reference venv
(tools/setup_reference.sh):

    .venv-ref/bin/python tools/jpeg_fixtures.py

It also checks what the tests take as given about Pillow: it refuses a truncated JPEG and ignores EXIF
orientation; and it prints the libjpeg-turbo version Pillow bundles.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import PIL
import safetensors.torch
import timm
import torch
from PIL import Image, features

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/data/jpeg"
LOGIT_MODELS = ["vit_tiny", "swin_tiny"]


def main():
    print(f"Pillow {PIL.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}, "
          f"libwebp {features.version('webp')}, libtiff {features.version('libtiff')}, timm {timm.__version__}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "logits").mkdir(exist_ok=True)
    cat = Image.open(ROOT / "tests/data/cat.jpg").convert("RGB")
    big = cat.crop((120, 40, 120 + 161, 40 + 107))  # 161x107
    small = cat.crop((200, 90, 200 + 37, 90 + 29))  # 37x29

    files = {}

    def jpeg(name, img, **kw):
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kw)
        files[name] = buf.getvalue()

    jpeg("b420.jpg", big, quality=90, subsampling="4:2:0")
    jpeg("b420_37x29.jpg", small, quality=90, subsampling="4:2:0")
    jpeg("b422.jpg", big, quality=85, subsampling="4:2:2")
    jpeg("b422_37x29.jpg", small, quality=85, subsampling="4:2:2")
    jpeg("b444.jpg", big, quality=95, subsampling="4:4:4")
    jpeg("progressive.jpg", big, quality=80, progressive=True)
    jpeg("progressive_37x29.jpg", small, quality=80, progressive=True, subsampling="4:2:2")
    jpeg("restart.jpg", big, quality=90, restart_marker_blocks=3)
    jpeg("grey.jpg", big.convert("L"), quality=90)
    jpeg("grey_progressive.jpg", small.convert("L"), quality=90, progressive=True)
    jpeg("cmyk.jpg", big.convert("CMYK"), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    jpeg("exif_rotated.jpg", big, quality=90, exif=exif.tobytes())

    # Damaged but complete (the end-of-image marker is there): libjpeg warns, Pillow ignores the warnings
    # and keeps what libjpeg made of the data.
    good = files["b420.jpg"]
    scan = good.index(b"\xff\xda")
    zeroed = bytearray(good)
    for k in range(scan + 2000, scan + 2040):
        if zeroed[k] != 0xFF:
            zeroed[k] = 0
    files["damaged_scan.jpg"] = bytes(zeroed)
    files["short_scan.jpg"] = good[: scan + 3000] + b"\xff\xd9"

    def other(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        files[name] = buf.getvalue()

    mid = cat.crop((100, 60, 100 + 123, 60 + 87))  # 123x87
    other("lossy.webp", mid, "WEBP", quality=80)
    other("lossless.webp", mid, "WEBP", lossless=True)
    rgba = mid.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(mid.size))
    other("rgba.webp", rgba, "WEBP", quality=80)
    other("rgb.bmp", mid, "BMP")
    other("rgb.tiff", mid, "TIFF")
    other("lzw.tiff", mid, "TIFF", compression="tiff_lzw")
    # Two frames; the first is the one opened. Palette image with a transparent index.
    p1 = mid.quantize(64)
    p2 = mid.transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(64)
    other("animated.gif", p1, "GIF", save_all=True, append_images=[p2], duration=100, loop=0)
    # A transparent palette index: Pillow's convert("RGB") gives the palette colour under it.
    other("transparent.gif", cat.crop((0, 0, 40, 30)).quantize(16), "GIF", transparency=3)

    for name, data in files.items():
        (OUT / name).write_bytes(data)
        im = Image.open(OUT / name)
        rgb = im.convert("RGB")
        rgb.save(OUT / f"{name}.pillow.png")
        print(f"{name:24} {im.format:5} {im.mode:5} {im.size[0]}x{im.size[1]} {len(data):7} bytes")

    # Pillow ignores EXIF orientation: the rotated file opens at its stored size.
    assert Image.open(OUT / "exif_rotated.jpg").size == big.size
    # Pillow refuses a JPEG cut short (LOAD_TRUNCATED_IMAGES is False by default).
    data = files["b420.jpg"]
    for cut in (len(data) // 2, len(data) - 2):
        try:
            Image.open(io.BytesIO(data[:cut])).convert("RGB")
        except OSError as e:
            print(f"truncated at {cut}: Pillow refuses: {e}")
        else:
            sys.exit(f"Pillow opened b420.jpg cut at {cut}")

    torch.set_num_threads(2)
    for fixture in LOGIT_MODELS:
        d = ROOT / "tests/fixtures" / fixture
        cfg = json.loads((d / "config.json").read_text())
        model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
        model.load_state_dict(safetensors.torch.load_file(d / "model.safetensors"))
        model.eval()
        tf = timm.data.create_transform(
            **timm.data.resolve_data_config({}, pretrained_cfg=cfg["pretrained_cfg"]))
        for name in ["b420.jpg", "progressive.jpg", "grey.jpg", "cmyk.jpg", "lossy.webp", "animated.gif"]:
            x = tf(Image.open(OUT / name).convert("RGB")).unsqueeze(0)
            with torch.no_grad():
                logits = model(x).float().numpy()
            np.save(OUT / "logits" / f"{fixture}.{name}.npy", logits.astype(np.float32))


if __name__ == "__main__":
    main()
