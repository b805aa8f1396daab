//! Residency control on a real file: prefetch + touch makes a range resident, release with a page-cache drop
//! makes it go, and a page shared with a neighbouring range is never dropped.

mod common;

use std::path::PathBuf;

use wstream::process::{Faults, MemReading};
use wstream::residency::{
    drop_file_cache, page_size, populate, prefetch, read_into_cache, release, resident_bytes, touch,
};
use wstream::Store;

/// A file on real storage (the page cache behaves differently on tmpfs), synced so its pages are clean and
/// can be dropped.
fn test_file(name: &str, tensors: &[(&str, usize)]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("residency");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let specs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|&(n, len)| (n, vec![len], (0..len).map(|i| i as f32).collect()))
        .collect();
    common::write_f32(&path, &specs);
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    path
}

#[test]
fn prefetch_touch_release_cycle() {
    let p = page_size();
    // `a` is 64 pages and ends mid-page, so `a` and `b` share one page.
    let path = test_file(
        "cycle.safetensors",
        &[("a", 64 * p / 4 + 100), ("b", 16 * p / 4)],
    );
    let store = Store::open(&path).unwrap();
    let f = &store.files()[0];
    let (a, b) = (
        store.info("a").unwrap().clone(),
        store.info("b").unwrap().clone(),
    );

    drop_file_cache(f.file()).unwrap();
    let cold = resident_bytes(f.bytes(), a.range.clone()).unwrap();
    assert!(
        cold < (4 * p) as u64,
        "after dropping the file from the cache, `a` is mostly gone: {cold}"
    );

    prefetch(f.bytes(), a.range.clone()).unwrap();
    let before = Faults::thread();
    let pages = touch(f.bytes(), a.range.clone());
    assert!(pages >= 64, "touched {pages} pages");
    assert!(Faults::thread().since(before).minor + Faults::thread().since(before).major > 0);
    assert_eq!(
        resident_bytes(f.bytes(), a.range.clone()).unwrap(),
        a.nbytes() as u64
    );
    touch(f.bytes(), b.range.clone());
    assert_eq!(
        resident_bytes(f.bytes(), b.range.clone()).unwrap(),
        b.nbytes() as u64
    );

    let released = release(f.bytes(), a.range.clone(), Some(f.file())).unwrap();
    assert!(
        released.unmapped >= (63 * p) as u64 && released.unmapped <= (65 * p) as u64,
        "{released:?}"
    );
    assert_eq!(released.unmapped % p as u64, 0, "whole pages only");
    let left = resident_bytes(f.bytes(), a.range.clone()).unwrap();
    assert!(
        left <= (2 * p) as u64,
        "only the partial pages at the ends of `a` may stay: {left} bytes"
    );
    assert_eq!(
        resident_bytes(f.bytes(), b.range.clone()).unwrap(),
        b.nbytes() as u64,
        "`b` (sharing a page with `a`) is untouched by releasing `a`"
    );
    // The data is still there: a released range reads back from the file.
    assert_eq!(store.view::<f32>("a").unwrap()[1000], 1000.0);
}

#[test]
fn readings_are_plausible() {
    let m = MemReading::now();
    assert!(m.vm_rss > 0 && m.vm_hwm >= m.vm_rss, "{m:?}");
    assert!(
        m.rss_anon + m.rss_file <= m.vm_rss + 4 * 1024 * 1024,
        "{m:?}"
    );
    let f = Faults::process();
    assert!(f.minor > 0, "a running test has taken minor faults: {f:?}");
}

/// Rss and FilePmdMapped (bytes) of this process's mapping that starts at `addr`, from /proc/self/smaps.
fn smaps_of(addr: usize) -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{addr:x}-");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&start)).skip(1);
    let (mut rss, mut pmd) = (None, None);
    for l in lines.by_ref().take_while(|l| !l.starts_with("VmFlags")) {
        let kb = |l: &str| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024;
        if l.starts_with("Rss:") {
            rss = Some(kb(l));
        } else if l.starts_with("FilePmdMapped:") {
            pmd = Some(kb(l));
        }
    }
    (
        rss.expect("the mapping is listed"),
        pmd.expect("smaps lists FilePmdMapped"),
    )
}

#[test]
fn weights_read_ahead_and_mapped_in_2mib_pages() {
    const MIB: usize = 1 << 20;
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        common::skip_or_fail("2 MiB page mapping: transparent huge pages are off on this kernel");
        return;
    }
    // 12 MiB of weights: `a` spans several whole 2 MiB units of the file (and of the mapping, which the
    // kernel places on a 2 MiB boundary).
    let path = test_file(
        "huge.safetensors",
        &[("a", 10 * MIB / 4), ("b", 2 * MIB / 4)],
    );
    let store = Store::open(&path).unwrap();
    let f = &store.files()[0];
    let base = f.bytes().as_ptr() as usize;
    assert_eq!(
        base % (2 * MIB),
        0,
        "a file mapping of 12 MiB is 2 MiB-aligned"
    );
    let a = store.info("a").unwrap().clone();
    drop_file_cache(f.file()).unwrap();

    read_into_cache(f.bytes(), a.range.clone()).unwrap();
    assert_eq!(
        resident_bytes(f.bytes(), a.range.clone()).unwrap(),
        a.nbytes() as u64,
        "read into the page cache"
    );
    let (rss, _) = smaps_of(base);
    assert!(
        rss <= 2 * 2 * MIB as u64,
        "only the partial 2 MiB units at the ends of `a` stay mapped: {rss} bytes"
    );

    populate(f.bytes(), a.range.clone());
    let (rss, pmd) = smaps_of(base);
    assert!(
        pmd >= 8 * MIB as u64,
        "the whole 2 MiB units of `a` (four of them) are mapped as 2 MiB pages: {pmd} of {rss} bytes"
    );
    assert_eq!(store.view::<f32>("a").unwrap()[2_000_000], 2_000_000.0);
}
