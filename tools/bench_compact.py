#!/usr/bin/env python3
"""Compact weights (issue #9) on the three Large models: accuracy, memory, page-ins and cold start.

    tools/bench_compact.py [--fullsize /work/fullsize] [--work target/compact] [--rounds 3]

Converts each timm export in --fullsize (model.safetensors + config.json, see tools/export_timm.py) with
`wstream convert` to f16, bf16 and int8 in the exec layout, int8 in timm's order, and f32 in the exec
layout (kept in --work, reused while the source is unchanged), then measures with target/release/wstream
(build it first; 2 threads):
  - accuracy: max abs logit difference from the f32 model and top-1 agreement, on the photos in tests/data;
  - peak RSS of the int8 ensemble (wait4 ru_maxrss) and whether it completes under `tools/membox 256M`
    with the weight files dropped from the page cache first (logits equal to the unconstrained run);
  - bytes read from storage and major faults on a cold run (`wstream profile --cold`), f32 vs int8;
  - start to answer, cold (files dropped first), timm's order vs the exec layout, f32 and int8, also with
    reads throttled to --slow-bps (cgroup v1 blkio, an edge box's eMMC), and the warm per-image ensemble
    latency per dtype; medians over --rounds rounds taking turns.
Writes the section between the bench_compact markers of BENCHMARKS.md. Standard library only.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchvt import MODELS, SHORT  # noqa: E402
from benchvt.report import write_section  # noqa: E402
from benchvt.system import drop_cache, machine_info, median, run_timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WSTREAM = ROOT / 'target/release/wstream'
MARKS = ('<!-- bench_compact:begin -->', '<!-- bench_compact:end -->')
# (dtype, layout) variants written by `wstream convert`; f32/source is the timm export itself.
VARIANTS = [('f32', 'exec'), ('f16', 'exec'), ('bf16', 'exec'), ('int8', 'exec'), ('int8', 'source')]


def log(*a):
    print('[bench_compact]', *a, file=sys.stderr, flush=True)


def wstream(*args, **kw):
    out = run_timed([str(WSTREAM), *map(str, args)], **kw)
    if out['status'] != 0 and not kw.get('timeout'):
        raise SystemExit(f'wstream {" ".join(map(str, args))} failed:\n{out["stderr"][-2000:]}')
    return out


def variant_dir(work, model, dtype, layout):
    return work / f'{model}-{dtype}-{layout}'


def convert_all(src, work):
    """Converts what is missing or older than its source; returns {(dtype, layout): [model dirs]}."""
    dirs = {('f32', 'source'): [src / m for m in MODELS]}
    for dtype, layout in VARIANTS:
        dirs[(dtype, layout)] = []
        for m in MODELS:
            out = variant_dir(work, m, dtype, layout)
            stale = out.exists() and (out / 'model.safetensors').stat().st_mtime < \
                (src / m / 'model.safetensors').stat().st_mtime
            if stale:
                subprocess.run(['rm', '-rf', str(out)], check=True)
            if not out.exists():
                log(f'convert {m} --dtype {dtype} --layout {layout}')
                wstream('convert', src / m, out, '--dtype', dtype, '--layout', layout)
            dirs[(dtype, layout)].append(out)
    return dirs


def weight_files(model_dirs):
    return [d / 'model.safetensors' for d in model_dirs]


def model_args(model_dirs):
    return [a for d in model_dirs for a in ('--model', d)]


def logits(model_dir, photos):
    out = wstream('classify', '--threads', 2, '--json', '--logits', '--model', model_dir, *photos)
    return [json.loads(line)['models'][0]['logits'] for line in out['stdout'].splitlines()]


def argmax(v):
    return max(range(len(v)), key=v.__getitem__)


def top2_margin(v):
    a, b = sorted(v)[-2:]
    return b - a


def accuracy(dirs, photos):
    """{model: {dtype: (max abs diff, top-1 agreements, images)}} against the f32 model."""
    res = {}
    for i, m in enumerate(MODELS):
        ref = logits(dirs[('f32', 'source')][i], photos)
        res[m] = {}
        for dtype in ('f16', 'bf16', 'int8'):
            got = logits(dirs[(dtype, 'exec')][i], photos)
            diff = max(abs(a - b) for g, r in zip(got, ref) for a, b in zip(g, r))
            # Where top-1 changed, how close f32's own top two were (random weights give flat logits).
            margins = [top2_margin(r) for g, r in zip(got, ref) if argmax(g) != argmax(r)]
            res[m][dtype] = (diff, len(ref) - len(margins), len(ref), max(margins, default=None))
            log(f'{m} {dtype}: max abs logit diff {diff:.3g}, top-1 {len(ref) - len(margins)}/{len(ref)}')
    return res


def ensemble(model_dirs, photo, extra=()):
    return ['classify', '--threads', 2, '--json', '--logits', *extra, *model_args(model_dirs), photo]


def memory(dirs, photo):
    q = dirs[('int8', 'exec')]
    free = wstream(*ensemble(q, photo))
    drop_cache(weight_files(q))
    boxed = run_timed([str(ROOT / 'tools/membox'), '256M', str(WSTREAM), *map(str, ensemble(q, photo))])
    same = None
    if boxed['status'] == 0:
        same = json.loads(boxed['stdout'].splitlines()[0])['models'] == \
            json.loads(free['stdout'].splitlines()[0])['models']
    log(f'int8 ensemble peak RSS {free["maxrss_kib"] / 1024:.1f} MiB; membox 256M status {boxed["status"]}, '
        f'same logits {same}')
    return dict(peak_rss_mib=free['maxrss_kib'] / 1024, membox_status=boxed['status'], membox_same=same,
                membox_report=boxed['stderr'].strip().splitlines()[-1:] if boxed['stderr'] else [])


def page_ins(dirs, photo):
    res = {}
    for key in (('f32', 'source'), ('int8', 'exec')):
        out = wstream('profile', '--threads', 2, '--cold', '--format', 'json', *model_args(dirs[key]), photo)
        t = json.loads(out['stdout'])['totals']
        res[key] = dict(read=t['storage_read'], major=t['compute_faults']['major'] + t['prefetch_faults']['major'],
                        weight=t['weight_bytes'], scratch=t['peak_scratch'])
        log(f'{key}: cold read {t["storage_read"] / 2**20:.0f} MiB, {res[key]["major"]} major faults')
    return res


def throttled(cmd, files, bps):
    """cmd inside a cgroup-v1 blkio group reading the files' device at most `bps` bytes/s, or None."""
    root = Path('/sys/fs/cgroup/blkio')
    if not (root / 'blkio.throttle.read_bps_device').exists():
        return None
    dev = os.stat(files[0]).st_dev
    group = root / f'bench_compact-{os.getpid()}'
    group.mkdir(exist_ok=True)
    (group / 'blkio.throttle.read_bps_device').write_text(f'{os.major(dev)}:{os.minor(dev)} {bps}')
    return ['sh', '-c', f'echo $$ > {group}/cgroup.procs && exec "$@"', 'sh', *map(str, cmd)]


