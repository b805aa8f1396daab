"""The driver: every measurement, the engines taking turns (order rotated each round), then the raw
results saved as JSON (target/bench_vs_torch/latest.json and a timestamped copy) for report.py to
render, now or later with `bench_vs_torch.py render`."""

import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import ENGINES, log
from . import peers as P
from .preprocess import decode, load_cfg, preprocess
from .report import render, write_section
from .system import (CLI, damon_pageout, drop_cache, huge_folio_fraction, machine_info, median,
                     parse_json_lines, resident_bytes, run_timed, set_kdamonds, warm_cache)

ROOT = CLI.parent.parent
OUT_DIR = ROOT / 'target' / 'bench_vs_torch'


class Worker:
    """A `worker` process (timm or ORT) with its models loaded, driven one JSON line at a time."""

    def __init__(self, engine, args, onnx_dir=None):
        cmd = [sys.executable, str(CLI), 'worker', '--engine', engine, '--fullsize', args.fullsize,
               '--onnx-dir', str(onnx_dir or args.onnx_dir), '--threads', str(args.threads),
               '--models', ','.join(args.models)]
        self.engine = engine
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self._read()

    def _read(self):
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit(f'{self.engine} worker died (exit {self.p.wait()})')
            if line.startswith('@@'):
                return json.loads(line[2:])

    def run(self, **req):
        self.p.stdin.write(json.dumps(dict(op='run', **req)) + '\n')
        self.p.stdin.flush()
        return self._read()

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write('{"op": "quit"}\n')
                self.p.stdin.flush()
                self.p.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


def rotated(seq, r):
    r %= len(seq)
    return list(seq[r:]) + list(seq[:r])


