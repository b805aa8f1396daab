#!/usr/bin/env python3
"""Export a timm image classifier in timm's Hugging Face layout, plus reference outputs.

Writes, into OUT_DIR:

  model.safetensors          the model's state_dict, written by timm's own ``save_for_hf``
                             (``safetensors.torch.save_file(model.state_dict(), ...)``, no metadata)
  config.json                written by timm's own ``save_config_for_hf``: architecture,
                             num_classes, num_features, global_pool, model_args, pretrained_cfg
                             (input_size, interpolation, mean, std, crop_pct, crop_mode, ...)
  reference/meta.json        versions, model name, kwargs, seed, perturbation, transform config,
                             per-image logits summary (and timm_forward_ms with --time)
  reference/<stem>.input.npy   float32 [1,3,H,W]: timm's eval transform of each --image
  reference/<stem>.logits.npy  float32 [1,num_classes]: model(input) in float32, no grad
  reference/<stem>.features.npy  float32 [1,num_features]: the pooled pre-logits embedding,
                               model.forward_head(model.forward_features(input), pre_logits=True)
  with --blocks:
  reference/blocks.json        {"family", "blocks": [names in order], "files": [...], "shapes": [...]}
  reference/<stem>.blocks/NN_<name>.npy   each block's output, float32, timm's native layout,
                                          batch dim kept

Block names (forward hooks; see BLOCK NAMES in --help).

Needs the reference venv (tools/setup_reference.sh): torch, timm, safetensors, pillow, numpy.
"""

