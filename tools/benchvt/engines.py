"""The timm and ONNX Runtime engines, and the two kinds of Python process the driver times: `worker`
(loads the models once, then runs timed loops on request, so the driver can interleave it with wstream
runs) and `once` (process start to first answer, timed from outside)."""

import json
import sys
import time
from pathlib import Path

import numpy as np

from .preprocess import decode, load_cfg, preprocess, softmax


class TimmEngine:
    """timm.create_model + the safetensors state dict, as a timm user loads these exports."""

    def __init__(self, fullsize, models, threads):
        import torch
        import timm
        import safetensors.torch
        torch.set_num_threads(threads)
        self.torch = torch
        self.models = {}
        self.cfgs = {}
        self.load_ms = {}
        for m in models:
            t0 = time.perf_counter()
            d = Path(fullsize) / m
            cfg = load_cfg(d)
            net = timm.create_model(cfg['architecture'], pretrained=False, **cfg.get('model_args', {}))
            sd = safetensors.torch.load_file(str(d / 'model.safetensors'))
            net.load_state_dict(sd, strict=True)
            del sd
            net.eval()
            self.models[m] = net
            self.cfgs[m] = cfg
            self.load_ms[m] = (time.perf_counter() - t0) * 1e3
        self.versions = dict(torch=torch.__version__, timm=timm.__version__)

    def forward(self, m, x):
        with self.torch.inference_mode():
            return self.models[m](self.torch.from_numpy(x)).float().numpy()


class OrtEngine:
    """One CPU InferenceSession per model, threads pinned like the other engines' (intra-op only)."""

    def __init__(self, fullsize, onnx_dir, models, threads):
        import onnxruntime as ort
        ort.set_default_logger_severity(3)
        self.sessions = {}
        self.cfgs = {}
        self.load_ms = {}
        for m in models:
            t0 = time.perf_counter()
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.sessions[m] = ort.InferenceSession(str(Path(onnx_dir) / m / 'model.onnx'), so,
                                                    providers=['CPUExecutionProvider'])
            self.cfgs[m] = load_cfg(Path(fullsize) / m)
            self.load_ms[m] = (time.perf_counter() - t0) * 1e3
        self.versions = dict(onnxruntime=ort.__version__)

    def forward(self, m, x):
        s = self.sessions[m]
        return s.run(None, {s.get_inputs()[0].name: x})[0]


def make_engine(args):
    if args.engine == 'timm':
        return TimmEngine(args.fullsize, args.models, args.threads)
    return OrtEngine(args.fullsize, args.onnx_dir, args.models, args.threads)


def classify_images(engine, models, paths):
    """Decode each image once, preprocess it per model, run each model on the batch, combine
    (mean of the softmax, wstream's default). Returns {model: logits [n, classes]}, ensemble probs."""
    imgs = [decode(p) for p in paths]
    out = {}
    for m in models:
        x = np.stack([preprocess(im, engine.cfgs[m]) for im in imgs])
        out[m] = engine.forward(m, x)
    probs = np.mean([np.stack([softmax(r) for r in out[m]]) for m in models], axis=0)
    return out, probs


def cmd_once(args, t_start):
    """Process start to first answer: imports, load, one image, the ensemble's answer on stdout.
    `t_start` is when the entry script started running Python code."""
    t_imp0 = time.perf_counter()
    if args.engine == 'timm':
        import torch  # noqa: F401  (part of what an answer costs)
        import timm  # noqa: F401
        import safetensors.torch  # noqa: F401
    else:
        import onnxruntime  # noqa: F401
    t_imp = time.perf_counter()
    engine = make_engine(args)
    t_load = time.perf_counter()
    logits, probs = classify_images(engine, args.models, [args.image])
    t_ans = time.perf_counter()
    top = [int(i) for i in (-probs[0]).argsort()[:5]]
    print(json.dumps(dict(
        engine=args.engine, input=str(args.image), ensemble_top5=top,
        ensemble_top1_prob=float(probs[0][top[0]]),
        top1={m: int(logits[m][0].argmax()) for m in args.models},
        # seconds since the entry script started running Python code (interpreter start-up not included)
        inside_s=dict(stdlib_and_numpy=t_imp0 - t_start, imports=t_imp - t_imp0,
                      load=t_load - t_imp, classify=t_ans - t_load),
        load_ms=engine.load_ms)), flush=True)


def cmd_worker(args):
    """Serves timed loops: a JSON request per stdin line, a reply per '@@'-prefixed stdout line."""
    engine = make_engine(args)
    ref_inputs = {m: np.load(Path(args.fullsize) / m / 'reference' / 'cat.input.npy') for m in args.models}

    def reply(obj):
        print('@@' + json.dumps(obj), flush=True)

    reply(dict(ready=True, load_ms=engine.load_ms, versions=engine.versions, vm_hwm_kib=vm_hwm_kib()))
    for line in sys.stdin:
        req = json.loads(line)
        if req.get('op') == 'quit':
            break
        models, batch = req['models'], req['batch']
        if req['source'] == 'npy':
            xs = {m: np.ascontiguousarray(np.concatenate([ref_inputs[m]] * batch)) for m in models}

            def step():
                return {m: engine.forward(m, xs[m]) for m in models}
        else:
            paths = [req['source']] * batch

            def step():
                return classify_images(engine, models, paths)[0]
        for _ in range(req.get('warmup', 0)):
            step()
        times = []
        out = None
        for _ in range(req['n']):
            t0 = time.perf_counter()
            out = step()
            times.append((time.perf_counter() - t0) * 1e3 / batch)
        res = dict(ms_per_image=times)
        if req.get('logits') and out is not None:
            res['logits'] = {m: out[m][0].tolist() for m in models}
        reply(res)


def vm_hwm_kib():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    except OSError:
        pass
    return None
