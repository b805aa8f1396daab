"""The markdown section of BENCHMARKS.md, from the raw results the driver saved. The figures are
formatted here; the sentences around them are the blocks of report.md, so the prose can be read and
edited as prose. Standard library only: `bench_vs_torch.py render` re-renders a saved JSON anywhere."""

import json
import re
import statistics
from pathlib import Path
from string import Template

from . import ENGINE_NAME, ENGINES, MODELS, OPSET, SHORT
from .system import median

MARK_BEGIN = '<!-- bench_vs_torch:begin -->'
MARK_END = '<!-- bench_vs_torch:end -->'


def load_prose(path=Path(__file__).with_name('report.md')):
    """{block name: Template} from the `@@ name` blocks of report.md."""
    parts = re.split(r'^@@ (\w+)\n', path.read_text(), flags=re.M)
    return {name: Template(text.rstrip('\n')) for name, text in zip(parts[1::2], parts[2::2])}


PROSE = load_prose()


def P(name, **fields):
    """Block `name` of report.md with its fields filled; a field left out is an error, not a blank."""
    return PROSE[name].substitute(fields)


def fmt(v, unit=''):
    if v is None:
        return 'n/a'
    if abs(v) >= 100:
        s = f'{v:,.0f}'
    elif abs(v) >= 10:
        s = f'{v:.1f}'
    else:
        s = f'{v:.2f}'
    return s + unit


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(r):
    return 'n/a' if r is None else f'{r:.2f}x'


def verdict(value, limit):
    """A lower-is-better target's verdict, with how far from the limit the value is."""
    if value <= limit:
        return P('met', margin=f'{(1 - value / limit) * 100:.0f}')
    return P('missed', over=f'{(value / limit - 1) * 100:.0f}', lower=f'{(1 - limit / value) * 100:.0f}')


def membox_complete(mb):
    return isinstance(mb, dict) and all(e in mb for e in ENGINES)


def render(res, meta):
    """The section body: header, results table, spread, breakdowns, sanity checks, issue #8 targets."""
    models = meta.get('models', MODELS)  # results saved before --models existed cover all three
    S = res['samples']
    med = {k: {e: (median(v) if not isinstance(v[0], dict) else None) for e, v in d.items()} for k, d in S.items()}

    def get(key, e):
        return med.get(key, {}).get(e)

    L = []
    add = L.append
    header(add, res, meta)
    add('')
    table(add, res, meta, models, get)
    add('')
    spread(add, S)
    add('')
    sanity(add, res, models)
    targets(add, res, models, get)
    footnotes(add, res)
    if res.get('peers') is not None:
        peers(add, res, meta, models, get)
    return '\n'.join(L)


def header(add, res, meta):
    mi, v = meta['machine'], meta['versions']
    add(P('machine', started=res['started'], cpu=mi['cpu'], simd=mi['simd'], cores=mi['cores'],
          mem_gib=f'{mi["mem_gib"]:.1f}', kernel=mi['kernel'], storage=meta.get('storage', '?'),
          load_start=f'{res["loadavg_start"][0]:.2f}', load_end=f'{res["loadavg_end"][0]:.2f}',
          wstream=v['wstream'], rustc=v['rustc'], torch=v['torch'], timm=v['timm'],
          onnxruntime=v['onnxruntime'], onnx=v['onnx'], numpy=v['numpy'], python=v['python']))
    if v.get('dirty_files'):
        add(P('dirty', files=', '.join(f'`{f}`' for f in v['dirty_files'])))
    for d in res.get('damon', []):
        add(P('damon', kdamond=d['kdamond'], scheme=d['scheme'],
              what='paused for the run' if d['paused'] else 'left running (`--damon keep`, or not writable)'))
    hf = res.get('huge_folio_fraction')
    add(P('setup', command=meta['command'], minutes=res['total_seconds'] // 60, seconds=res['total_seconds'] % 60,
          env=', '.join(f'{k}={val}' for k, val in meta['env'].items()) or 'none set',
          threads=meta['threads'], fullsize=meta['fullsize'], opset=OPSET, onnx_dir=meta['onnx_dir'],
          repeats=meta['repeats'], folios='' if hf is None else P('folios', percent=f'{hf * 100:.0f}'),
          compacted=P('compacted') if res.get('compacted') else ''))


