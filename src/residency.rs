//! Page residency control over byte ranges of a mapped file: prefetch, populate, release, and how much is
//! in memory (readings of the process as a whole live in [`crate::process`]).
//!
//! Ranges are byte ranges of a whole-file mapping (the mapping starts on a page boundary at file offset 0,
//! so a mapping offset is also a file offset). `prefetch` and `resident_bytes` round outward to whole pages;
//! `release` rounds inward, so a page shared with a neighbouring range that is still in use is never dropped.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use serde::Serialize;

/// The system page size.
#[allow(unsafe_code)]
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as usize
        } else {
            4096
        }
    })
}

fn round_out(r: &Range<usize>, len: usize) -> Range<usize> {
    let p = page_size();
    let start = r.start / p * p;
    let end = r.end.div_ceil(p) * p;
    start..end.min(len.div_ceil(p) * p)
}

fn round_in(r: &Range<usize>) -> Range<usize> {
    let p = page_size();
    let start = r.start.div_ceil(p) * p;
    let end = r.end / p * p;
    start..end.max(start)
}

fn check_range(map: &[u8], r: &Range<usize>) {
    assert!(
        r.start <= r.end && r.end <= map.len(),
        "range {r:?} outside a mapping of {} bytes",
        map.len()
    );
}

/// Asks the kernel to start reading the pages of `range` (madvise WILLNEED). Returns at once. The kernel reads
/// them in 4 KiB folios, which every later mapping of them pays for page by page; the executor therefore
/// uses [`populate`] and [`read_into_cache`], which read 2 MiB folios on a mapping advised HUGEPAGE.
#[allow(unsafe_code)]
pub fn prefetch(map: &[u8], range: Range<usize>) -> std::io::Result<()> {
    check_range(map, &range);
    let r = round_out(&range, map.len());
    if r.is_empty() {
        return Ok(());
    }
    // SAFETY: `map` starts on a page boundary (it is a whole mapping) and `r` is page-rounded within it.
    // WILLNEED only schedules read-ahead; it does not change the contents or validity of the mapping.
    let rc = unsafe {
        libc::madvise(
            map.as_ptr().add(r.start) as *mut _,
            r.len(),
            libc::MADV_WILLNEED,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Maps the pages of `range` into this process on the calling thread, reading them from storage where they
/// are not cached: one madvise(MADV_POPULATE_READ) call (Linux 5.14+), which fills the page tables without a
/// fault per page; on older kernels, falls back to [`touch`].
#[allow(unsafe_code)]
pub fn populate(map: &[u8], range: Range<usize>) {
    check_range(map, &range);
    let r = round_out(&range, map.len());
    if r.is_empty() {
        return;
    }
    // SAFETY: `r` is page-aligned and inside the mapping. POPULATE_READ only faults pages in for reading; it
    // changes neither contents nor validity of the mapping.
    let rc = unsafe {
        libc::madvise(
            map.as_ptr().add(r.start) as *mut _,
            r.len(),
            libc::MADV_POPULATE_READ,
        )
    };
    if rc != 0 {
        touch(map, range);
    }
}

/// The size of a transparent huge page on x86-64 and on aarch64 with 4 KiB pages: the unit in which
/// [`read_into_cache`] maps and unmaps, so it never unmaps part of a 2 MiB page a neighbouring range uses.
const HUGE_PAGE: usize = 2 << 20;

/// Reads the pages of `range` into the page cache without leaving them mapped: populates it 2 MiB at a
/// time (MADV_POPULATE_READ, which on a mapping advised HUGEPAGE reads whole 2 MiB folios, where WILLNEED
/// reads 4 KiB ones) and unmaps each 2 MiB unit lying wholly inside `range` right after (DONTNEED), so at
/// most one such unit is mapped at a time. The partial units at the ends stay mapped: they may hold a
/// neighbour's bytes, and unmapping part of a 2 MiB mapping unmaps all of it; releasing `range` later
/// unmaps them. Fails with the kernel's refusal of the populate (e.g. before Linux 5.14) having read
/// nothing more.
#[allow(unsafe_code)]
pub fn read_into_cache(map: &[u8], range: Range<usize>) -> std::io::Result<()> {
    check_range(map, &range);
    let r = round_out(&range, map.len());
    let base = map.as_ptr() as usize;
    // Units are aligned in the address space, where the kernel places 2 MiB mappings.
    let whole = (base + range.start).div_ceil(HUGE_PAGE) * HUGE_PAGE - base
        ..((base + range.end) / HUGE_PAGE * HUGE_PAGE).saturating_sub(base);
    let mut at = r.start;
    while at < r.end {
        let end = ((base + at) / HUGE_PAGE + 1) * HUGE_PAGE - base;
        let end = end.min(r.end);
        // SAFETY: `at..end` is page-aligned and inside the mapping (`r` is); POPULATE_READ only faults
        // pages in for reading.
        let rc = unsafe {
            libc::madvise(
                map.as_ptr().add(at) as *mut _,
                end - at,
                libc::MADV_POPULATE_READ,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if whole.start <= at && end <= whole.end {
            // SAFETY: as in `release`: DONTNEED on a read-only shared file mapping only drops this
            // process's page-table entries; the next access maps the cached pages again. A refusal only
            // leaves the unit mapped until `range` is released.
            unsafe {
                libc::madvise(
                    map.as_ptr().add(at) as *mut _,
                    end - at,
                    libc::MADV_DONTNEED,
                )
            };
        }
        at = end;
    }
    Ok(())
}

/// Reads one byte per page of `range` so the pages are faulted in on the calling thread. Returns the number
/// of pages touched.
pub fn touch(map: &[u8], range: Range<usize>) -> usize {
    check_range(map, &range);
    let p = page_size();
    let mut sum = 0u8;
    let mut pages = 0;
    let mut i = range.start;
    while i < range.end {
        sum = sum.wrapping_add(map[i]);
        pages += 1;
        i = (i / p + 1) * p;
    }
    std::hint::black_box(sum);
    pages
}

/// What a [`release`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Released {
    /// Bytes unmapped from this process (whole pages inside the range).
    pub unmapped: u64,
    /// Bytes also dropped from the page cache (only with a file given).
    pub dropped_from_cache: u64,
}

/// Drops the pages lying wholly inside `range` from this process (madvise DONTNEED). With `drop_cache`, also
/// asks the kernel to drop them from the page cache (posix_fadvise DONTNEED; clean pages no other process
/// maps go at once). The data stays valid: a later touch pages it back in from the file.
#[allow(unsafe_code)]
pub fn release(
    map: &[u8],
    range: Range<usize>,
    drop_cache: Option<&File>,
) -> std::io::Result<Released> {
    check_range(map, &range);
    let r = round_in(&range);
    if r.is_empty() {
        return Ok(Released::default());
    }
    // SAFETY: `r` is page-aligned and inside the mapping. DONTNEED on a read-only shared file mapping only
    // discards this process's page-table entries: the next access re-reads the file, so every outstanding
    // `&[u8]` into the mapping stays valid and keeps its contents.
    let rc = unsafe {
        libc::madvise(
            map.as_ptr().add(r.start) as *mut _,
            r.len(),
            libc::MADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Released {
        unmapped: r.len() as u64,
        dropped_from_cache: 0,
    };
    if let Some(file) = drop_cache {
        // SAFETY: plain syscall on an open file descriptor; offsets are the mapping offsets (mapped from 0).
        let rc = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                r.start as libc::off_t,
                r.len() as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        out.dropped_from_cache = r.len() as u64;
    }
    Ok(out)
}

/// Drops a whole file from the page cache (posix_fadvise DONTNEED), e.g. before a cold run. Dirty pages
/// (a file written moments ago, such as a fresh checkout) cannot be dropped, so they are written back first
/// (fdatasync; the contents do not change).
#[allow(unsafe_code)]
pub fn drop_file_cache(file: &File) -> std::io::Result<()> {
    file.sync_data()?;
    // SAFETY: plain syscall on an open file descriptor; len 0 means "to the end of the file".
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// How many bytes of `range` are in memory right now (mincore: in the page cache for a file mapping).
/// A partly covered page counts only the bytes of it that lie in the range.
///
/// Linux reports page-cache residency of file pages only to a process that owns the file or may write it;
/// otherwise only the pages this process has mapped count.
#[allow(unsafe_code)]
pub fn resident_bytes(map: &[u8], range: Range<usize>) -> std::io::Result<u64> {
    check_range(map, &range);
    let r = round_out(&range, map.len());
    if r.is_empty() {
        return Ok(0);
    }
    let p = page_size();
    let mut vec = vec![0u8; r.len().div_ceil(p)];
    // SAFETY: `r` is page-aligned and inside the mapping; `vec` has one byte per page of `r`, as mincore
    // requires.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(r.start) as *mut _,
            r.len(),
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut bytes = 0u64;
    for (i, v) in vec.iter().enumerate() {
        if v & 1 != 0 {
            let page_start = r.start + i * p;
            let lo = page_start.max(range.start);
            let hi = (page_start + p).min(range.end);
            bytes += hi.saturating_sub(lo) as u64;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_keeps_shared_pages() {
        let p = page_size();
        assert_eq!(round_in(&(10..3 * p + 5)), p..3 * p);
        assert_eq!(round_in(&(10..p)), p..p);
        assert_eq!(round_out(&(10..p + 1), 10 * p), 0..2 * p);
        assert_eq!(round_out(&(0..3 * p), 3 * p), 0..3 * p);
    }
}
