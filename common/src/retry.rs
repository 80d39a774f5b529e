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
use crate::telemetry::events::WriteNotDurable;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// The first pause after a failed attempt; it doubles up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds and returns its value, or `None` once
/// `token` is cancelled while it still fails. Every failed attempt is a
/// [`WriteNotDurable`] event (`failures` counts them, the log says `what`
/// failed and why); the pause between attempts ends early when the role
/// stops.
pub async fn until_durable<T, E, Fut>(
    token: &CancellationToken,
    what: &str,
    failures: &Counter,
    mut attempt: impl FnMut() -> Fut,
) -> Option<T>
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = FIRST_DELAY;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                WriteNotDurable {
                    what,
                    error: &error,
                    retry_in: delay,
                }
                .emit(failures);
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
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn retries_until_an_attempt_succeeds() {
        let token = CancellationToken::new();
        let (attempts, failures) = (AtomicUsize::new(0), Counter::default());
        let value = until_durable(&token, "a test write", &failures, || async {
            match attempts.fetch_add(1, Ordering::Relaxed) {
                0..=2 => Err("disk full"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(value, Some(3));
        assert_eq!(failures.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_keeps_failing_is_reported_undone_once_cancelled() {
        let token = CancellationToken::new();
        let failures = Arc::new(Counter::default());
        let counted = Arc::clone(&failures);
        let retrying = tokio::spawn({
            let token = token.clone();
            async move {
                until_durable(&token, "a test write", &counted, || async {
                    Err::<(), _>("disk full")
                })
                .await
            }
        });
        while failures.get() < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        token.cancel();
        assert_eq!(retrying.await.expect("join"), None);
    }
}
