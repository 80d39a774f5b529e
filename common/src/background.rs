//! Background work that must not delay the latency-sensitive path.
//!
//! Recomputes (the batch layer's MapReduce) and realtime-store compactions
//! run on threads of their own at a lower scheduling priority: they still
//! use every idle cycle, but when the speed or serving layer needs a core,
//! the kernel gives it to them first (at nice 10 a thread weighs about a
//! tenth of a normal one). On a 2-core machine running all three layers,
//! recomputes and compactions at normal priority held the cores for
//! hundreds of milliseconds and delayed new events by as much.

/// How much background threads lower their priority, in niceness (0 is
/// normal, 19 the lowest).
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`BACKGROUND_NICE`] (Linux:
/// niceness is per thread; elsewhere nothing). Failing to is harmless, so
/// it is only logged.
pub fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let lowered = getpriority_process(me)
            .and_then(|nice| setpriority_process(me, (nice + BACKGROUND_NICE).min(19)));
        if let Err(error) = lowered {
            tracing::warn!(%error, "Cannot lower a background thread's priority.");
        }
    }
}

/// The calling thread's niceness (Linux; 0 elsewhere).
pub fn this_threads_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_lowers_only_its_own_priority() {
        let here = this_threads_nice();
        let there = std::thread::spawn(|| {
            lower_this_threads_priority();
            this_threads_nice()
        })
        .join()
        .expect("thread");
        assert_eq!(there, (here + BACKGROUND_NICE).min(19));
        assert_eq!(this_threads_nice(), here);
    }
}
