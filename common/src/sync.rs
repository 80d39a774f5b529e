//! Locks that refuse a poisoned state.
//!
//! A lock is poisoned when a thread panicked while holding it: what it
//! guards (a replica that carries the merge invariant, a status, a log) may
//! be half changed. Carrying on with it, as `into_inner()` on the poison
//! would, can serve or persist a wrong count. So these helpers panic too,
//! naming the lock, and the panic stops the role: [`crate::shutdown::supervise`]
//! records a component's panic as the role's failure. Every layer's durable
//! state is crash-safe (the crash suite kills roles with SIGKILL), so
//! stopping is always safe; a restart resumes exactly.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

fn poisoned(what: &str) -> ! {
    panic!(
        "the lock on {what} is poisoned: a thread panicked while changing it, \
         so the role stops rather than use a state that may be half changed"
    )
}

/// Taking a lock, or stopping (see the module) if it is poisoned. `what`
/// names the guarded state in the panic message.
pub trait LockOrStop<T> {
    fn lock_or_stop(&self, what: &str) -> MutexGuard<'_, T>;
    /// The value of a lock no longer shared.
    fn into_inner_or_stop(self, what: &str) -> T;
}

impl<T> LockOrStop<T> for Mutex<T> {
    fn lock_or_stop(&self, what: &str) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|_| poisoned(what))
    }

    fn into_inner_or_stop(self, what: &str) -> T {
        self.into_inner().unwrap_or_else(|_| poisoned(what))
    }
}

/// [`LockOrStop`] for reader-writer locks.
pub trait ReadWriteOrStop<T> {
    fn read_or_stop(&self, what: &str) -> RwLockReadGuard<'_, T>;
    fn write_or_stop(&self, what: &str) -> RwLockWriteGuard<'_, T>;
}

impl<T> ReadWriteOrStop<T> for RwLock<T> {
    fn read_or_stop(&self, what: &str) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|_| poisoned(what))
    }

    fn write_or_stop(&self, what: &str) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|_| poisoned(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poison<T: Send + Sync + 'static>(m: Arc<Mutex<T>>) {
        let _ = std::thread::spawn(move || {
            let _g = m.lock().expect("first lock");
            panic!("half-way through a change");
        })
        .join();
    }

    #[test]
    fn a_healthy_lock_is_taken() {
        let m = Mutex::new(1);
        *m.lock_or_stop("a number") += 1;
        assert_eq!(*m.lock_or_stop("a number"), 2);
        let l = RwLock::new(1);
        *l.write_or_stop("a number") += 1;
        assert_eq!(*l.read_or_stop("a number"), 2);
    }

    #[test]
    fn a_poisoned_lock_is_refused_naming_it() {
        let m = Arc::new(Mutex::new(0));
        poison(Arc::clone(&m));
        let refused = std::panic::catch_unwind(|| *m.lock_or_stop("the replica"))
            .expect_err("a poisoned lock must not be used");
        let message = refused
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(message.contains("the replica"), "{message}");
        assert!(message.contains("poisoned"), "{message}");
    }
}
