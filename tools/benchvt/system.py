"""What the driver measures with: child processes timed from outside (wall time, exit status, peak
RSS from wait4), the page cache of the weight files (drop, warm, residency, 2 MiB folios), and the
machine's description. Standard library only; tools/bench_compact.py uses these too."""

import json
import mmap
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the command line that runs `folios` in a fresh process
CLI = Path(__file__).resolve().parent.parent / 'bench_vs_torch.py'


DAMON = Path('/sys/kernel/mm/damon/admin/kdamonds')
COMPACT = Path('/proc/sys/vm/compact_memory')


def damon_pageout():
    """The running kdamonds with a `pageout` scheme (proactive reclaim): each pages out memory left idle
    for a while, page cache included. Returns [(kdamond dir, description)]."""
    found = []
    for k in sorted(DAMON.glob('[0-9]*')) if DAMON.is_dir() else []:
        try:
            if (k / 'state').read_text().strip() != 'on':
                continue
            for sch in sorted(k.glob('contexts/*/schemes/[0-9]*')):
                if (sch / 'action').read_text().strip() != 'pageout':
                    continue
                ctx = sch.parent.parent
                aggr_us = int((ctx / 'monitoring_attrs/intervals/aggr_us').read_text())
                age = int((sch / 'access_pattern/age/min').read_text())
                quota = int((sch / 'quotas/bytes').read_text())
                reset = int((sch / 'quotas/reset_interval_ms').read_text())
                found.append((k, f'pages idle {age * aggr_us / 1e6:.0f} s or more, up to '
                                 f'{quota / 2**20:.0f} MiB per {reset} ms'))
                break
        except (OSError, ValueError):
            continue
    return found


def set_kdamonds(dirs, state):
    """Writes `state` ('on' / 'off') to each kdamond; returns those that took it."""
    done = []
    for k in dirs:
        try:
            (k / 'state').write_text(state)
            done.append(k)
        except OSError:
            pass
    return done


def median(xs):
    return statistics.median(xs) if xs else None


def drop_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        except OSError:
            pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def resident_bytes(paths):
    """Page-cache residency of the files (util-linux fincore), or None if unavailable."""
    try:
        out = subprocess.run(['fincore', '--bytes', '--noheadings', '--output', 'RES'] + [str(p) for p in paths],
                             capture_output=True, text=True, check=True).stdout
        return sum(int(x) for x in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None


def warm_cache(paths):
    """Drops the files from the page cache, compacts free memory (see compact_memory), then reads each file
    once sequentially: the state a copy, a download or a first run leaves on a box with unfragmented free
    memory, whatever earlier runs (cold tests, per-block cache eviction) left behind. It matters to
    wstream, which computes from the page cache: the kernel fills it in 2 MiB folios on a sequential read
    and maps those whole. Returns whether the compaction was done."""
    drop_cache(paths)
    compacted = compact_memory()
    for p in paths:
        with open(p, 'rb') as f:
            while f.read(1 << 24):
                pass
    return compacted


def compact_memory():
    """Has the kernel compact free memory (/proc/sys/vm/compact_memory, root only); False where it cannot.
    A read fills the page cache in 2 MiB folios only from free 2 MiB blocks: after a day of page-cache churn
    on this VM a sequential read left 67% of the weights in them instead of 95%, and wstream's warm rows
    ran up to 40% slower, while timm's and ORT's copies of the weights were not touched."""
    try:
        COMPACT.write_text('1')
        return True
    except OSError:
        return False


def huge_folio_fraction(paths):
    """Share of the files' bytes a fresh read-only mapping maps with 2 MiB entries (FilePmdMapped / Rss in
    /proc/self/smaps after touching every page), or None where the kernel does not report it. Measured in a
    child process: mapping the files here would raise this process's peak RSS, which the kernel hands to
    every child it later spawns (vfork) as that child's ru_maxrss."""
    r = subprocess.run([sys.executable, str(CLI), 'folios'] + [str(p) for p in paths],
                       capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def cmd_folios(args):
    """The child side of huge_folio_fraction: prints the share as a JSON number (null if unknown)."""
    pmd = rss = 0
    for p in args.files:
        with open(p, 'rb') as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            for off in range(0, len(m), 4096):
                m[off]
            for block in re.split(r'\n(?=[0-9a-f]+-[0-9a-f]+ )', open('/proc/self/smaps').read()):
                if block.splitlines()[0].endswith(' ' + str(Path(p).resolve())):
                    fields = dict(line.split(':', 1) for line in block.splitlines()[1:] if ':' in line)
                    if 'FilePmdMapped' not in fields:
                        print('null')
                        return
                    pmd += int(fields['FilePmdMapped'].split()[0])
                    rss += int(fields['Rss'].split()[0])
    print(json.dumps(pmd / rss if rss else None))


def run_timed(cmd, timeout=None, discard_stdout=False):
    """Runs cmd, stdout/stderr to temp files (stdout to /dev/null with discard_stdout). Returns wall
    seconds (fork to reap), exit status, max RSS of the child (KiB, from wait4), stdout, stderr."""
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if discard_stdout else fo, stderr=fe,
                             stdin=subprocess.DEVNULL)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                os.kill(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        return dict(wall_s=wall, status=p.returncode, maxrss_kib=ru.ru_maxrss,
                    stdout=fo.read().decode(errors='replace'), stderr=fe.read().decode(errors='replace'))


def parse_json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith('{')]


def machine_info():
    cpu = 'unknown'
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    for line in open('/proc/meminfo'):
        if line.startswith('MemTotal:'):
            mem = int(line.split()[1]) / 1048576
    flags = ''
    try:
        txt = open('/proc/cpuinfo').read()
        fl = re.search(r'^flags\s*:\s*(.*)$', txt, re.M).group(1).split()
        flags = ', '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile') if f in fl)
    except (OSError, AttributeError):
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), mem_gib=mem, kernel=platform.release(), simd=flags)