class Bench:
    """The measurement phases (warm, start, cold, membox); run() returns the raw results."""

    def __init__(self, args):
        self.a = args
        self.models = args.models
        self.fs = Path(args.fullsize)
        self.st_files = [self.fs / m / 'model.safetensors' for m in self.models]
        self.onnx_files = [Path(args.onnx_dir) / m / f for m in self.models for f in ('model.onnx', 'model.onnx.data')]
        self.weight_files = self.st_files + self.onnx_files
        # The ensemble's input: tests/data/cat.jpg decoded by PIL and saved losslessly, so that every
        # engine sees the same pixels (JPEG decoders differ by +-1 level; wstream's is not libjpeg-turbo).
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        self.jpeg = args.image
        self.image = str(OUT_DIR / (Path(args.image).stem + '.png'))
        decode(args.image).save(self.image)
        self.res = dict(samples={})
        self.t0 = time.perf_counter()
        self.setup_peers()

    # -- the peer rows: converted copies, ORT's int8, candle (tools/benchvt/peers.py)
    def setup_peers(self):
        a = self.a
        wanted = [p for p in (a.peers or '').split(',') if p]
        self.variants = P.variants(P.DEFAULT_VARIANTS + (a.variant or []), wanted)
        self.variant_dirs = {}
        notes = {}
        for v in self.variants:
            dirs = {}
            for m in self.models:
                d = P.convert_cached(Path(a.wstream), v, self.fs / m, OUT_DIR / 'weights')
                if d is None:
                    break
                dirs[m] = d
            if v.skipped is None:
                probe = subprocess.run(self.wstream_cmd([self.models[0]], [self.fs / self.models[0] / 'reference'
                                                                           / 'cat.input.npy'], variant=v,
                                                        dirs=dirs), capture_output=True, text=True)
                if probe.returncode != 0:
                    v.skipped = f'`wstream classify {" ".join(v.classify)}` refused: {P.last_line(probe.stderr)}'
            if v.skipped is not None:
                notes[v.engine] = v.skipped
                continue
            self.variant_dirs[v.engine] = dirs
            self.weight_files += [dirs[m] / f for m in self.models for f in os.listdir(dirs[m])
                                  if f.endswith('.safetensors')]
        self.variants = [v for v in self.variants if v.skipped is None]
        self.ort_int8_dir = None
        if 'ort-int8' in wanted:
            root = OUT_DIR / 'ort-int8'
            for m in self.models:
                P.quantize_cached(a.onnx_dir, root, m)
            self.ort_int8_dir = root
            self.weight_files += [root / m / 'model.onnx' for m in self.models]
        self.candle = None
        if 'candle' in wanted:
            if 'convnext_large' not in self.models:
                notes['candle'] = 'candle-transformers has ConvNeXt only, and convnext_large is not benchmarked'
            elif not a.candle or not os.access(a.candle, os.X_OK):
                notes['candle'] = f'no candle_convnext binary at {a.candle}'
            else:
                self.candle = a.candle
        self.res['peers'] = dict(variants={v.engine: dict(convert=v.convert, classify=v.classify)
                                           for v in self.variants},
                                 skipped=notes, ort_int8=self.ort_int8_dir is not None,
                                 candle=self.candle is not None)

    def peer_engines(self):
        return ([v.engine for v in self.variants] + (['ort-int8'] if self.ort_int8_dir else [])
                + (['candle'] if self.candle else []))

    def variant(self, engine):
        return next((v for v in self.variants if v.engine == engine), None)

    # -- commands
    def wstream_cmd(self, models, inputs, batch=1, logits=False, variant=None, dirs=None):
        # timm and ORT run at the train size (input_size, as the reference inputs were made); wstream would
        # take a config's test_input_size by default, as timm's inference.py does
        cmd = [self.a.wstream, 'classify', '--json', '--threads', str(self.a.threads), '--use-train-size']
        if logits:
            cmd.append('--logits')
        if batch > 1:
            cmd += ['--batch', str(batch)]
        if variant is not None:
            cmd += variant.classify
            dirs = dirs or self.variant_dirs[variant.engine]
        for m in models:
            cmd += ['--model', str(dirs[m] if dirs else self.fs / m)]
        return cmd + [str(i) for i in inputs]

    def once_cmd(self, engine):
        if engine == 'wstream':
            return self.wstream_cmd(self.models, [self.image])
        if self.variant(engine):
            return self.wstream_cmd(self.models, [self.image], variant=self.variant(engine))
        return [sys.executable, str(CLI), 'once', '--engine', engine, '--fullsize', str(self.fs),
                '--onnx-dir', self.a.onnx_dir, '--threads', str(self.a.threads),
                '--models', ','.join(self.models), '--image', self.image]

    def sample(self, key, engine, value):
        self.res['samples'].setdefault(key, {}).setdefault(engine, []).append(value)

    def wstream_run(self, cmd, env=None):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f'wstream failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr}')
        return parse_json_lines(r.stdout)

    def settle(self):
        time.sleep(self.a.settle)

    # -- phase A: warm latency (batch 1) and throughput (batch 8), engines taking turns
    def phase_warm(self):
        a = self.a
        log('warm: starting the timm and ORT workers (each loads the models)')
        self.res['compacted'] = warm_cache(self.weight_files)
        self.res['huge_folio_fraction'] = huge_folio_fraction(self.weight_files)
        workers = {}
        try:
            workers['timm'] = Worker('timm', a)
            workers['ort'] = Worker('ort', a)
            self.res['worker_load'] = {e: w.ready for e, w in workers.items()}
            # ORT's int8 sessions: a worker like ORT's, on the quantized exports; kept apart from
            # `workers`, which the throughput figure (f32 only) walks
            peer_workers = {}
            if self.ort_int8_dir:
                peer_workers['ort-int8'] = Worker('ort', a, onnx_dir=self.ort_int8_dir)
                self.res['worker_load']['ort-int8'] = peer_workers['ort-int8'].ready
            refs = {m: np.load(self.fs / m / 'reference' / 'cat.input.npy') for m in self.models}
            ref_logits = {m: np.load(self.fs / m / 'reference' / 'cat.logits.npy') for m in self.models}
            # sanity: the benchmark's PIL+numpy preprocessing == timm's transform (reference inputs)
            img = decode(self.image)
            self.res['preprocess_max_abs_diff'] = {
                m: float(np.abs(preprocess(img, load_cfg(self.fs / m))[None] - refs[m]).max()) for m in self.models}
            targets = [([m], 'npy') for m in self.models] + [(self.models, self.image)]
            last_logits = {}
            # warm-up once per worker and target (first call, allocations)
            for e, w in list(workers.items()) + list(peer_workers.items()):
                for models, src in targets:
                    w.run(models=models, source=src, batch=1, warmup=1, n=0)
            k = a.per_round
            for r in range(a.repeats):
                log(f'warm latency: round {r + 1}/{a.repeats}')
                for models, src in targets:
                    key = 'latency:' + (models[0] if src == 'npy' else 'ensemble')
                    for e in rotated(ENGINES + self.peer_engines(), r):
                        if e == 'candle' and (src != 'npy' or models != ['convnext_large']):  # ConvNeXt-L alone only
                            continue
                        self.settle()
                        if e == 'candle' or self.variant(e):
                            npy = self.fs / models[0] / 'reference' / 'cat.input.npy'
                            inputs = ([self.image] if src == self.image else [npy]) * (1 + k)
                            if e == 'candle':
                                cmd = [self.candle, str(self.fs / models[0])] + [str(i) for i in inputs]
                                lines = self.wstream_run(cmd, env=dict(os.environ, RAYON_NUM_THREADS=str(a.threads)))
                            else:
                                lines = self.wstream_run(self.wstream_cmd(models, inputs, logits=True,
                                                                          variant=self.variant(e)))
                            vals = [l['elapsed_ms'] for l in lines[1:]]
                            last_logits[(key, e)] = {m: x['logits'] for m, x in zip(models, lines[-1]['models'])}
                        elif e == 'ort-int8':
                            rep = peer_workers[e].run(models=models, source=src, batch=1, n=k, logits=True)
                            vals = rep['ms_per_image']
                            last_logits[(key, e)] = rep['logits']
                        elif e == 'wstream':
                            inputs = ([self.image] if src == self.image
                                      else [self.fs / models[0] / 'reference' / 'cat.input.npy']) * (1 + k)
                            lines = self.wstream_run(self.wstream_cmd(models, inputs, logits=True))
                            vals = [l['elapsed_ms'] for l in lines[1:]]
                            last_logits[(key, e)] = {x['name']: x['logits'] for x in lines[-1]['models']}
                        else:
                            rep = workers[e].run(models=models, source=src, batch=1, n=k, logits=True)
                            vals = rep['ms_per_image']
                            last_logits[(key, e)] = rep['logits']
                        for v in vals:
                            self.sample(key, e, v)
            # logits check, from this run
            chk = {}
            for models, src in targets:
                key = 'latency:' + (models[0] if src == 'npy' else 'ensemble')
                for m in models:
                    t = np.asarray(last_logits[(key, 'timm')][m])
                    chk.setdefault(key, {})[m] = dict(
                        wstream_vs_timm=float(np.abs(np.asarray(last_logits[(key, 'wstream')][m]) - t).max()),
                        ort_vs_timm=float(np.abs(np.asarray(last_logits[(key, 'ort')][m]) - t).max()),
                        timm_vs_reference=float(np.abs(t - ref_logits[m][0]).max()),
                        top1_agree=len({int(np.argmax(last_logits[(key, e)][m])) for e in ENGINES}) == 1,
                        logits_std=float(t.std()))
            self.res['logits_check'] = chk
            # every row, peers included, against timm f32
            self.res['peer_checks'] = {
                key: {m: {e: P.logit_check(last_logits[(key, e)][m], last_logits[(key, 'timm')][m])
                          for (k2, e) in last_logits if k2 == key and e != 'timm'} for m in models}
                for models, src in targets for key in ['latency:' + (models[0] if src == 'npy' else 'ensemble')]}
            # the same ensemble from the JPEG itself: wstream decodes it with its own JPEG decoder
            lines = self.wstream_run(self.wstream_cmd(self.models, [self.jpeg], logits=True))
            self.res['jpeg_decoder_diff'] = {
                x['name']: float(np.abs(np.asarray(x['logits'])
                                        - np.asarray(last_logits[('latency:ensemble', 'timm')][x['name']])).max())
                for x in lines[-1]['models']}
            # throughput, batch 8, ensemble: f32 engines, wstream's packed copies among them
            b = a.batch
            for e, w in workers.items():
                w.run(models=self.models, source=self.image, batch=b, warmup=1, n=0)
            packed = [v.engine for v in self.variants if 'packed' in v.name]
            for r in range(a.tp_repeats):
                log(f'throughput (batch {b}): round {r + 1}/{a.tp_repeats}')
                for e in rotated(ENGINES + packed, r):
                    self.settle()
                    if e == 'wstream' or e in packed:
                        # two batches, the second timed: the first warms the process up (heap, threads) as
                        # timm's and ORT's warm-up batch does theirs
                        lines = self.wstream_run(self.wstream_cmd(self.models, [self.image] * (2 * b), batch=b,
                                                                  variant=self.variant(e)))
                        v = lines[-1]['elapsed_ms']
                    else:
                        v = workers[e].run(models=self.models, source=self.image, batch=b, n=1)['ms_per_image'][0]
                    self.sample('throughput', e, 1000.0 / v)
        finally:
            for w in workers.values():
                w.close()
            for w in peer_workers.values():
                w.close()

    # -- phase B: process start to first answer, warm page cache; peak RSS from the same runs
    def phase_start(self):
        warm_cache(self.weight_files)
        for r in range(self.a.repeats):
            log(f'start to answer (warm): round {r + 1}/{self.a.repeats}')
            for e in rotated(ENGINES + [v.engine for v in self.variants], r):
                self.settle()
                out = run_timed(self.once_cmd(e))
                if out['status'] != 0:
                    raise SystemExit(f'{e}: start-to-answer run failed ({out["status"]}):\n{out["stderr"][-3000:]}')
                self.sample('start_warm', e, out['wall_s'])
                self.sample('peak_rss', e, out['maxrss_kib'] / 1024)
                if e in ('timm', 'ort'):
                    self.sample('start_inside', e, parse_json_lines(out['stdout'])[-1]['inside_s'])

    # -- phase C: cold start (weight files dropped first), and the time to just read them
    def phase_cold(self):
        n = self.a.cold_repeats
        for r in range(n):
            log(f'start to answer (cold): round {r + 1}/{n}')
            # the read bound is cheap and noisy (shared storage): two samples per round
            peers = [v.engine for v in self.variants]
            for e in rotated(['read'] + ENGINES + peers, r) + ['read'] + [f'read:{p}' for p in peers]:
                self.settle()
                drop_cache(self.weight_files)
                resid = resident_bytes(self.weight_files)
                if resid is not None:
                    self.sample('cold_residual_bytes', e, resid)
                if e == 'read':
                    out = run_timed(['cat'] + [str(p) for p in self.st_files], discard_stdout=True)
                elif e.startswith('read:'):
                    dirs = self.variant_dirs[e[len('read:'):]]
                    files = [str(dirs[m] / f) for m in self.models for f in sorted(os.listdir(dirs[m]))
                             if f.endswith('.safetensors')]
                    out = run_timed(['cat'] + files, discard_stdout=True)
                else:
                    out = run_timed(self.once_cmd(e))
                if out['status'] != 0:
                    raise SystemExit(f'{e}: cold run failed ({out["status"]}):\n{out["stderr"][-3000:]}')
                log(f'  cold {e}: {out["wall_s"]:.2f} s')
                self.sample('start_cold', e, out['wall_s'])

    # -- phase D: smallest memory cgroup limit that completes the ensemble on one image
    def phase_membox(self):
        a = self.a
        membox = str(CLI.parent / 'membox')
        probe = subprocess.run([membox, '64M', 'true'], capture_output=True, text=True)
        if probe.returncode != 0:
            self.res['membox'] = dict(skipped=f'membox unusable: {probe.stderr.strip()}')
            log('membox:', probe.stderr.strip(), '- skipping the bisection')
            return
        results = {}
        for e in ENGINES:
            cold = median(self.res['samples'].get('start_cold', {}).get(e, [])) or 60
            timeout = max(a.membox_min_timeout, a.membox_timeout_factor * cold)
            lo, hi = a.bisect_lo, a.bisect_hi          # MiB; lo assumed to fail, hi to pass
            tries = []

            def attempt(mib):
                self.settle()
                drop_cache(self.weight_files)
                cmd = [membox, f'{mib}M', 'timeout', '-s', 'KILL', str(int(timeout))] + self.once_cmd(e)
                out = run_timed(cmd)
                m = re.search(r'max usage (\d+) bytes.*oom-killed: (yes|no), exit status (-?\d+)', out['stderr'])
                ok = out['status'] == 0 and bool(parse_json_lines(out['stdout']))
                t = dict(limit_mib=mib, ok=ok, status=out['status'], wall_s=round(out['wall_s'], 2),
                         max_usage_mib=round(int(m.group(1)) / 1048576) if m else None,
                         oom_killed=(m.group(2) == 'yes') if m else None,
                         timed_out=out['status'] in (124, 137, -9) and out['wall_s'] >= timeout)
                tries.append(t)
                log(f'membox {e}: {mib} MiB -> {"ok" if ok else "fail"} ({t["wall_s"]} s, peak '
                    f'{t["max_usage_mib"]} MiB, oom {t["oom_killed"]})')
                return ok

            while hi / lo > 1 + a.bisect_precision:
                mid = int(round(math.sqrt(lo * hi)))
                if mid in (lo, hi):
                    break
                if attempt(mid):
                    hi = mid
                else:
                    lo = mid
            passed = [t for t in tries if t['ok']]
            failed = [t for t in tries if not t['ok']]
            if not passed:
                verdict = dict(min_limit_mib=None, text=f'> {hi} MiB (failed at every limit tried)')
            elif not failed:
                ok_lo = attempt(lo)
                verdict = dict(min_limit_mib=lo if ok_lo else hi,
                               text=f'<= {lo} MiB (lowest bound tried)' if ok_lo else None)
            else:
                verdict = dict(min_limit_mib=hi, text=None)
            best = min((t for t in tries if t['ok']), key=lambda t: t['limit_mib'], default=None)
            verdict.update(tries=tries, timeout_s=int(timeout), at_min=best,
                           largest_failure_mib=max((t['limit_mib'] for t in tries if not t['ok']), default=None))
            results[e] = verdict
        self.res['membox'] = results

    def run(self):
        a = self.a
        phases = a.only.split(',') if a.only else ['warm', 'start', 'cold'] + ([] if a.quick else ['membox'])
        self.res['started'] = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
        self.res['loadavg_start'] = os.getloadavg()
        # Proactive reclaim pages out the page cache wstream's weights live in between their turns (ORT's and
        # timm's anonymous copies, with no swap, stay): "warm" would not hold for wstream alone.
        reclaim = damon_pageout()
        paused = set_kdamonds([k for k, _ in reclaim], 'off') if a.damon == 'pause' else []
        self.res['damon'] = [dict(kdamond=k.name, scheme=d, paused=k in paused) for k, d in reclaim]
        if reclaim:
            log(f'DAMON pageout: {"paused" if paused else "left running"} ({reclaim[0][1]})')
        try:
            for ph in phases:
                t = time.perf_counter()
                getattr(self, 'phase_' + ph)()
                self.res.setdefault('phase_seconds', {})[ph] = round(time.perf_counter() - t)
        finally:
            set_kdamonds(paused, 'on')
        self.res['loadavg_end'] = os.getloadavg()
        self.res['total_seconds'] = round(time.perf_counter() - self.t0)
        return self.res


