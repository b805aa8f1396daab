#!/usr/bin/env python3
"""Puts weight files in a known page-cache state before a timing, or reports it (Linux).

    tools/page_cache_state.py large FILE...   drop FILE from the page cache, re-read it through an mmap touch:
                                              cached in 2 MiB folios where the kernel can (THP, ext4/XFS)
    tools/page_cache_state.py small FILE...   drop FILE, re-read it after WILLNEED in 32 MiB chunks: cached in
                                              4 KiB folios (what wstream's prefetcher left before 2026-11-28)
    tools/page_cache_state.py pmd FILE...     touch FILE through a mapping and print the share of it mapped
                                              with 2 MiB pages (FilePmdMapped of /proc/self/smaps)

A mapped warm file in 2 MiB folios costs one page-table entry per 2 MiB, in 4 KiB folios one per 4 KiB: the
same binary and data ran a warm ViT-L f32 image in ~415 vs ~530 ms (BENCHMARKS.md, issue 19). Dropping only
works for pages no process maps.
"""
import mmap
import os
import sys


def touch(path):
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    s = 0
    for i in range(0, size, 4096):
        s += m[i]
    os.close(fd)
    return m, size


def drop(path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def pmd_share(path):
    m, size = touch(path)
    real = os.path.realpath(path)
    inside, rss, pmd = False, 0, 0
    for line in open("/proc/self/smaps"):
        if not inside:
            inside = line.rstrip().endswith(" " + real)
            continue
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("FilePmdMapped:"):
            pmd = int(line.split()[1])
        elif line.startswith("VmFlags"):
            break
    m.close()
    return pmd, rss


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("large", "small", "pmd"):
        sys.exit(__doc__)
    for path in sys.argv[2:]:
        if sys.argv[1] == "large":
            os.close(drop(path))
            touch(path)[0].close()
        elif sys.argv[1] == "small":
            fd = drop(path)
            size = os.fstat(fd).st_size
            for off in range(0, size, 32 << 20):
                os.posix_fadvise(fd, off, min(32 << 20, size - off), os.POSIX_FADV_WILLNEED)
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
            os.close(fd)
        else:
            pmd, rss = pmd_share(path)
            print(f"{path}: {pmd >> 10} of {rss >> 10} MiB mapped as 2 MiB pages ({100 * pmd / max(rss, 1):.0f}%)")


if __name__ == "__main__":
    main()