def slow_cold(dirs, photo, rounds, bps):
    """Start to answer with the files dropped and reads throttled to `bps`: an edge box's eMMC or SD card."""
    keys = [('f32', 'source'), ('f32', 'exec'), ('int8', 'source'), ('int8', 'exec')]
    res = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            files = weight_files(dirs[k])
            cmd = throttled([WSTREAM, *ensemble(dirs[k], photo)], files, bps)
            if cmd is None:
                return None
            drop_cache(files)
            out = run_timed(cmd)
            if out['status'] != 0:
                raise SystemExit(f'throttled run failed:\n{out["stderr"][-2000:]}')
            res[k].append(out['wall_s'])
            log(f'round {r + 1}: cold at {bps / 1e6:.0f} MB/s {k} {res[k][-1]:.2f} s')
    Path(f'/sys/fs/cgroup/blkio/bench_compact-{os.getpid()}').rmdir()
    return {k: median(v) for k, v in res.items()}


def timings(dirs, photo, rounds):
    """Cold start to answer per variant, and warm per-image latency (4 images after one) per dtype."""
    cold_keys = [('f32', 'source'), ('f32', 'exec'), ('int8', 'source'), ('int8', 'exec')]
    warm_keys = [('f32', 'source'), ('f16', 'exec'), ('bf16', 'exec'), ('int8', 'exec')]
    cold = {k: [] for k in cold_keys}
    warm = {k: [] for k in warm_keys}
    read = {k: [] for k in cold_keys}
    for r in range(rounds):
        for k in cold_keys[r % len(cold_keys):] + cold_keys[:r % len(cold_keys)]:
            files = weight_files(dirs[k])
            drop_cache(files)
            read[k].append(run_timed(['cat', *map(str, files)], discard_stdout=True)['wall_s'])
            drop_cache(files)
            cold[k].append(wstream(*ensemble(dirs[k], photo))['wall_s'])
            log(f'round {r + 1}: cold {k} {cold[k][-1]:.2f} s (read alone {read[k][-1]:.2f} s)')
        for k in warm_keys:
            out = wstream(*ensemble(dirs[k], photo)[:-1], *[photo] * 5)
            ms = [json.loads(line)['elapsed_ms'] for line in out['stdout'].splitlines()][1:]
            warm[k].append(median(ms))
            log(f'round {r + 1}: warm {k} {warm[k][-1]:.0f} ms/image')
    return ({k: median(v) for k, v in cold.items()}, {k: median(v) for k, v in read.items()},
            {k: median(v) for k, v in warm.items()})