def cmd_bench(args):
    """Runs the phases, saves the raw results, renders them (into --out's marked section, and stdout)."""
    if args.tp_repeats is None:
        args.tp_repeats = max(2, (args.repeats + 1) // 2)
    if args.cold_repeats is None:
        args.cold_repeats = min(args.repeats, 3)
    b = Bench(args)
    res = b.run()
    import onnx
    import onnxruntime
    import torch
    import timm
    meta = dict(
        machine=machine_info(), command=args.command, models=args.models, threads=args.threads,
        repeats=args.repeats, tp_repeats=args.tp_repeats, cold_repeats=args.cold_repeats, batch=args.batch,
        bisect_precision=args.bisect_precision, fullsize=args.fullsize, onnx_dir=args.onnx_dir,
        weights_gib=sum(os.path.getsize(p) for p in b.st_files) / 2**30,
        storage=args.storage,
        env={k: v for k, v in os.environ.items()
             if re.match(r'(OPENBLAS|OMP_|MKL_|GOMP|KMP_|NVPL|RAYON|ORT_|TORCH_)', k)},
        peers=args.peers,
        versions=dict(wstream=args.wstream_version, rustc=args.rustc, torch=torch.__version__, timm=timm.__version__,
                      onnxruntime=onnxruntime.__version__, onnx=onnx.__version__, numpy=np.__version__,
                      python=platform.python_version(),
                      dirty_files=[f for f in args.dirty_files.split(',') if f]),
    )
    if not meta['env']:
        meta['env'] = {'OPENBLAS_CORETYPE': '(unset)'}
    exports = {}
    for m in args.models:
        p = Path(args.onnx_dir) / m / 'export.json'
        if p.exists():
            exports[m] = json.loads(p.read_text())
    res['onnx_exports'] = exports
    stamp = time.strftime('%Y%m%d-%H%M%S')
    full = dict(meta=meta, results=res)
    for name in (f'results-{stamp}.json', 'latest.json'):
        (OUT_DIR / name).write_text(json.dumps(full, indent=1, default=str) + '\n')
    body = render(res, meta)
    if args.out:
        write_section(args.out, body)
        log(f'wrote {args.out} (raw figures: {OUT_DIR}/results-{stamp}.json)')
    print(body)
