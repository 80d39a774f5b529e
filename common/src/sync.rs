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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

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

/// A reader-writer lock that hands itself over fairly when asked, and
/// refuses a poisoned state like the others here.
///
/// For work done in slices under a write lock that other threads wait for
/// between the slices (a view swap and the serving replica's follower):
/// std's lock, released and taken again at once, is most often taken again
/// by the same thread before a waiter woken by the release has run, so the
/// waiter waited for every slice after all. [`FairWriteGuard::unlock_fair`]
/// hands the lock to a waiting thread, if any. A thread that panics while
/// holding the write guard poisons the lock, as with std's.
#[derive(Debug, Default)]
pub struct FairRwLock<T> {
    lock: parking_lot::RwLock<T>,
    poisoned: AtomicBool,
}

/// A read guard of [`FairRwLock`].
pub struct FairReadGuard<'a, T>(parking_lot::RwLockReadGuard<'a, T>);

/// A write guard of [`FairRwLock`]: it poisons the lock if dropped while
/// its thread panics.
pub struct FairWriteGuard<'a, T> {
    /// Always `Some` until [`Self::unlock_fair`] takes it.
    guard: Option<parking_lot::RwLockWriteGuard<'a, T>>,
    poisoned: &'a AtomicBool,
}

impl<T> FairRwLock<T> {
    pub fn new(value: T) -> Self {
        Self {
            lock: parking_lot::RwLock::new(value),
            poisoned: AtomicBool::new(false),
        }
    }

    fn check(&self, what: &str) {
        if self.poisoned.load(Ordering::Acquire) {
            poisoned(what)
        }
    }

    /// Shared access, or stopping if a writer panicked (see the module).
    pub fn read_or_stop(&self, what: &str) -> FairReadGuard<'_, T> {
        let guard = self.lock.read();
        self.check(what);
        FairReadGuard(guard)
    }

    /// Exclusive access, or stopping if a writer panicked.
    pub fn write_or_stop(&self, what: &str) -> FairWriteGuard<'_, T> {
        let guard = self.lock.write();
        self.check(what);
        FairWriteGuard {
            guard: Some(guard),
            poisoned: &self.poisoned,
        }
    }
}

impl<T> FairWriteGuard<'_, T> {
    /// Releases the lock to a thread waiting for it, if any, rather than
    /// to whichever thread takes it first (most often this one, again).
    pub fn unlock_fair(mut self) {
        if let Some(guard) = self.guard.take() {
            parking_lot::RwLockWriteGuard::unlock_fair(guard);
        }
    }
}

impl<T> std::ops::Deref for FairReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::Deref for FairWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held until unlocked")
    }
}

impl<T> std::ops::DerefMut for FairWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held until unlocked")
    }
}

impl<T> Drop for FairWriteGuard<'_, T> {
    fn drop(&mut self) {
        if self.guard.is_some() && std::thread::panicking() {
            self.poisoned.store(true, Ordering::Release);
        }
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
        let l = FairRwLock::new(1);
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

    #[test]
    fn a_fair_lock_is_poisoned_by_a_panicking_writer_only() {
        let l = Arc::new(FairRwLock::new(0));
        *l.write_or_stop("a number") += 1;
        l.write_or_stop("a number").unlock_fair();
        assert_eq!(*l.read_or_stop("a number"), 1, "healthy");
        let writer = Arc::clone(&l);
        let _ = std::thread::spawn(move || {
            let _g = writer.write_or_stop("the replica");
            panic!("half-way through a change");
        })
        .join();
        let read = std::panic::AssertUnwindSafe(|| *l.read_or_stop("the replica"));
        let refused = std::panic::catch_unwind(read).expect_err("a poisoned lock must not be used");
        let message = refused.downcast_ref::<String>().expect("a message");
        assert!(message.contains("the replica") && message.contains("poisoned"));
    }

    /// Work in slices under the write lock: a fair unlock hands the lock to
    /// the thread parked on it, so it is still locked (by the waiter) the
    /// moment after, and the slicing thread cannot take it again first.
    /// (std's unlock leaves it free until the woken waiter runs; under load
    /// the slicing thread took it again first, slice after slice.
    /// parking_lot's plain unlock is fair too after a hold this long, by its
    /// eventual fairness; `unlock_fair` makes it so after any hold.)
    #[test]
    fn a_fair_unlock_hands_the_lock_to_the_waiting_writer() {
        let lock = Arc::new(FairRwLock::new(0u32));
        let first = lock.write_or_stop("the slices");
        let waiter = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let mut g = lock.write_or_stop("the slices");
                *g += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            })
        };
        // Long enough for the waiter to park on the lock.
        std::thread::sleep(std::time::Duration::from_millis(200));
        first.unlock_fair();
        assert!(
            lock.lock.is_locked(),
            "handed to the waiter, not left for whoever comes first"
        );
        assert!(lock.lock.try_write().is_none());
        waiter.join().expect("waiter");
        assert_eq!(*lock.read_or_stop("the slices"), 1);
    }
}
