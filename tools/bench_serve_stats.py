#!/usr/bin/env python3
"""The parsing half of tools/bench_serve.sh (standard library only):

  get URL FILE                  GET URL (a 127.0.0.1 server) into FILE; exit 1 with the reason if it fails
  oha FILE                      oha's --output-format json report -> tab-separated fields (see OHA_FIELDS)
  metrics BEFORE AFTER          two /metrics scrapes -> batch sizes seen between them, one cell of text
  classify FILE                 `classify --json` lines -> images/s (inputs / the batches' summed time)
"""
import json
import re
import sys
import urllib.request

OHA_FIELDS = 'requests ok n503 other errors seconds ok_per_s p50_ms p99_ms status'


def get(url, path):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
    except Exception as e:  # noqa: BLE001 - any failure is reported the same way: the reason, exit 1
        sys.exit(f'GET {url}: {e}')
    with open(path, 'wb') as f:
        f.write(body)


def oha(path):
    with open(path) as f:
        text = f.read()
    # Stopped by SIGINT at the time bound, oha may print its text banner before the JSON.
    r = json.loads(text[text.index('{'):])
    codes = {k: int(v) for k, v in (r.get('statusCodeDistribution') or {}).items()}
    errors = sum(int(v) for v in (r.get('errorDistribution') or {}).values())
    ok = codes.get('200', 0)
    n503 = codes.get('503', 0)
    other = sum(v for k, v in codes.items() if k not in ('200', '503'))
    seconds = float(r['summary']['total'])
    # Latency of the answered requests only: a 503 returns at once and would flatter the figure.
    lat = r.get('latencyPercentilesSuccessful') or r.get('latencyPercentiles') or {}

    def ms(key):
        v = lat.get(key)
        return f'{v * 1000:.0f}' if isinstance(v, (int, float)) else '-'

    status = ' '.join(f'{k}x{v}' for k, v in sorted(codes.items()))
    if errors:
        status += ' ' + '; '.join(f'{k}: {v}' for k, v in r['errorDistribution'].items())
    fields = [ok + n503 + other + errors, ok, n503, other, errors, f'{seconds:.1f}',
              f'{ok / seconds if seconds > 0 else 0:.2f}', ms('p50'), ms('p99'), status or '-']
    print('\t'.join(str(x).replace('\t', ' ') for x in fields))


SAMPLE = re.compile(r'^(wstream_batch_size_(?:bucket|sum|count))(?:\{([^}]*)\})?\s+(\S+)$')


def batch_histogram(path):
    buckets, total, count = {}, 0.0, 0.0
    with open(path) as f:
        for line in f:
            m = SAMPLE.match(line.strip())
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or '', float(m.group(3))
            if name.endswith('_bucket'):
                le = re.search(r'le="([^"]*)"', labels)
                if le:
                    key = float('inf') if le.group(1) in ('+Inf', 'Inf') else float(le.group(1))
                    buckets[key] = buckets.get(key, 0.0) + value
            elif name.endswith('_sum'):
                total += value
            else:
                count += value
    return buckets, total, count


def metrics(before, after):
    b0, s0, c0 = batch_histogram(before)
    b1, s1, c1 = batch_histogram(after)
    n = c1 - c0
    if not b1 and not c1:
        print('no wstream_batch_size in /metrics')
        return
    if n <= 0:
        print('no batches')
        return
    # Cumulative buckets -> how many batches fell in each (previous bound, bound].
    parts, prev = [], 0.0
    for le in sorted(b1):
        cum = b1[le] - b0.get(le, 0.0)
        if cum - prev > 0:
            bound = '+Inf' if le == float('inf') else f'{le:g}'
            parts.append(f'<={bound}: {cum - prev:.0f}')
        prev = cum
    print(f'{n:.0f} batches, mean {(s1 - s0) / n:.1f} ({", ".join(parts)})')


def classify(path):
    n, ms = 0, 0.0
    with open(path) as f:
        for line in f:
            if line.strip():
                # elapsed_ms is the batch's time divided by its inputs, so the sum over inputs is the
                # time of all batches.
                ms += json.loads(line)['elapsed_ms']
                n += 1
    if n == 0 or ms <= 0:
        sys.exit(f'{path}: no answers')
    print(f'{n}\t{n * 1000 / ms:.2f}')


if __name__ == '__main__':
    cmd, args = sys.argv[1], sys.argv[2:]
    {'get': get, 'oha': oha, 'metrics': metrics, 'classify': classify}[cmd](*args)
