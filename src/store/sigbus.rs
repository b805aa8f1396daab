//! Turns the SIGBUS a mapped file raises when it was truncated under us into one clear line naming the file
//! and exit status 1. Any other SIGBUS (not in a registered mapping, or not a lost page) goes to the handler
//! installed before ours, or gets the default action.
//!
//! The handler may run at any moment on any thread, so it only loads atomics and reads what they point to,
//! which is never freed or changed once published: each mapping is one immutable leaked [`Entry`] published
//! by a single pointer store, in a table of fixed chunks that grows by appending a leaked chunk (as many
//! mappings as there are, never a silent limit). An entry costs a few dozen bytes plus its message, kept
//! for the life of the process.

use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Once;

/// One registered mapping: where it is and the message naming its file.
struct Entry {
    start: usize,
    len: usize,
    msg: Box<[u8]>,
}

const CHUNK: usize = 256;
/// A run of slots (null: free) and the next chunk, appended when every slot is taken.
struct Chunk {
    slots: [AtomicPtr<Entry>; CHUNK],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            slots: [const { AtomicPtr::new(null_mut()) }; CHUNK],
            next: AtomicPtr::new(null_mut()),
        }
    }

    #[allow(unsafe_code)]
    fn next(&self) -> Option<&'static Chunk> {
        // SAFETY: `next` is null or a chunk leaked by `register`, never freed or moved.
        unsafe { self.next.load(Ordering::Acquire).as_ref() }
    }
}

static FIRST: Chunk = Chunk::new();
static INSTALL: Once = Once::new();
/// The SIGBUS action in place before ours (leaked; null until installed).
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(null_mut());
/// Set by the first thread to report a lost page: the others wait for it to end the process.
static REPORTED: AtomicBool = AtomicBool::new(false);

fn chunks() -> impl Iterator<Item = &'static Chunk> {
    std::iter::successors(Some(&FIRST), |c| c.next())
}

/// Names `path` as the file behind `map`, so a SIGBUS inside it prints that name. Installs the handler on
/// first use.
#[allow(unsafe_code)]
pub(super) fn register(map: &[u8], path: &std::path::Path) {
    INSTALL.call_once(install);
    let msg = format!(
        "wstream: error: {}: weight file changed while mapped (truncated or rewritten in place); \
         nothing was written, rerun once it is complete\n",
        path.display()
    );
    // Leaked on purpose: the handler may read it at any time, even after the mapping is gone.
    let entry: *mut Entry = Box::leak(Box::new(Entry {
        start: map.as_ptr() as usize,
        len: map.len(),
        msg: msg.into_bytes().into_boxed_slice(),
    }));
    let mut chunk = &FIRST;
    loop {
        for slot in &chunk.slots {
            // Release: the entry is complete before the handler can see its pointer.
            if slot
                .compare_exchange(null_mut(), entry, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
        chunk = match chunk.next() {
            Some(next) => next,
            None => {
                let fresh: *mut Chunk = Box::leak(Box::new(Chunk::new()));
                match chunk.next.compare_exchange(
                    null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    // SAFETY: just leaked, never freed.
                    Ok(_) => unsafe { &*fresh },
                    Err(_) => {
                        // Another thread appended first; ours was never published.
                        // SAFETY: `fresh` came from Box::leak above and nothing else saw it.
                        drop(unsafe { Box::from_raw(fresh) });
                        chunk.next().expect("appended by another thread")
                    }
                }
            }
        };
    }
}

/// Forgets `map` (about to be unmapped); its slot is reused by a later mapping, its entry stays (the
/// handler may be reading it).
#[allow(unsafe_code)]
pub(super) fn unregister(map: &[u8]) {
    let (start, len) = (map.as_ptr() as usize, map.len());
    for slot in chunks().flat_map(|c| &c.slots) {
        let entry = slot.load(Ordering::Acquire);
        // SAFETY: a published entry is leaked and immutable.
        if unsafe { entry.as_ref() }.is_some_and(|e| e.start == start && e.len == len) {
            let _ = slot.compare_exchange(entry, null_mut(), Ordering::AcqRel, Ordering::Acquire);
            return;
        }
    }
}

#[allow(unsafe_code)]
fn install() {
    // SAFETY: installs a handler for SIGBUS only; `on_sigbus` is async-signal-safe (atomic loads of
    // immutable leaked data, write, _exit, pause, the previous handler, signal, raise). Zeroed sigactions
    // are valid starting values. SA_ONSTACK as Rust's own SIGBUS handler (the one we usually replace) asks.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
            PREVIOUS.store(Box::leak(Box::new(previous)), Ordering::Release);
        }
    }
}

/// The message of the registered mapping holding `addr`.
#[allow(unsafe_code)]
fn message_for(addr: usize) -> Option<&'static [u8]> {
    chunks().flat_map(|c| &c.slots).find_map(|slot| {
        // SAFETY: a published entry is leaked and immutable.
        let e: &'static Entry = unsafe { slot.load(Ordering::Acquire).as_ref() }?;
        (addr >= e.start && addr - e.start < e.len).then_some(&*e.msg)
    })
}

#[allow(unsafe_code)]
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; only atomics, leaked data and
    // async-signal-safe calls follow.
    unsafe {
        // BUS_ADRERR: a page past the end of its file. Hardware memory errors and a SIGBUS sent by kill are
        // not ours to explain.
        let lost_page = (*info).si_code == libc::BUS_ADRERR;
        if let Some(msg) = lost_page
            .then(|| message_for((*info).si_addr() as usize))
            .flatten()
        {
            if !REPORTED.swap(true, Ordering::AcqRel) {
                // The message promises that nothing was written: remove any partial output first.
                crate::process::partials::remove_all();
                let mut rest = msg;
                while !rest.is_empty() {
                    let n = libc::write(2, rest.as_ptr().cast(), rest.len());
                    if n <= 0 {
                        break;
                    }
                    rest = &rest[n as usize..];
                }
                libc::_exit(1);
            }
            // Another thread is printing the one line and ends the process; wait for it.
            loop {
                libc::pause();
            }
        }
        let previous = PREVIOUS.load(Ordering::Acquire).as_ref();
        match previous.map(|p| p.sa_sigaction) {
            Some(libc::SIG_IGN) if (*info).si_code <= 0 => return, // sent, and ignored before us
            Some(h) if h != libc::SIG_DFL && h != libc::SIG_IGN => {
                if previous.is_some_and(|p| p.sa_flags & libc::SA_SIGINFO != 0) {
                    let h: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(h);
                    h(sig, info, ctx);
                } else {
                    let h: extern "C" fn(libc::c_int) = std::mem::transmute(h);
                    h(sig);
                }
                return;
            }
            _ => {}
        }
        // Default action (core dump), as if no handler were installed: delivered when this returns.
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
