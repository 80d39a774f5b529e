//! Graceful shutdown: ctrl-c and SIGTERM cancel a [`CancellationToken`]; tasks
//! watch the token, finish their current unit of work, and are given a grace
//! period before they are aborted.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first ctrl-c (SIGINT) or SIGTERM.
/// Must be called inside a tokio runtime.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "Shutting down.");
        cancel.cancel();
    });
    token
}

/// Resolves when the process receives ctrl-c or SIGTERM, naming which.
pub async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; only ctrl-c will stop the process.");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Waits for every task in `tasks` once `token` is cancelled, for at most
/// `grace`; aborts the rest, and returns each task's result.
/// A task that ends (or panics) before cancellation cancels the token, so one
/// failed component stops the process instead of leaving it half alive, and
/// it is recorded in `failure` (unless the component recorded its own reason
/// first), as is any panic: the role then exits non-zero with the reason.
pub async fn supervise<T: 'static>(
    mut tasks: JoinSet<T>,
    token: CancellationToken,
    grace: Duration,
    failure: &FailureSlot,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::new();
    tokio::select! {
        _ = token.cancelled() => {}
        Some(first) = tasks.join_next() => {
            if !token.is_cancelled() {
                tracing::warn!("A component stopped; shutting down the others.");
                if !first.as_ref().is_err_and(|e| e.is_panic()) {
                    // (A panic is recorded with its message below.)
                    failure.record("a component stopped before shutdown was asked for");
                }
            }
            token.cancel();
            results.push(first);
        }
    }
    let drain = async {
        while let Some(r) = tasks.join_next().await {
            results.push(r);
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            grace_ms = grace.as_millis() as u64,
            "Grace period over; aborting the remaining tasks."
        );
        tasks.abort_all();
        while let Some(r) = tasks.join_next().await {
            results.push(r);
        }
    }
    for panic in results.iter().filter_map(|r| r.as_ref().err()) {
        if panic.is_panic() {
            tracing::error!(%panic, "A component panicked.");
            failure.record(format!("a component panicked: {panic}"));
        }
    }
    results
}

/// The first failure of a role's components, kept so the role can exit
/// non-zero with the reason once [`supervise`] has stopped the rest.
#[derive(Debug, Clone, Default)]
pub struct FailureSlot(std::sync::Arc<std::sync::OnceLock<String>>);

impl FailureSlot {
    /// Records `reason` unless a failure was recorded already (the first
    /// one is the cause; what follows is usually its consequence).
    pub fn record(&self, reason: impl std::fmt::Display) {
        let _ = self.0.set(reason.to_string());
    }

    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Runs `fut` until it completes or `token` is cancelled.
pub async fn until_cancelled<F: Future>(token: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        _ = token.cancelled() => None,
        out = fut => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cooperative_tasks_finish_within_grace() {
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for i in 0..3 {
            let t = token.clone();
            tasks.spawn(async move {
                t.cancelled().await;
                i
            });
        }
        token.cancel();
        let results = supervise(
            tasks,
            token,
            Duration::from_secs(5),
            &FailureSlot::default(),
        )
        .await;
        let mut values: Vec<i32> = results.into_iter().map(|r| r.expect("finished")).collect();
        values.sort();
        assert_eq!(values, [0, 1, 2]);
    }

    #[tokio::test]
    async fn stuck_tasks_are_aborted_after_grace() {
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(std::future::pending::<()>());
        token.cancel();
        let results = supervise(
            tasks,
            token,
            Duration::from_millis(50),
            &FailureSlot::default(),
        )
        .await;
        assert_eq!(results.len(), 1);
        assert!(results[0].as_ref().is_err_and(|e| e.is_cancelled()));
    }

    #[tokio::test]
    async fn a_failed_component_cancels_the_rest() {
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(async { "failed" });
        let t = token.clone();
        tasks.spawn(async move {
            t.cancelled().await;
            "stopped"
        });
        let failure = FailureSlot::default();
        let results = supervise(tasks, token.clone(), Duration::from_secs(5), &failure).await;
        assert!(token.is_cancelled());
        assert_eq!(results.len(), 2);
        assert_eq!(
            failure.get(),
            Some("a component stopped before shutdown was asked for")
        );
    }

    #[tokio::test]
    async fn a_panicked_component_is_the_roles_failure() {
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(async { panic!("the replica is inconsistent") });
        let t = token.clone();
        tasks.spawn(async move { t.cancelled().await });
        let failure = FailureSlot::default();
        supervise(tasks, token.clone(), Duration::from_secs(5), &failure).await;
        assert!(token.is_cancelled());
        let reason = failure.get().expect("a recorded failure");
        assert!(reason.contains("the replica is inconsistent"), "{reason}");
    }

    #[tokio::test]
    async fn a_components_own_reason_comes_first() {
        let token = CancellationToken::new();
        let failure = FailureSlot::default();
        let mut tasks = JoinSet::new();
        let own = failure.clone();
        tasks.spawn(async move { own.record("ingestion failed: disk full") });
        supervise(tasks, token, Duration::from_secs(5), &failure).await;
        assert_eq!(failure.get(), Some("ingestion failed: disk full"));
    }
}
