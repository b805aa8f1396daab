//! Readings of this process as a whole: memory (/proc/self/status), page faults and children's peak RSS
//! (getrusage), bytes read from storage (/proc/self/io); and the one allocator setting a program may opt
//! into. Page residency of mapped byte ranges is [`crate::residency`]'s.

use std::path::Path;

use serde::Serialize;

/// Memory of this process, in bytes, from /proc/self/status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemReading {
    pub vm_rss: u64,
    pub vm_hwm: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
}

impl MemReading {
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mut m = MemReading::default();
        for line in text.lines() {
            let Some((key, rest)) = line.split_once(':') else {
                continue;
            };
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            let field = match key {
                "VmRSS" => &mut m.vm_rss,
                "VmHWM" => &mut m.vm_hwm,
                "RssAnon" => &mut m.rss_anon,
                "RssFile" => &mut m.rss_file,
                _ => continue,
            };
            *field = kib * 1024;
        }
        m
    }
}

/// Page-fault counts from getrusage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Faults {
    pub minor: u64,
    pub major: u64,
}

impl Faults {
    /// The whole process.
    pub fn process() -> Self {
        Self::of(libc::RUSAGE_SELF)
    }

    /// The calling thread only.
    pub fn thread() -> Self {
        Self::of(libc::RUSAGE_THREAD)
    }

    pub fn since(self, earlier: Faults) -> Faults {
        Faults {
            minor: self.minor.saturating_sub(earlier.minor),
            major: self.major.saturating_sub(earlier.major),
        }
    }

    fn of(who: libc::c_int) -> Self {
        let ru = rusage(who);
        Faults {
            minor: ru.ru_minflt as u64,
            major: ru.ru_majflt as u64,
        }
    }
}

/// The largest peak RSS (bytes) of the child processes this process has waited for (getrusage
/// RUSAGE_CHILDREN): how tools and tests measure a command's VmHWM without sampling it.
pub fn children_peak_rss() -> u64 {
    rusage(libc::RUSAGE_CHILDREN).ru_maxrss as u64 * 1024
}

/// CPU seconds (user + system) this process has used, all threads (getrusage): a benchmark's cost that,
/// unlike wall time, does not stretch while other processes hold the cores.
pub fn cpu_seconds() -> f64 {
    let ru = rusage(libc::RUSAGE_SELF);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

#[allow(unsafe_code)]
fn rusage(who: libc::c_int) -> libc::rusage {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; it is zero-initialised, so it is valid even on error.
    unsafe {
        libc::getrusage(who, ru.as_mut_ptr());
        ru.assume_init()
    }
}

/// Bytes this process caused to be read from storage (`read_bytes` of /proc/self/io), where the kernel
/// accounts it.
pub fn storage_read_bytes() -> Option<u64> {
    io_read_bytes("/proc/self/io")
}

/// The same for the calling thread only (/proc/thread-self/io).
pub fn thread_storage_read_bytes() -> Option<u64> {
    io_read_bytes("/proc/thread-self/io")
}

fn io_read_bytes(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The memory limit of this process's cgroup in bytes (the smallest along its ancestors), or `None` when
/// there is none or it cannot be read. cgroup v1: `hierarchical_memory_limit` of the memory controller's
/// memory.stat (or memory.limit_in_bytes); v2: memory.max of the cgroup and each ancestor. Both count page
/// cache too; "no limit" (v2 `max`, v1's near-2^63 value) is `None`.
pub fn cgroup_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // v1 lines are `id:controllers:path`, the v2 line is `0::path`.
    let path_of = |want: &dyn Fn(&str) -> bool| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            want(controllers).then(|| path.to_string())
        })
    };
    let limit = |v: u64| (v < 1 << 60).then_some(v);
    if let Some(path) = path_of(&|c| c.split(',').any(|c| c == "memory")) {
        let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let value = stat
            .lines()
            .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
            .map(str::to_string)
            .or_else(|| std::fs::read_to_string(dir.join("memory.limit_in_bytes")).ok());
        return limit(value?.trim().parse().ok()?);
    }
    let path = path_of(&|c| c.is_empty())?;
    let root = Path::new("/sys/fs/cgroup");
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut least: Option<u64> = None;
    // Each ancestor's memory.max bounds its descendants; the root has none.
    while dir.starts_with(root) && dir != root {
        if let Ok(text) = std::fs::read_to_string(dir.join("memory.max")) {
            if let Ok(v) = text.trim().parse::<u64>() {
                least = Some(least.map_or(v, |l| l.min(v)));
            }
        }
        if !dir.pop() {
            break;
        }
    }
    least.and_then(limit)
}

