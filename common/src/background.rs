//! Background work that must not delay the latency-sensitive path.
//!
//! Recomputes (the batch layer's MapReduce) and realtime-store compactions
//! run on threads of their own at a lower scheduling priority: they still
//! use every idle cycle, but when the speed or serving layer needs a core,
//! the kernel gives it to them first (at nice 10 a thread weighs about a
//! tenth of a normal one). On a 2-core machine running all three layers,
//! recomputes and compactions at normal priority held the cores for
//! hundreds of milliseconds and delayed new events by as much.
//!
//! What background work must not do is hold a lock the latency path takes:
//! a thread at nice 10 preempted while holding it makes the path wait
//! behind its low priority. Work that ends in such a lock prepares at
//! background priority and hands what it prepared to a thread at normal
//! priority that takes the lock (the realtime store's compactions write
//! their batch that way: sled's batches take a lock of the whole process).

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

/// Runs `work` on a thread of its own at background priority and waits for
/// it without holding a runtime thread: for CPU-heavy work off the latency
/// path that holds no lock the latency path needs (a thread at nice 10
/// holding such a lock would make the path wait behind its low priority).
/// A panic in `work` resumes here; an error only when the thread cannot
/// be started.
pub async fn run<T, F>(name: &str, work: F) -> std::io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tell, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_threads_priority();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = tell.send(outcome);
        })?;
    match answer.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(std::io::Error::other(format!(
            "the background thread `{name}` ended without an answer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_work_runs_at_background_priority_and_returns_its_answer() {
        let here = this_threads_nice();
        let there = run("test", this_threads_nice).await.expect("thread");
        assert_eq!(there, (here + BACKGROUND_NICE).min(19));
        assert_eq!(this_threads_nice(), here);
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn a_panic_in_background_work_resumes_in_the_caller() {
        let _: () = run("test", || panic!("boom")).await.expect("thread");
    }

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