def table(add, res, meta, models, get):
    def cells(key, unit=''):
        w, t, o = get(key, 'wstream'), get(key, 'timm'), get(key, 'ort')
        return (f'{fmt(w, unit)} | {fmt(t, unit)} | {fmt(o, unit)} | {fmt_ratio(ratio(w, t))} | '
                f'{fmt_ratio(ratio(w, o))}')

    add(P('table'))
    for m in models:
        add(P('row_alone', model=SHORT[m], cells=cells(f'latency:{m}', ' ms')))
    add(P('row_ensemble', n=len(models), cells=cells('latency:ensemble', ' ms')))
    add(P('row_throughput', batch=meta['batch'], tp_repeats=meta['tp_repeats'], cells=cells('throughput')))
    add(P('row_start_warm', cells=cells('start_warm', ' s')))
    add(P('row_peak_rss', cells=cells('peak_rss', ' MiB')))
    mb = res.get('membox')
    if membox_complete(mb):
        vals = {e: mb[e].get('min_limit_mib') for e in ENGINES}
        shown = {e: mb[e]['text'] or f'{vals[e]:,} MiB' for e in ENGINES}
        add(P('row_membox', precision=f'{meta["bisect_precision"] * 100:.0f}',
              cells=f'{shown["wstream"]} | {shown["timm"]} | {shown["ort"]} | '
                    f'{fmt_ratio(ratio(vals["wstream"], vals["timm"]))} | '
                    f'{fmt_ratio(ratio(vals["wstream"], vals["ort"]))}'))
    else:
        add(P('row_membox_missing', why=mb.get('skipped') if isinstance(mb, dict) else P('membox_quick')))
    add(P('row_start_cold', cold_repeats=meta['cold_repeats'], cells=cells('start_cold', ' s')))
    rd = get('start_cold', 'read')
    add(P('row_read', n=len(models), read=fmt(rd, ' s'), gib=f'{meta["weights_gib"]:.2f}',
          rate=fmt(meta['weights_gib'] * 1024 / rd if rd else None)))


def spread(add, S):
    def summary(xs):
        return f'{fmt(min(xs))} / {fmt(median(xs))} / {fmt(max(xs))} ({len(xs)})'

    add(P('spread'))
    for key, d in S.items():
        if key in ('start_inside', 'cold_residual_bytes'):
            continue
        cells = [summary(d[e]) if d.get(e) else '' for e in ENGINES]
        if key == 'start_cold' and d.get('read'):
            cells[0] += P('spread_read', spread=summary(d['read']))
        add(f'| `{key}` | ' + ' | '.join(cells) + ' |')
    add('')
    add('</details>')


def sanity(add, res, models):
    """Where the time goes inside the Python processes, and whether the engines agree."""
    ins = res['samples'].get('start_inside', {})
    if ins:
        parts = []
        for e in ('timm', 'ort'):
            if e in ins:
                b = {k: median([x[k] for x in ins[e]]) for k in ins[e][0]}
                parts.append(P('inside_' + e, engine=ENGINE_NAME[e],
                               imports=f'{b["stdlib_and_numpy"] + b["imports"]:.2f}',
                               load=f'{b["load"]:.2f}', classify=f'{b["classify"]:.2f}'))
        add(P('inside', engines='; '.join(parts)))
        add('')
    chk = res.get('logits_check')
    if not chk:
        return
    checks = [v for d in chk.values() for v in d.values()]
    worst_w = max(v['wstream_vs_timm'] for v in checks)
    pre = max(res.get('preprocess_max_abs_diff', {}).values() or [float('nan')])
    add(P('sanity', ort=f'{max(v["ort_vs_timm"] for v in checks):.1e}',
          std=f'{statistics.mean(v["logits_std"] for v in checks):.1f}',
          agree='agrees' if all(v['top1_agree'] for v in checks) else 'DISAGREES', preprocess=f'{pre:.1e}',
          alarm=P('sanity_alarm') if worst_w > 1e-2 else '',
          models='; '.join(P('sanity_model', model=SHORT[m], alone=f'{chk["latency:" + m][m]["wstream_vs_timm"]:.1e}',
                               ensemble=f'{chk["latency:ensemble"][m]["wstream_vs_timm"]:.1e}') for m in models)))
    add('')
    jd = res.get('jpeg_decoder_diff', {})
    if jd:
        add(P('jpeg', worst=f'{max(jd.values()):.1e}', models=', '.join(f'{SHORT[m]} {v:.1e}' for m, v in jd.items())))
        add('')