/// Lets the C allocator keep freed activation buffers for reuse (glibc only; elsewhere a no-op). A
/// program calls it once at start, before its threads; the library never changes process-wide settings.
///
/// By default glibc hands buffers over its dynamic threshold (a few MiB, raised as they are freed) back to
/// the kernel with munmap or a heap trim, so every block's next activation buffer faults its pages in
/// again and the kernel zeroes them (73K minor faults per ensemble image). Serving buffers up to 64 MiB
/// from the heap and trimming only above 256 MiB of free top keeps them mapped. Peak RSS does not change:
/// freed buffers are reused by the next block, and the live set is what peaks.
#[allow(unsafe_code)]
pub fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other threads allocate (the
    // caller's contract above) and a refused value (return 0) leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Output files and folders being written under a temporary name: what a fatal signal (SIGINT, SIGTERM,
/// the SIGBUS of a truncated input) removes before the process exits, so an interrupted `synth` or
/// `convert` leaves nothing behind. A signal handler reads the table at any moment, so it is fixed-size
/// atomics holding leaked C strings: nothing it reads is ever freed or locked. Files are unlinked before
/// folders are removed, so a partial folder whose files are all registered goes too.
pub(crate) mod partials {
    use std::ffi::{c_char, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicPtr, Ordering};

    const SLOTS: usize = 64;
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());
    static FILES: [AtomicPtr<c_char>; SLOTS] = [EMPTY; SLOTS];
    static DIRS: [AtomicPtr<c_char>; SLOTS] = [EMPTY; SLOTS];

    /// A registered path; [`Slot::release`] forgets it (the path is finished or already removed).
    pub(crate) struct Slot(Option<&'static AtomicPtr<c_char>>);

    /// Registers a partial file (`dir` false) or folder. A full table (more than 64 partial outputs at once,
    /// which wstream never has) or a path with a NUL byte leaves that path to the ordinary cleanup on drop
    /// and to the stale-partial sweep of a later run.
    pub(crate) fn register(path: &Path, dir: bool) -> Slot {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return Slot(None);
        };
        // Leaked on purpose: a handler may read it at any time, even after the slot is released.
        let ptr = CString::into_raw(c);
        let table = if dir { &DIRS } else { &FILES };
        let slot = table.iter().find(|s| {
            s.compare_exchange(
                std::ptr::null_mut(),
                ptr,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        });
        Slot(slot)
    }

    impl Slot {
        /// Moves the registration out, leaving this one empty.
        pub(crate) fn take(&mut self) -> Slot {
            Slot(self.0.take())
        }

        pub(crate) fn release(&mut self) {
            if let Some(s) = self.0.take() {
                s.store(std::ptr::null_mut(), Ordering::Release);
            }
        }
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            self.release();
        }
    }

    /// Removes every registered file, then every registered folder; returns how many were removed.
    /// Async-signal-safe: atomics, unlink and rmdir only.
    #[allow(unsafe_code)]
    pub(crate) fn remove_all() -> usize {
        let mut removed = 0;
        for (table, rm) in [
            (
                &FILES,
                libc::unlink as unsafe extern "C" fn(*const c_char) -> libc::c_int,
            ),
            (&DIRS, libc::rmdir),
        ] {
            for s in table {
                let p = s.swap(std::ptr::null_mut(), Ordering::AcqRel);
                // SAFETY: a non-null pointer is a leaked, NUL-terminated CString that is never freed.
                if !p.is_null() && unsafe { rm(p) } == 0 {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// Makes SIGINT and SIGTERM remove the partial outputs registered in [`partials`], print one line and exit
/// with status 128 + the signal number (130, 143), the shell's convention for a command ended by a signal.
/// For programs (the CLI calls it first thing); the library never installs handlers by itself. A signal
/// the process was started with ignored (`nohup`, a background job) stays ignored.
pub fn exit_on_interrupt() {
    set_interrupt_action(on_interrupt as *const () as usize);
}

/// Undoes [`exit_on_interrupt`]: SIGINT and SIGTERM get their default action back (a signal that was
/// ignored stays ignored), so a program that handles them itself, such as a server shutting down
/// gracefully, is not ended by the handler that runs before its own.
pub fn default_on_interrupt() {
    set_interrupt_action(libc::SIG_DFL);
}

/// Sets `handler` (a handler's address or `SIG_DFL`) for SIGINT and SIGTERM, except where ignored.
#[allow(unsafe_code)]
fn set_interrupt_action(handler: libc::sighandler_t) {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction with a zeroed (valid) struct and out-pointer; a handler given here is
        // `on_interrupt`, which is async-signal-safe (atomics, unlink, rmdir, write, _exit).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old);
            if old.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            // A second signal while the first is handled waits, so the cleanup runs once.
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaddset(&mut action.sa_mask, libc::SIGINT);
            libc::sigaddset(&mut action.sa_mask, libc::SIGTERM);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

#[allow(unsafe_code)]
extern "C" fn on_interrupt(sig: libc::c_int) {
    let removed = partials::remove_all();
    let msg: &[u8] = match (sig == libc::SIGINT, removed > 0) {
        (true, true) => b"wstream: interrupted (SIGINT); partial output removed\n",
        (true, false) => b"wstream: interrupted (SIGINT)\n",
        (false, true) => b"wstream: terminated (SIGTERM); partial output removed\n",
        (false, false) => b"wstream: terminated (SIGTERM)\n",
    };
    // SAFETY: write and _exit are async-signal-safe; `msg` is a static byte string.
    unsafe {
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(128 + sig);
    }
}

/// Hands the C allocator's free memory back to the kernel (glibc's malloc_trim; elsewhere a no-op). Called
/// when a model of an ensemble is done: its freed activation buffers would otherwise stay resident (see
/// [`keep_freed_heap`]) beside the next model's, which does not reuse them all.
#[allow(unsafe_code)]
pub fn trim_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; live allocations are untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}
