//! Retrying a write until it is durable, or reporting that it never was.
//!
//! Every layer makes progress durable before it acts on it: the batch layer
//! appends to the master log before it reads on, the speed layer checkpoints
//! before it publishes, a serving replica stores counts before it answers
//! with them. A failed write is retried (consumption waits meanwhile:
//! backpressure, not loss) until it succeeds, or until the role is stopping
//! — and then the caller learns that it did **not** happen, so nothing that
//! depends on it may happen either.

use crate::metrics::Counter;
use crate::shutdown::CancellationToken;
use crate::sync::LockOrStop;
use crate::telemetry::events::WriteNotDurable;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

/// The first pause after a failed attempt; it doubles up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// The durable writes of a role that are failing right now. While one is,
/// the role is not ready (`/readyz` answers 503 with the reason) and its
/// `/healthz` says it is degraded: its progress has stopped, though it is
/// alive and retrying.
#[derive(Debug, Clone, Default)]
pub struct Stalls(Arc<Mutex<BTreeMap<String, Stall>>>);

#[derive(Debug, Clone)]
struct Stall {
    error: String,
    since: Instant,
}

impl Stalls {
    fn set(&self, what: &str, error: &dyn Display) {
        let mut stalls = self.0.lock_or_stop("the stalled writes");
        let since = stalls.get(what).map_or_else(Instant::now, |s| s.since);
        let error = error.to_string();
        stalls.insert(what.to_owned(), Stall { error, since });
    }

    fn clear(&self, what: &str) {
        self.0.lock_or_stop("the stalled writes").remove(what);
    }

    /// Why the role is not ready, if a durable write is failing.
    pub fn reason(&self) -> Option<String> {
        let stalls = self.0.lock_or_stop("the stalled writes");
        let (what, stall) = stalls.iter().next()?;
        Some(format!(
            "cannot write {what} for {} s: {}; retrying",
            stall.since.elapsed().as_secs(),
            stall.error
        ))
    }
}

/// A write that must become durable, and what reports on it.
#[derive(Debug, Clone, Copy)]
pub struct DurableWrite<'a> {
    /// What is written ("the checkpoint", "the master log").
    pub what: &'a str,
    /// Counts the failed attempts.
    pub failures: &'a Counter,
    /// Holds the failure while the write is failing.
    pub stalls: &'a Stalls,
}

/// Runs `attempt` until it succeeds and returns its value, or `None` once
/// `token` is cancelled while it still fails. Every failed attempt is a
/// [`WriteNotDurable`] event (counted, logged with what failed and why), and
/// the write is a stall (readiness says so) until an attempt succeeds; the
/// pause between attempts ends early when the role stops.
pub async fn until_durable<T, E, Fut>(
    token: &CancellationToken,
    write: DurableWrite<'_>,
    mut attempt: impl FnMut() -> Fut,
) -> Option<T>
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = FIRST_DELAY;
    loop {
        match attempt().await {
            Ok(value) => {
                if delay != FIRST_DELAY {
                    write.stalls.clear(write.what);
                }
                return Some(value);
            }
            Err(error) => {
                write.stalls.set(write.what, &error);
                WriteNotDurable {
                    what: write.what,
                    error: &error,
                    retry_in: delay,
                }
                .emit(write.failures);
                if token.is_cancelled() {
                    return None;
                }
                tokio::select! {
                    _ = token.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_DELAY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_until_an_attempt_succeeds_and_the_stall_ends() {
        let token = CancellationToken::new();
        let (attempts, failures, stalls) =
            (AtomicUsize::new(0), Counter::default(), Stalls::default());
        let write = DurableWrite {
            what: "a test write",
            failures: &failures,
            stalls: &stalls,
        };
        let value = until_durable(&token, write, || async {
            match attempts.fetch_add(1, Ordering::Relaxed) {
                0..=2 => Err("disk full"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(value, Some(3));
        assert_eq!(failures.get(), 3);
        assert_eq!(stalls.reason(), None, "a write that succeeded is no stall");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_keeps_failing_is_a_stall_and_reported_undone_once_cancelled() {
        let token = CancellationToken::new();
        let failures = Arc::new(Counter::default());
        let stalls = Stalls::default();
        let retrying = tokio::spawn({
            let (token, failures, stalls) = (token.clone(), Arc::clone(&failures), stalls.clone());
            async move {
                let write = DurableWrite {
                    what: "a test write",
                    failures: &failures,
                    stalls: &stalls,
                };
                until_durable(&token, write, || async { Err::<(), _>("disk full") }).await
            }
        });
        while failures.get() < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reason = stalls.reason().expect("a failing write is a stall");
        assert!(reason.contains("cannot write a test write"), "{reason}");
        assert!(reason.contains("disk full"), "{reason}");
        token.cancel();
        assert_eq!(retrying.await.expect("join"), None);
    }
}
