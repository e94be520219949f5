//! Handing the memory the connect burst freed back to the OS.
//!
//! The generator's allocator (mimalloc) keeps freed pages per thread for reuse, so
//! what the dials in flight used (handshake buffers above all) would stay resident
//! after connecting and be counted against the connections held. `mi_collect` frees
//! only the calling thread's pages: [`release`] collects on the calling thread at
//! once and asks every runtime thread to collect once when it next parks
//! ([`on_park`], which the binary installs as the runtime's `on_thread_park`).
//! Memory mimalloc did not allocate (tests run on the system allocator) is untouched.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped by each [`release`]; a thread collects when it has not seen the latest.
static EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Frees what this thread's heap no longer uses now, and every runtime thread's when
/// it next parks.
pub fn release() {
    let epoch = EPOCH.fetch_add(1, Ordering::Relaxed) + 1;
    SEEN.with(|s| s.set(epoch));
    collect();
}

/// For the runtime's `on_thread_park`: collects once per [`release`]; otherwise an
/// atomic load.
pub fn on_park() {
    let epoch = EPOCH.load(Ordering::Relaxed);
    SEEN.with(|s| {
        if s.get() != epoch {
            s.set(epoch);
            collect();
        }
    });
}

fn collect() {
    // SAFETY: mi_collect has no preconditions; it frees only memory mimalloc owns
    // and no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