def render(meta, acc, mem, pages, cold, read, warm, slow):
    mi = meta['machine']
    rows = [f'_Generated by `tools/bench_compact.py` on {meta["date"]}; rerun it to update this section._', '',
            f'- **Machine**: {mi["cpu"]} ({mi["simd"]}), {mi["cores"]} cores, {mi["mem_gib"]:.1f} GiB RAM, '
            f'kernel {mi["kernel"]}; load average {meta["load"]} at start',
            f'- **Weights**: the random perturbed timm exports in `{meta["src"]}` (timm order, f32) and their '
            f'`wstream convert` copies; photos: {", ".join(meta["photos"])}; wstream `{meta["commit"]}`, '
            f'2 threads', '',
            '| model | f16 max abs logit diff | bf16 | int8 | top-1 agreement f16 / bf16 / int8 |',
            '| --- | ---: | ---: | ---: | --- |']

    def agreement(a):
        flip = '' if a[3] is None else f' (f32 top-2 margin <= {a[3]:.3f} where it changed)'
        return f'{a[1]}/{a[2]}{flip}'
    for m in MODELS:
        a = acc[m]
        rows.append(f'| {SHORT[m]} | {a["f16"][0]:.2e} | {a["bf16"][0]:.2e} | {a["int8"][0]:.2e} | '
                    + ' / '.join(agreement(a[d]) for d in ('f16', 'bf16', 'int8')) + ' |')
    f32p, q8p = pages[('f32', 'source')], pages[('int8', 'exec')]
    boxed = 'completes' if mem['membox_status'] == 0 else f'fails (status {mem["membox_status"]})'
    rows += ['', '| figure | f32 | int8 | ratio |', '| --- | ---: | ---: | ---: |',
             f'| weight bytes mapped by the ensemble\'s blocks (MiB) | {f32p["weight"] / 2**20:,.0f} | '
             f'{q8p["weight"] / 2**20:,.0f} | {q8p["weight"] / f32p["weight"]:.2f}x |',
             f'| read from storage on a cold run (MiB, `profile --cold`) | {f32p["read"] / 2**20:,.0f} | '
             f'{q8p["read"] / 2**20:,.0f} | {q8p["read"] / max(f32p["read"], 1):.2f}x |',
             f'| major faults on that run | {f32p["major"]:,} | {q8p["major"]:,} | |',
             f'| widening scratch per block, at most (MiB) | {f32p["scratch"] / 2**20:.1f} | '
             f'{q8p["scratch"] / 2**20:.1f} | |',
             '', f'int8 ensemble (exec layout) peak RSS **{mem["peak_rss_mib"]:.1f} MiB** (ru_maxrss); under '
             f'`tools/membox 256M` with its files dropped from the page cache first it {boxed}'
             + ('' if mem['membox_same'] is None else
                f', logits {"identical to" if mem["membox_same"] else "DIFFERENT from"} the unconstrained run')
             + '.', '',
             '| ensemble of the 3, one photo | f32 timm order | f32 exec layout | int8 timm order | '
             'int8 exec layout |', '| --- | ---: | ---: | ---: | ---: |']
    keys = [('f32', 'source'), ('f32', 'exec'), ('int8', 'source'), ('int8', 'exec')]
    rows.append('| start to answer, cold (s) | ' + ' | '.join(f'{cold[k]:.2f}' for k in keys) + ' |')
    rows.append('| just reading the files cold (`cat`, s) | ' + ' | '.join(f'{read[k]:.2f}' for k in keys) + ' |')
    if slow:
        rows.append(f'| start to answer, cold, reads throttled to {meta["slow_bps"] / 1e6:.0f} MB/s (s) | '
                    + ' | '.join(f'{slow[k]:.2f}' for k in keys) + ' |')
    rows += ['', '| warm, per image (ms) | f32 | f16 | bf16 | int8 |', '| --- | ---: | ---: | ---: | ---: |',
             '| ensemble of the 3 | ' + ' | '.join(f'{warm[k]:,.0f}' for k in
                                                  [('f32', 'source'), ('f16', 'exec'), ('bf16', 'exec'),
                                                   ('int8', 'exec')]) + ' |',
             '', f'Medians of {meta["rounds"]} rounds, variants taking turns; warm: 4 images after a first one.']
    return '\n'.join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--fullsize', type=Path, default=Path('/work/fullsize'))
    ap.add_argument('--work', type=Path, default=ROOT / 'target/compact')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--output', type=Path, default=ROOT / 'BENCHMARKS.md')
    ap.add_argument('--slow-bps', type=int, default=200_000_000,
                    help='read bandwidth of the throttled cold runs (cgroup v1 blkio), bytes/s')
    a = ap.parse_args()
    if not WSTREAM.exists():
        raise SystemExit(f'{WSTREAM} is missing: run `cargo build --release` first')
    a.work.mkdir(parents=True, exist_ok=True)
    photos = sorted(str(p) for p in (ROOT / 'tests/data').iterdir() if p.suffix in ('.jpg', '.png'))
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                machine=machine_info(), load=open('/proc/loadavg').read().split()[0], src=a.fullsize,
                photos=[Path(p).name for p in photos], rounds=a.rounds, slow_bps=a.slow_bps,
                commit=subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                                      capture_output=True, text=True).stdout.strip())
    dirs = convert_all(a.fullsize, a.work)
    photo = photos[0]
    acc = accuracy(dirs, photos)
    mem = memory(dirs, photo)
    pages = page_ins(dirs, photo)
    cold, read, warm = timings(dirs, photo, a.rounds)
    slow = slow_cold(dirs, photo, a.rounds, a.slow_bps)
    body = render(meta, acc, mem, pages, cold, read, warm, slow)
    write_section(a.output, body, MARKS, 'Compact weights: f16, bf16, int8 and the exec layout')
    print(body)


if __name__ == '__main__':
    main()
