#!/usr/bin/env python3
"""peak_anon.py CMD...: runs CMD and samples its /proc/PID/status every millisecond, then prints to stderr
the peak RssAnon (the activations and the process's own memory; the kernel has no high-water mark for it)
and VmHWM, in MiB. Exits with CMD's status. A buffer that lives for less than a sampling interval can be
missed: the figure is a lower bound, close to exact for the multi-millisecond blocks of the Large models."""
import subprocess
import sys
import time


def field(text, name):
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: peak_anon.py CMD...")
    p = subprocess.Popen(sys.argv[1:])
    peak_anon = hwm = 0
    path = f"/proc/{p.pid}/status"
    while p.poll() is None:
        try:
            with open(path) as f:
                s = f.read()
        except OSError:
            break
        peak_anon = max(peak_anon, field(s, "RssAnon"))
        hwm = max(hwm, field(s, "VmHWM"))
        time.sleep(0.001)
    rc = p.wait()
    mib = 1 << 20
    print(f"peak_anon: RssAnon {peak_anon / mib:.1f} MiB, VmHWM {hwm / mib:.1f} MiB", file=sys.stderr)
    sys.exit(rc)


main()
