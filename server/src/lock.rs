//! Locking a std mutex whose last holder panicked.
//!
//! std marks a mutex poisoned when a thread panics while holding it, and every later
//! `lock().expect(..)` then panics as well. For the hub's shards and registry, an
//! outbox or the lifecycle, that turns one panic (one delivery, one connection's
//! bookkeeping) into a failure of every later delivery to a 64th of the groups, of
//! every connect, or of every drain, for as long as the process runs. So these locks
//! are taken with [`lock`], which takes the guard back instead.
//!
//! That is sound for them because of what their critical sections are: a few
//! operations on collections and counters owned by the lock, with no await, no I/O
//! and no caller-supplied code inside. Memory safety never depends on poisoning;
//! only the data's own invariants could, and a section interrupted halfway (which
//! only a bug could do: allocation failure aborts) leaves at worst one connection's
//! entry stale, a membership or count that its own leave or unregister settles, or
//! one queue with a frame too few. Carrying on with that is better than refusing
//! every later caller, and it is what a non-poisoning mutex (`parking_lot`) would do
//! silently; here the first recovery is logged, with where it happened.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the guard if a holder panicked (see the module).
#[track_caller]
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| {
        // Cleared so this is logged once per panic, not on every later lock.
        mutex.clear_poison();
        tracing::error!(
            at = %std::panic::Location::caller(),
            "a lock's holder panicked; carrying on with its data"
        );
        poisoned.into_inner()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data_and_cleared() {
        let m = Mutex::new(vec![1]);
        let _ = std::panic::catch_unwind(|| {
            let mut g = m.lock().unwrap();
            g.push(2);
            panic!("holder panics");
        });
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), [1, 2]);
        assert!(!m.is_poisoned());
    }
}