def targets(add, res, models, get):
    """Issue #8's targets, each with its verdict, and the notes the verdicts need."""
    add(P('targets'))

    def target(label, value, limit, shown):
        if value is None:
            add(P('target_unmeasured', label=label))
        else:
            add(P('target', label=label, shown=shown, verdict=verdict(value, limit)))

    ens_w = get('latency:ensemble', 'wstream')
    r = ratio(ens_w, get('latency:ensemble', 'timm'))
    target(P('t_ensemble_timm', limit=0.8), r, 0.8, fmt_ratio(r))
    r = ratio(ens_w, get('latency:ensemble', 'ort'))
    target(P('t_ensemble_ort', limit=1.0), r, 1.0, fmt_ratio(r))
    for m in models:
        r = ratio(get(f'latency:{m}', 'wstream'), get(f'latency:{m}', 'ort'))
        target(P('t_alone', model=SHORT[m], limit=1.1), r, 1.1, fmt_ratio(r))
    r = ratio(get('start_warm', 'wstream'), get('start_warm', 'ort'))
    target(P('t_start', limit=0.4), r, 0.4, fmt_ratio(r))
    cold, rd = get('start_cold', 'wstream'), get('start_cold', 'read')
    warm = ens_w / 1000 if ens_w is not None else None
    r = ratio(cold, max(rd, warm) if rd is not None and warm is not None else None)
    target(P('t_cold', limit=1.25), r, 1.25, P('t_cold_shown', cold=fmt(cold, ' s'), read=fmt(rd, ' s'),
                                                 warm=fmt(warm or None, ' s'), ratio=fmt_ratio(r)))
    cold_notes = []
    reads = res['samples'].get('start_cold', {}).get('read')
    if reads and cold is not None and warm is not None:
        r_fast = cold / max(min(reads), warm)
        if (r_fast <= 1.25) != (r <= 1.25):
            cold_notes.append(P('cold_borderline', low=fmt(min(reads)), high=fmt(max(reads)), n=len(reads),
                                ratio=fmt_ratio(r_fast), verdict='meets' if r_fast <= 1.25 else 'misses'))
        if rd is not None and cold < rd:
            cold_notes.append(P('cold_beat_read'))
    pr = get('peak_rss', 'wstream')
    target(P('t_rss', limit=256), pr, 256, fmt(pr, ' MiB'))
    mb = res.get('membox')
    if membox_complete(mb):
        w, t = mb['wstream'].get('min_limit_mib'), mb['timm'].get('min_limit_mib')
        target(P('t_membox', limit=512), w, 512, mb['wstream']['text'] or f'{w:,} MiB')
        if t is not None:
            add(P('t_membox_timm', timm=mb['timm']['text'] or f'{t:,} MiB',
                  verdict='yes' if t > 3072 else P('t_membox_timm_missed')))
    else:
        add(P('t_membox_unmeasured'))
    add('')
    add(P('cold_note', notes=' '.join(cold_notes)))
    if membox_complete(mb):
        membox_details(add, mb)


def membox_details(add, mb):
    """How long each engine took at its smallest limit, and every try of the bisection."""
    parts = [P('membox_engine', engine=ENGINE_NAME[e], limit=mb[e]['at_min']['limit_mib'],
               wall=f'{mb[e]["at_min"]["wall_s"]:.1f}', failed=mb[e]['largest_failure_mib'])
             for e in ENGINES if mb[e].get('at_min')]
    add('')
    add(P('membox_at_min', engines='; '.join(parts), **{e: mb[e]['timeout_s'] for e in ENGINES}))
    add('')
    add(P('membox_tries'))
    add('')

    def outcome(t):
        return 'ok' if t['ok'] else 'timeout' if t['timed_out'] else 'OOM' if t['oom_killed'] else 'fail'

    for e in ENGINES:
        tries = sorted(mb[e]['tries'], key=lambda t: t['limit_mib'])
        add(P('membox_engine_tries', engine=ENGINE_NAME[e],
              tries=', '.join(f'{t["limit_mib"]}: {outcome(t)} {t["wall_s"]:.1f} s' for t in tries)))
    add('')
    add('</details>')


