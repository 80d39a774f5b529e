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

/// Each thread of this process whose name starts with `prefix`, with its
/// niceness (`/proc/self/task/<tid>/stat`, field 19): for tests that check
/// which work runs at background priority. Threads that end meanwhile are
/// left out.
#[cfg(target_os = "linux")]
pub fn threads_nice(prefix: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let nice_of = |path: std::path::PathBuf| -> Option<i32> {
        let comm = std::fs::read_to_string(path.join("comm")).ok()?;
        if !comm.starts_with(prefix) {
            return None;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        // Fields after the name, which ends with the last `)`: state is
        // field 3, niceness field 19.
        let after = stat.get(stat.rfind(')')? + 2..)?;
        after.split(' ').nth(19 - 3)?.parse().ok()
    };
    tasks
        .filter_map(|task| nice_of(task.ok()?.path()))
        .collect()
}

/// Why [`run_catching`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundFailure {
    #[error("the background thread `{name}` panicked: {message}")]
    Panicked { name: String, message: String },
    #[error("cannot start the background thread `{name}`: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// [`run`], for work whose panic the caller reports and survives (a
/// recompute that panics leaves the previous view serving): the panic
/// comes back as [`BackgroundFailure::Panicked`] instead of resuming here.
pub async fn run_catching<T, F>(name: &str, work: F) -> Result<T, BackgroundFailure>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let caught = run(name, move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
    });
    match caught.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(not a message)".to_owned());
            Err(BackgroundFailure::Panicked {
                name: name.to_owned(),
                message,
            })
        }
        Err(source) => Err(BackgroundFailure::Spawn {
            name: name.to_owned(),
            source,
        }),
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
    #[tokio::test]
    async fn caught_background_work_runs_at_background_priority_and_returns_a_panic() {
        let here = this_threads_nice();
        let there = run_catching("test", this_threads_nice)
            .await
            .expect("an answer");
        assert_eq!(there, (here + BACKGROUND_NICE).min(19));
        let failed = run_catching("test", || -> () { panic!("boom {}", 7) }).await;
        assert!(
            matches!(&failed, Err(BackgroundFailure::Panicked { message, .. }) if message == "boom 7"),
            "{failed:?}"
        );
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