import argparse
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HELP_EPILOG = """\
BLOCK NAMES (--blocks), in execution order:
  ViT  (VisionTransformer): patch_embed = the token sequence fed into blocks.0 (after patch
       embed, cls/reg tokens, pos embed, pos_drop, patch_drop, norm_pre), [B, N+prefix, C];
       blocks.{i} = output of each block; head = final logits (after norm, pool, fc_norm, head).
  ConvNeXt: stem = output of model.stem (NCHW); per stage s: stages.{s}.downsample (only if
       not nn.Identity), stages.{s}.blocks.{b}; head = logits.
  Swin (SwinTransformer, NHWC features): patch_embed = model.patch_embed output [B,H,W,C];
       per layer s: layers.{s}.downsample (only if not nn.Identity), layers.{s}.blocks.{b};
       head = logits.
  Files are reference/<stem>.blocks/NN_<name>.npy with a zero-padded order index (2 digits,
  3 if there are more than 100 records).

PERTURBATION (--perturb, default on for random weights, off with --pretrained):
  timm's random init leaves many tensors trivial (all biases 0, norm weights 1, norm biases 0,
  ConvNeXt layer scale gamma = 1e-6, ViT cls_token ~1e-6). After init, every floating point
  tensor in the state_dict (parameters and persistent buffers) gets seeded Gaussian noise from
  a torch.Generator seeded with SEED + 1, in state_dict order:
    norm layers (class name contains 'Norm'): weight += 0.1*randn, bias += 0.05*randn,
        running_mean += 0.1*randn, running_var *= exp(0.1*randn)
    layer scale ('gamma' or a LayerScale module): += 0.3*randn
    weight matrices / conv kernels (ndim >= 2, named 'weight'):
        += max(0.02, 1/sqrt(fan_in))*randn, fan_in = prod(shape[1:])
    biases: += 0.02*randn
    anything else (cls_token, reg_token, pos_embed, relative_position_bias_table, ...):
        += 0.1*randn
  This keeps logits in a sane range (std ~1) and gives every block a clearly visible effect
  (mean |block out - block in| / mean |block in| ~0.1-2 on the fixtures).

Examples:
  python tools/export_timm.py vit_tiny_patch16_224 tests/fixtures/vit_tiny \\
      --kwargs '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}' \\
      --seed 0 --blocks --image tests/data/cat.jpg
  python tools/export_timm.py convnext_tiny tests/fixtures/convnext_tiny \\
      --kwargs '{"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32]}' --input-size 64 \\
      --seed 0 --blocks --image tests/data/cat.jpg
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Export a timm model (model.safetensors + config.json in timm's HF layout) "
                    "and reference inputs/logits/block outputs for parity tests.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument('model', help='timm model name, e.g. vit_tiny_patch16_224')
    p.add_argument('out_dir', type=Path, help='output folder (created)')
    p.add_argument('--kwargs', default='{}',
                   help='JSON object of extra timm.create_model kwargs (architecture args), '
                        'recorded as model_args in config.json')
    p.add_argument('--seed', type=int, default=0, help='torch.manual_seed before create_model (default 0)')
    p.add_argument('--pretrained', action='store_true',
                   help='load timm pretrained weights (needs the HF hub; not reachable here)')
    p.add_argument('--perturb', action=argparse.BooleanOptionalAction, default=None,
                   help='add seeded noise to every tensor after init (default: on unless --pretrained)')
    p.add_argument('--input-size', type=int, nargs='+', metavar='PX',
                   help='eval input size H [W] for models without a fixed size (e.g. ConvNeXt); written '
                        "to config.json's pretrained_cfg.input_size via timm's data_config. For "
                        'fixed-size models (ViT, Swin) set img_size in --kwargs instead')
    p.add_argument('--image', action='append', default=[], type=Path,
                   help='image to run through the eval transform and the model (repeatable)')
    p.add_argument('--blocks', action='store_true', help='also write each block output (see BLOCK NAMES)')
    p.add_argument('--num-threads', type=int, default=2, help='torch.set_num_threads (default 2)')
    p.add_argument('--time', type=int, default=0, metavar='N',
                   help='time N forwards of the first image after one warmup; write the median as '
                        'timm_forward_ms in meta.json (default 0: no timing)')
    p.add_argument('--verify', action=argparse.BooleanOptionalAction, default=True,
                   help='rebuild the model from config.json model_args, load model.safetensors '
                        'strictly, and check the logits reproduce exactly (default on)')
    p.add_argument('--add-features', action='store_true',
                   help='OUT_DIR already holds an export: rebuild its model from config.json + '
                        'model.safetensors, check it reproduces each reference/<stem>.logits.npy from '
                        '<stem>.input.npy, and write <stem>.features.npy beside them; nothing else is '
                        'written (MODEL and the other options are ignored). For fixtures made on '
                        'another machine, whose weights a new export would not reproduce bit for bit')
    args = p.parse_args(argv)
    args.kwargs = json.loads(args.kwargs)
    if not isinstance(args.kwargs, dict):
        p.error('--kwargs must be a JSON object')
    if args.perturb is None:
        args.perturb = not args.pretrained
    if args.input_size is not None:
        if len(args.input_size) == 1:
            args.input_size = args.input_size * 2
        if len(args.input_size) != 2:
            p.error('--input-size takes H or H W')
    stems = [im.stem for im in args.image]
    if len(set(stems)) != len(stems):
        p.error(f'image stems must be unique: {stems}')
    return args


# --------------------------------------------------------------------------------------------
# perturbation

def perturb_(model, seed):
    """Add seeded noise to every floating point tensor of the state_dict, in place."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    rules = {}
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            parent, _, leaf = name.rpartition('.')
            mod = model.get_submodule(parent) if parent else model
            cls = type(mod).__name__
            noise = torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype)
            if 'Norm' in cls and leaf in ('weight', 'bias', 'running_mean', 'running_var'):
                if leaf == 'running_var':
                    t.mul_(torch.exp(0.1 * noise))
                    rule = 'norm running_var *= exp(0.1*randn)'
                else:
                    s = {'weight': 0.1, 'bias': 0.05, 'running_mean': 0.1}[leaf]
                    t.add_(s * noise)
                    rule = f'norm {leaf} += {s}*randn'
            elif leaf == 'gamma' or 'LayerScale' in cls:
                t.add_(0.3 * noise)
                rule = 'layer scale += 0.3*randn'
            elif leaf == 'weight' and t.ndim >= 2:
                fan_in = math.prod(t.shape[1:])
                s = max(0.02, 1.0 / math.sqrt(fan_in))
                t.add_(s * noise)
                rule = 'weight += max(0.02, 1/sqrt(fan_in))*randn'
            elif leaf == 'bias':
                t.add_(0.02 * noise)
                rule = 'bias += 0.02*randn'
            else:
                t.add_(0.1 * noise)
                rule = 'other += 0.1*randn'
            rules.setdefault(rule, []).append(name)
    return {k: len(v) for k, v in rules.items()}