def footnotes(add, res):
    """How the ONNX exports checked out, and how cold the cold runs really started."""
    exports = res.get('onnx_exports')
    if exports:
        warns = sorted({w.split('. ')[0][:120] for x in exports.values() for w in x.get('warnings', [])})
        add('')
        add(P('onnx_export', warnings='; '.join(warns) or 'none', models='; '.join(
            P('onnx_model', model=SHORT[m], diff=f'{x["ort_check"]["max_abs_diff_batch1"]:.1e}')
            for m, x in exports.items())))
    resid = res['samples'].get('cold_residual_bytes')
    if resid:
        add('')
        add(P('cold_residual', mib=f'{max(max(v) for v in resid.values()) / 2**20:.1f}'))


def write_section(path, body, marks=(MARK_BEGIN, MARK_END), heading='wstream vs timm vs ONNX Runtime'):
    """Replaces the text between `marks` in the markdown file `path`, or appends it under `heading`."""
    path = Path(path)
    begin, end = marks
    section = f'{begin}\n{body}\n{end}'
    txt = path.read_text() if path.exists() else '# Benchmarks\n'
    if begin in txt and end in txt:
        pre, rest = txt.split(begin, 1)
        _, post = rest.split(end, 1)
        txt = pre + section + post
    else:
        txt = txt.rstrip('\n') + f'\n\n## {heading}\n\n' + section + '\n'
    path.write_text(txt)


def cmd_render(args):
    full = json.loads(Path(args.results).read_text())
    body = render(full['results'], full['meta'])
    if args.out:
        write_section(args.out, body)
    print(body)


def peer_name(e):
    return {'wstream': 'wstream f32', 'ort': 'ONNX Runtime f32', 'ort-int8': 'ONNX Runtime int8 (quantize_dynamic)',
            'timm': 'timm f32', 'candle': 'candle-transformers'}.get(e, e)


def peers(add, res, meta, models, get):
    """Issue #19's rows: every engine and wstream variant per model and for the ensemble, with ratios to
    ORT f32 and ORT int8, each row's logits against timm f32, the variants' start, RSS and cold figures,
    and the issue's targets."""
    pr = res['peers']
    keys = [f'latency:{m}' for m in models] + ['latency:ensemble']
    engines = ['wstream'] + list(pr['variants']) + ['ort', 'ort-int8', 'timm', 'candle']
    engines = [e for e in engines if any(get(k, e) is not None for k in keys)]
    add('')
    def described(e, v):
        run = f' run with `{" ".join(v["classify"])}`' if v['classify'] else ''
        return f'`{e}` = `convert {" ".join(v["convert"])}`{run}'
    add(P('peers', n=len(models),
          variants=', '.join(described(e, v) for e, v in pr['variants'].items()) or 'none'))
    if pr['skipped']:
        add('')
        add(P('peers_skipped', notes='; '.join(f'{e}: {why}' for e, why in pr['skipped'].items())))
    add('')
    add('| row | ' + ' | '.join([SHORT[m] for m in models] + [f'ensemble of the {len(models)}']) + ' |')
    add('| --- |' + ' ---: |' * len(keys))

    def cell(k, e):
        v = get(k, e)
        if v is None:
            return ''
        return (f'{fmt(v, " ms")} ({fmt_ratio(ratio(v, get(k, "ort")))} / '
                f'{fmt_ratio(ratio(v, get(k, "ort-int8")))})')
    for e in engines:
        add(f'| {peer_name(e)} | ' + ' | '.join(cell(k, e) for k in keys) + ' |')
    chk = res.get('peer_checks', {})
    add('')
    add(P('peer_checks'))
    add('')
    add('| row | ' + ' | '.join(SHORT[m] for m in models) + ' |')
    add('| --- |' + ' --- |' * len(models))
    for e in engines:
        if e == 'timm':
            continue
        cells = []
        for m in models:
            # the model's check in its own run, then in the ensemble's (candle has no ensemble run)
            c = chk.get(f'latency:{m}', {}).get(m, {}).get(e)
            ce = chk.get('latency:ensemble', {}).get(m, {}).get(e)
            ens = '' if ce is None else P('peer_check_ens', ens=check_cell(ce))
            cells.append('' if c is None else check_cell(c) + ens)
        add(f'| {peer_name(e)} | ' + ' | '.join(cells) + ' |')
    variants = [e for e in pr['variants'] if get('start_warm', e) is not None]
    if variants:
        add('')
        add(P('peer_process'))
        for e in ['wstream'] + variants:
            cold, rd = get('start_cold', e), get('start_cold', 'read' if e == 'wstream' else f'read:{e}')
            ens = get('latency:ensemble', e)
            bound = max(rd, ens / 1000) if rd is not None and ens is not None else None
            add(f'| {peer_name(e)} | {fmt(get("start_warm", e), " s")} | {fmt(get("peak_rss", e), " MiB")} | '
                f'{fmt(cold, " s")} | {fmt(rd, " s")} | {fmt_ratio(ratio(cold, bound))} |')
    peer_targets(add, res, meta, models, get, pr, chk)


