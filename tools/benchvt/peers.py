"""The peer rows (issue #19): wstream on converted copies of the weights (bf16, int8, packed layout, each
made once with `wstream convert` and cached under target/bench_vs_torch/weights/), ONNX Runtime's own int8
(`onnxruntime.quantization.quantize_dynamic` of the same exports, cached under
target/bench_vs_torch/ort-int8/), and candle-transformers' ConvNeXt (tools/candle_convnext.rs) as the Rust
peer. Each row's logits are checked against timm f32's from the same run.

A wstream variant is `NAME:CONVERT ARGS:CLASSIFY ARGS` (e.g. `int8-wo:--dtype int8:--int8-activations off`):
a `convert` or `classify` that refuses its arguments (a flag another branch adds) skips the row with a note
instead of failing the run."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import log

DEFAULT_VARIANTS = ['bf16:--dtype bf16:', 'int8:--dtype int8:', 'int8-wo:--dtype int8:--int8-activations off',
                    'packed:--layout packed:']
DEFAULT_PEERS = 'bf16,int8,int8-wo,packed,ort-int8,candle'


class Variant:
    """wstream on converted weights: `engine` is the row's name in the results (`wstream[bf16]`)."""

    def __init__(self, spec):
        parts = spec.split(':')
        if len(parts) != 3 or not parts[0]:
            raise SystemExit(f'bench_vs_torch: variant `{spec}` is not NAME:CONVERT ARGS:CLASSIFY ARGS')
        self.name = parts[0]
        self.convert = shlex.split(parts[1])
        self.classify = shlex.split(parts[2])
        self.engine = f'wstream[{self.name}]'
        self.dir_name = 'f32' if not self.convert else '_'.join(a.lstrip('-') for a in self.convert)
        self.skipped = None  # why the row is not measured, once known


def variants(specs, peers):
    """The variants named in `peers`, from `specs` (later specs of a name override earlier ones)."""
    by_name = {}
    for s in specs:
        v = Variant(s)
        by_name[v.name] = v
    unknown = [p for p in peers if p not in by_name and p not in ('ort-int8', 'candle')]
    if unknown:
        raise SystemExit(f'bench_vs_torch: unknown peer row(s) {", ".join(unknown)}; known: '
                         f'{", ".join(list(by_name) + ["ort-int8", "candle"])} (or add one with --variant)')
    return [by_name[p] for p in peers if p in by_name]


def file_stamp(path):
    st = os.stat(path)
    return dict(path=str(path), bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def convert_cached(wstream, v, src_dir, cache_root):
    """`wstream convert SRC OUT ARGS`, once: OUT is reused while its stamp (source file, binary, arguments)
    holds. Returns OUT, or None with `v.skipped` set when convert refuses the arguments."""
    out = cache_root / v.dir_name / src_dir.name
    want = dict(source=file_stamp(src_dir / 'model.safetensors'), wstream=file_stamp(wstream), args=v.convert)
    stamp = out / 'bench_stamp.json'
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return out
    if out.exists():
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(wstream), 'convert', str(src_dir), str(out)] + v.convert
    log(f'peers: {shlex.join(cmd)}')
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        v.skipped = f'`wstream convert {" ".join(v.convert)}` refused: {last_line(r.stderr)}'
        log(f'peers: skipping {v.engine}: {v.skipped}')
        return None
    if not (out / 'config.json').exists() and (src_dir / 'config.json').exists():
        (out / 'config.json').write_text((src_dir / 'config.json').read_text())
    stamp.write_text(json.dumps(want, indent=1) + '\n')
    return out


def last_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:200] if lines else '(no message)'


def quantize_cached(onnx_dir, out_root, model):
    """ORT's own dynamic int8 (u8 activations, s8 weights, MatMul only: the convs stay f32, as ORT's
    transformer recipes do) of the f32 export, once per export. Returns the folder with model.onnx."""
    import onnxruntime as ort
    src = Path(onnx_dir) / model / 'model.onnx'
    out = out_root / model
    want = dict(source=file_stamp(Path(onnx_dir) / model / 'model.onnx.data'), onnxruntime=ort.__version__,
                op_types=['MatMul'], weight_type='QInt8', per_channel=True)
    stamp = out / 'quantize.json'
    if stamp.exists() and json.loads(stamp.read_text()) == want and (out / 'model.onnx').exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    log(f'peers: quantize_dynamic {src} -> {out} (a minute or two)')
    # In a child process: quantize_dynamic holds the whole model (~4 GB at ViT-L), and this process's peak RSS
    # would become the ru_maxrss of every child it spawns later (the kernel hands it on at exec).
    code = ('import sys\n'
            'from onnxruntime.quantization import QuantType, quantize_dynamic\n'
            "quantize_dynamic(sys.argv[1], sys.argv[2], op_types_to_quantize=['MatMul'],\n"
            '                 weight_type=QuantType.QInt8, per_channel=True)\n')
    r = subprocess.run([sys.executable, '-c', code, str(src), str(out / 'model.onnx')],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f'quantize_dynamic of {src} failed: {last_line(r.stderr)}')
    stamp.write_text(json.dumps(want, indent=1) + '\n')
    return out


def logit_check(got, ref):
    """A row's logits against timm f32's: cosine, max |diff|, whether top-1 agrees, both top-1 margins."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)

    def margin(v):
        top2 = np.sort(v)[-2:]
        return float(top2[1] - top2[0])
    return dict(cosine=float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref))),
                max_abs=float(np.abs(got - ref).max()), top1_agree=int(got.argmax()) == int(ref.argmax()),
                margin_ref=margin(ref), margin=margin(got))