# --------------------------------------------------------------------------------------------
# block hooks

def model_family(model):
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.convnext import ConvNeXt
    from timm.models.swin_transformer import SwinTransformer
    if isinstance(model, VisionTransformer):
        return 'vit'
    if isinstance(model, ConvNeXt):
        return 'convnext'
    if isinstance(model, SwinTransformer):
        return 'swin'
    return None


def block_points(model, family):
    """[(name, module, kind)] in execution order; kind 'pre' records the module's input."""
    import torch.nn as nn
    pts = []
    if family == 'vit':
        pts.append(('patch_embed', model.blocks[0], 'pre'))
        for i, blk in enumerate(model.blocks):
            pts.append((f'blocks.{i}', blk, 'out'))
    elif family == 'convnext':
        pts.append(('stem', model.stem, 'out'))
        for s, stage in enumerate(model.stages):
            if not isinstance(stage.downsample, nn.Identity):
                pts.append((f'stages.{s}.downsample', stage.downsample, 'out'))
            for b, blk in enumerate(stage.blocks):
                pts.append((f'stages.{s}.blocks.{b}', blk, 'out'))
    elif family == 'swin':
        pts.append(('patch_embed', model.patch_embed, 'out'))
        for s, layer in enumerate(model.layers):
            if not isinstance(layer.downsample, nn.Identity):
                pts.append((f'layers.{s}.downsample', layer.downsample, 'out'))
            for b, blk in enumerate(layer.blocks):
                pts.append((f'layers.{s}.blocks.{b}', blk, 'out'))
    else:
        raise SystemExit(f'--blocks: unsupported model class {type(model).__name__}')
    return pts


class Recorder:
    def __init__(self, points):
        self.records = []
        self.handles = []
        for name, mod, kind in points:
            if kind == 'pre':
                h = mod.register_forward_pre_hook(self._pre(name))
            else:
                h = mod.register_forward_hook(self._out(name))
            self.handles.append(h)

    def _pre(self, name):
        def hook(_mod, args):
            self.records.append((name, args[0].detach().float().cpu().numpy().copy()))
        return hook

    def _out(self, name):
        def hook(_mod, _args, out):
            self.records.append((name, out.detach().float().cpu().numpy().copy()))
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------------------------

def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def jsonable(v):
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    return v


def add_features(out, num_threads):
    """Writes reference/<stem>.features.npy for an existing export, touching nothing else."""
    import numpy as np
    import torch
    import timm
    import safetensors.torch

    torch.set_num_threads(num_threads)
    config = json.loads((out / 'config.json').read_text())
    model = timm.create_model(config['architecture'], pretrained=False, **config.get('model_args', {}))
    model.load_state_dict(safetensors.torch.load_file(str(out / 'model.safetensors')), strict=True)
    model.eval()
    for inp in sorted((out / 'reference').glob('*.input.npy')):
        stem = inp.name[:-len('.input.npy')]
        x = torch.from_numpy(np.load(inp))
        with torch.no_grad():
            logits = model(x).float().numpy()
            feats = model.forward_head(model.forward_features(x), pre_logits=True).float().numpy()
        want = np.load(out / 'reference' / f'{stem}.logits.npy')
        diff = float(np.abs(logits - want).max())
        # Another CPU's kernels may round differently; more than that means the wrong model.
        if diff > 1e-4:
            raise SystemExit(f'{stem}: logits differ from the reference by {diff}: not this export')
        np.save(out / 'reference' / f'{stem}.features.npy', feats.astype(np.float32))
        print(f'{stem}: features {list(feats.shape)}, logits reproduced within {diff:.2e}')