def check_cell(c):
    return P('peer_check', cos=f'{c["cosine"]:.6f}', max_abs=f'{c["max_abs"]:.1e}',
             top1='yes' if c['top1_agree'] else '**no**', margin_ref=f'{c["margin_ref"]:.2f}',
             margin=f'{c["margin"]:.2f}')


def peer_targets(add, res, meta, models, get, pr, chk):
    """Issue #19's latency and agreement targets, each row judged where it was measured."""
    add('')
    add(P('peer_targets'))

    def target(label, value, limit, shown=None):
        if value is None:
            add(P('target_unmeasured', label=label))
        else:
            add(P('target', label=label, shown=shown or fmt_ratio(value), verdict=verdict(value, limit)))

    ens = 'latency:ensemble'
    f32 = [e for e in ['wstream'] + [e for e in pr['variants'] if 'packed' in e] if get(ens, e) is not None]
    for e in f32:
        target(P('t19_f32', engine=peer_name(e), limit=0.85), ratio(get(ens, e), get(ens, 'ort')), 0.85)
        for m in models:
            target(P('t19_alone', engine=peer_name(e), model=SHORT[m], limit=0.95),
                   ratio(get(f'latency:{m}', e), get(f'latency:{m}', 'ort')), 0.95)

    for e in [e for e in f32 if get('throughput', e) is not None]:
        label = P('t19_throughput', engine=peer_name(e), batch=meta['batch'], limit=1.15)
        tp = ratio(get('throughput', e), get('throughput', 'ort'))
        if tp is None:
            add(P('target_unmeasured', label=label))
        else:  # higher is better
            shown = (P('met', margin=f'{(1 - 1.15 / tp) * 100:.0f}') if tp >= 1.15
                     else P('missed_throughput', more=f'{(1.15 / tp - 1) * 100:.0f}'))
            add(P('target', label=label, shown=fmt_ratio(tp), verdict=shown))

    def worst_cos(e):
        cs = [c[e]['cosine'] for d in chk.values() for c in d.values() if e in c]
        return min(cs) if cs else None

    def top1(e, min_margin):
        cs = [c[e] for d in chk.values() for c in d.values() if e in c]
        return all(c['top1_agree'] or c['margin_ref'] <= min_margin for c in cs) if cs else None

    for e in [e for e in pr['variants'] if 'bf16' in e]:
        target(P('t19_ratio', engine=peer_name(e), limit=0.6, base='ORT f32'), ratio(get(ens, e), get(ens, 'ort')), 0.6)
        agree_cos(add, e, worst_cos(e), 0.9995, top1(e, 0.1))
    for e in [e for e in pr['variants'] if 'int8' in e]:
        target(P('t19_ratio', engine=peer_name(e), limit=0.5, base='ORT f32'), ratio(get(ens, e), get(ens, 'ort')), 0.5)
        target(P('t19_ratio', engine=peer_name(e), limit=0.8, base='ORT int8'),
               ratio(get(ens, e), get(ens, 'ort-int8')), 0.8)
        agree_cos(add, e, worst_cos(e), 0.995, top1(e, 0.1))
        cold = get('start_cold', e)
        rd, warm = get('start_cold', f'read:{e}'), get(ens, e)
        bound = max(rd, warm / 1000) if rd is not None and warm is not None else None
        target(P('t19_cold', engine=peer_name(e), limit=1.1), ratio(cold, bound), 1.1)
        rss = get('peak_rss', e)
        target(P('t19_rss', engine=peer_name(e), limit=128), rss, 128, fmt(rss, ' MiB'))


def agree_cos(add, e, cos, limit, top1):
    if cos is None:
        add(P('target_unmeasured', label=P('t19_cos', engine=peer_name(e), limit=limit)))
        return
    met = cos >= limit and top1
    add(P('target', label=P('t19_cos', engine=peer_name(e), limit=limit),
          shown=f'worst cosine {cos:.6f}, top-1 {"agrees" if top1 else "DISAGREES"}',
          verdict='yes' if met else '**no**'))
