"""timm -> ONNX, once per model: torch.onnx.export(dynamo=False), dynamic batch, the weights in one
external data file, checked with ONNX Runtime against the reference logits. ORT then runs the very
weights timm and wstream load. <onnx-dir>/<model>/export.json records the source file it came from,
so a model is exported again only when its model.safetensors changes."""

import json
import os
import time
from pathlib import Path

from . import OPSET, log


def export_stamp(src):
    st = os.stat(src)
    return dict(source=str(src), source_bytes=st.st_size, source_mtime_ns=st.st_mtime_ns, opset=OPSET)


def up_to_date(out, want):
    stamp_path = out / 'export.json'
    if not (stamp_path.exists() and (out / 'model.onnx').exists() and (out / 'model.onnx.data').exists()):
        return False
    have = json.loads(stamp_path.read_text())
    return all(have.get(k) == v for k, v in want.items())


def cmd_export(args):
    for m in args.models:
        src = Path(args.fullsize) / m / 'model.safetensors'
        out = Path(args.onnx_dir) / m
        want = export_stamp(src)
        if up_to_date(out, want):
            log(f'onnx: {out} is up to date')
            continue
        log(f'onnx: exporting {m} to {out} (takes a minute or two)')
        export_one(m, src, out, want, args.threads)


def export_one(m, src, out, want, threads):
    import warnings
    import numpy as np
    import torch
    import timm
    import safetensors.torch
    import onnx
    import onnxruntime as ort
    from .preprocess import load_cfg
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_cfg(src.parent)
    net = timm.create_model(cfg['architecture'], pretrained=False, **cfg.get('model_args', {}))
    net.load_state_dict(safetensors.torch.load_file(str(src)), strict=True)
    net.eval()
    x = torch.from_numpy(np.load(src.parent / 'reference' / 'cat.input.npy'))
    tmp = out / 'embedded.onnx.tmp'
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=['input'], output_names=['logits'],
                          dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}},
                          do_constant_folding=True)
    warns = sorted({f'{w.category.__name__}: {str(w.message).splitlines()[0].split(". ")[0][:120]}'
                    for w in caught})
    del net
    # models under 2 GB come out with embedded weights: move them to one external data file
    proto = onnx.load(str(tmp))
    for f in ('model.onnx', 'model.onnx.data'):
        (out / f).unlink(missing_ok=True)
    onnx.save_model(proto, str(out / 'model.onnx'), save_as_external_data=True,
                    all_tensors_to_one_file=True, location='model.onnx.data', size_threshold=1024)
    del proto
    tmp.unlink()
    os.chmod(out / 'model.onnx.data', 0o644)
    export_s = time.perf_counter() - t0
    # check with ORT: reference logits at batch 1, and batch 2 (dynamic batch) consistent
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(out / 'model.onnx'), so, providers=['CPUExecutionProvider'])
    ref = np.load(src.parent / 'reference' / 'cat.logits.npy')
    xn = x.numpy()
    y1 = sess.run(None, {'input': xn})[0]
    y2 = sess.run(None, {'input': np.concatenate([xn, xn])})[0]
    d1, d2 = float(np.abs(y1 - ref).max()), float(np.abs(y2 - np.concatenate([ref, ref])).max())
    log(f'onnx: {m}: exported in {export_s:.0f} s, max |ORT - timm reference| logits {d1:.2e} '
        f'(batch 1), {d2:.2e} (batch 2)')
    if d1 > 1e-2 or d2 > 1e-2:
        raise SystemExit(f'onnx export of {m} does not reproduce the reference logits ({d1}, {d2})')
    stamp = dict(want, torch=torch.__version__, timm=timm.__version__, onnx=onnx.__version__,
                 dynamo=False, dynamic_batch=True, external_data='model.onnx.data',
                 export_seconds=round(export_s, 1), warnings=warns,
                 ort_check=dict(onnxruntime=ort.__version__, max_abs_diff_batch1=d1,
                                max_abs_diff_batch2=d2))
    (out / 'export.json').write_text(json.dumps(stamp, indent=2) + '\n')