def main(argv=None):
    args = parse_args(argv)
    if args.add_features:
        add_features(args.out_dir, args.num_threads)
        return

    import numpy as np
    import torch
    import timm
    import timm.data
    import safetensors
    import safetensors.torch
    import PIL
    from PIL import Image
    from timm.models import _hub

    torch.set_num_threads(args.num_threads)

    out = args.out_dir
    ref = out / 'reference'
    ref.mkdir(parents=True, exist_ok=True)

    # ---- model
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=args.pretrained, **args.kwargs)
    model.eval()
    perturb_counts = perturb_(model, args.seed) if args.perturb else None

    # ---- data config: the one timm's save_config_for_hf writes (current input size, not the
    # source checkpoint's); fall back to the legacy resolver on older timm.
    data_config_arg = {}
    if args.input_size is not None:
        in_chans = getattr(model, 'in_chans', 3)
        data_config_arg['input_size'] = (in_chans, *args.input_size)
    try:
        from timm.data.model_config import resolve_input_data_config
        data_cfg = resolve_input_data_config(model, args=dict(data_config_arg))
    except ImportError:
        data_cfg = timm.data.resolve_data_config(dict(data_config_arg), model=model)
    transform = timm.data.create_transform(**data_cfg)

    # ---- weights + config.json, by timm's own writers
    model_args = {k: v for k, v in args.kwargs.items() if not k.startswith('pretrained_cfg')}
    save_sig = inspect.signature(_hub.save_for_hf).parameters
    save_kwargs = dict(model_args=model_args or None, safe_serialization=True)
    if 'data_config' in save_sig:
        save_kwargs['data_config'] = data_config_arg or None
    elif data_config_arg:
        raise SystemExit('this timm version has no data_config in save_for_hf; use '
                         'pretrained_cfg_overlay in --kwargs for the input size instead')
    # contiguous tensors (safetensors refuses others); all timm params are already
    for t in model.state_dict().values():
        assert t.is_contiguous()
    _hub.save_for_hf(model, str(out), **save_kwargs)
    # safetensors creates the file 0600; give it the usual permissions (umask applies)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / 'model.safetensors', 0o666 & ~umask)

    config = json.loads((out / 'config.json').read_text())
    cfg_data = timm.data.resolve_data_config({}, pretrained_cfg=config['pretrained_cfg'])
    for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'):
        if jsonable(cfg_data[k]) != jsonable(data_cfg[k]):
            raise SystemExit(f'config.json pretrained_cfg {k}={cfg_data[k]} disagrees with the '
                             f'transform used ({data_cfg[k]})')

    # ---- references
    family = model_family(model)
    points = block_points(model, family) if args.blocks else None
    images_meta = []
    block_index = None
    inputs = {}
    logits_all = {}
    for img_path in args.image:
        stem = img_path.stem
        img = Image.open(img_path)
        orig_mode, orig_size = img.mode, img.size
        img = img.convert('RGB')
        x = transform(img).unsqueeze(0).float().contiguous()
        assert tuple(x.shape[1:]) == tuple(data_cfg['input_size']), (x.shape, data_cfg['input_size'])
        rec = Recorder(points) if points else None
        with torch.no_grad():
            logits = model(x).float()
        if rec:
            rec.remove()
        # After the hooks are gone, so the block records hold the classifying forward only.
        with torch.no_grad():
            feats = model.forward_head(model.forward_features(x), pre_logits=True).float()
        x_np = x.numpy().astype(np.float32)
        l_np = logits.numpy().astype(np.float32)
        np.save(ref / f'{stem}.input.npy', x_np)
        np.save(ref / f'{stem}.logits.npy', l_np)
        np.save(ref / f'{stem}.features.npy', feats.numpy().astype(np.float32))
        inputs[stem] = x
        logits_all[stem] = l_np
        if rec:
            records = rec.records + [('head', l_np.copy())]
            names = [n for n, _ in records]
            expected = [n for n, _, _ in points] + ['head']
            if names != expected:
                raise SystemExit(f'hook order {names} != expected {expected}')
            width = 2 if len(records) <= 100 else 3
            bdir = ref / f'{stem}.blocks'
            bdir.mkdir(exist_ok=True)
            for stale in bdir.glob('*.npy'):
                stale.unlink()
            files = []
            for i, (n, a) in enumerate(records):
                fn = f'{i:0{width}d}_{n}.npy'
                np.save(bdir / fn, a.astype(np.float32))
                files.append(fn)
            idx = dict(family=family, blocks=names, files=files, shapes=[list(a.shape) for _, a in records])
            if block_index is not None and block_index != idx:
                raise SystemExit('block structure differs between images')
            block_index = idx
        top = np.argsort(-l_np[0])[:5]
        images_meta.append(dict(
            path=str(img_path), stem=stem, sha256=sha256(img_path), mode=orig_mode,
            size=list(orig_size), input_shape=list(x_np.shape), features_shape=list(feats.shape),
            logits=dict(min=float(l_np.min()), max=float(l_np.max()), mean=float(l_np.mean()),
                        std=float(l_np.std()), top5=[int(i) for i in top],
                        top5_values=[float(l_np[0, i]) for i in top]),
        ))
    if block_index is not None:
        (ref / 'blocks.json').write_text(json.dumps(block_index, indent=2) + '\n')

    # ---- timing
    forward_ms = None
    if args.time > 0:
        x = next(iter(inputs.values())) if inputs else torch.randn(1, *data_cfg['input_size'])
        with torch.no_grad():
            model(x)  # warmup
            times = []
            for _ in range(args.time):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000.0)
        forward_ms = dict(median=statistics.median(times), all=times, runs=args.time, warmup=1,
                          num_threads=torch.get_num_threads(), input_shape=list(x.shape),
                          cpu=platform.processor() or platform.machine())

    # ---- verify: rebuild from config.json, strict load, exact logits
    verified = None
    if args.verify:
        fresh = timm.create_model(config['architecture'], pretrained=False, **config.get('model_args', {}))
        fresh.eval()
        sd = safetensors.torch.load_file(str(out / 'model.safetensors'))
        fresh.load_state_dict(sd, strict=True)
        with torch.no_grad():
            for stem, x in inputs.items():
                l2 = fresh(x).float().numpy()
                if not np.array_equal(l2, logits_all[stem]):
                    raise SystemExit(f'verify: logits for {stem} differ after reload '
                                     f'(max abs diff {np.abs(l2 - logits_all[stem]).max()})')
        verified = dict(rebuilt_from='config.json model_args', strict=True,
                        logits_bitwise_equal=True, tensors=len(sd))
        del fresh, sd

    sd = model.state_dict()
    meta = dict(
        model=args.model,
        architecture=config['architecture'],
        family=family,
        kwargs=args.kwargs,
        seed=args.seed,
        pretrained=args.pretrained,
        perturb=args.perturb,
        perturb_generator_seed=(args.seed + 1) if args.perturb else None,
        perturb_rules=perturb_counts,
        num_tensors=len(sd),
        num_params=int(sum(t.numel() for t in sd.values())),
        transform_config=jsonable(data_cfg),
        transform=str(transform),
        input_size_arg=args.input_size,
        images=images_meta,
        blocks=block_index['blocks'] if block_index else None,
        versions=dict(timm=timm.__version__, torch=torch.__version__,
                      safetensors=safetensors.__version__, numpy=np.__version__,
                      pillow=PIL.__version__, python=platform.python_version()),
        num_threads=args.num_threads,
        command=['python', 'tools/export_timm.py'] + (sys.argv[1:] if argv is None else list(argv)),
        verify=verified,
    )
    if forward_ms is not None:
        meta['timm_forward_ms'] = forward_ms
    (ref / 'meta.json').write_text(json.dumps(jsonable(meta), indent=2) + '\n')

    # ---- summary
    print(f'{args.model} -> {out}')
    print(f'  tensors {len(sd)}, params {meta["num_params"]}, '
          f'model.safetensors {os.path.getsize(out / "model.safetensors")} bytes')
    print(f'  transform {jsonable(data_cfg)}')
    for im in images_meta:
        lg = im['logits']
        print(f'  {im["stem"]}: input {im["input_shape"]} logits min {lg["min"]:.4f} max {lg["max"]:.4f} '
              f'std {lg["std"]:.4f} top5 {lg["top5"]}')
    if block_index:
        print(f'  blocks ({len(block_index["blocks"])}): ' +
              ', '.join(f'{n}{tuple(s)}' for n, s in zip(block_index['blocks'], block_index['shapes'])))
    if forward_ms:
        print(f'  timm forward: median {forward_ms["median"]:.1f} ms over {args.time} '
              f'({", ".join(f"{t:.1f}" for t in forward_ms["all"])}) at {forward_ms["num_threads"]} threads')
    if verified:
        print('  verify: reloaded strictly from config.json + model.safetensors, logits bitwise equal')


if __name__ == '__main__':
    main()
