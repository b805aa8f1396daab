//! Turns the SIGBUS a mapped file raises when it was truncated under us into one clear line naming the file
//! and exit status 1. Any other SIGBUS (not in a registered mapping) keeps the default action.
//!
//! The handler may run at any moment on any thread, so the registry is a fixed table of atomics and the
//! messages are leaked: nothing it reads is ever freed or locked.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Once;

const SLOTS: usize = 256;
/// One registered mapping: start address, length, and the leaked message naming its file.
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    msg: AtomicPtr<u8>,
    msg_len: AtomicUsize,
}
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    msg: AtomicPtr::new(std::ptr::null_mut()),
    msg_len: AtomicUsize::new(0),
};
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static INSTALL: Once = Once::new();

/// Names `path` as the file behind `map`, so a SIGBUS inside it prints that name. Installs the handler on
/// first use.
pub(super) fn register(map: &[u8], path: &std::path::Path) {
    INSTALL.call_once(install);
    let msg = format!(
        "wstream: error: {}: weight file changed while mapped (truncated or rewritten in place); \
         nothing was written, rerun once it is complete\n",
        path.display()
    );
    // Leaked on purpose: the handler may read it at any time, even after the mapping is gone.
    let msg: &'static mut [u8] = Box::leak(msg.into_bytes().into_boxed_slice());
    for slot in &TABLE {
        if slot
            .start
            .compare_exchange(
                0,
                map.as_ptr() as usize,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            slot.msg_len.store(msg.len(), Ordering::Release);
            slot.msg.store(msg.as_mut_ptr(), Ordering::Release);
            slot.len.store(map.len(), Ordering::Release);
            return;
        }
    }
    // Table full: this mapping just has no friendly message.
}

/// Forgets `map` (about to be unmapped); its slot is reused by a later mapping.
pub(super) fn unregister(map: &[u8]) {
    for slot in &TABLE {
        if slot.start.load(Ordering::Acquire) == map.as_ptr() as usize {
            slot.len.store(0, Ordering::Release);
            slot.start.store(0, Ordering::Release);
        }
    }
}

#[allow(unsafe_code)]
fn install() {
    // SAFETY: installs a handler for SIGBUS only; `on_sigbus` is async-signal-safe (atomics, write,
    // _exit, signal, raise). A zeroed sigaction is a valid starting value.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

#[allow(unsafe_code)]
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; only atomics and
    // async-signal-safe calls follow.
    unsafe {
        let addr = (*info).si_addr() as usize;
        for slot in &TABLE {
            let start = slot.start.load(Ordering::Acquire);
            let len = slot.len.load(Ordering::Acquire);
            if start != 0 && addr >= start && addr < start + len {
                // The message promises that nothing was written: remove any partial output first.
                crate::process::partials::remove_all();
                let msg = slot.msg.load(Ordering::Acquire);
                libc::write(
                    2,
                    msg as *const libc::c_void,
                    slot.msg_len.load(Ordering::Acquire),
                );
                libc::_exit(1);
            }
        }
        // Not ours: default action (core dump), as if no handler were installed.
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
