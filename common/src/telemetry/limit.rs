//! Rate-limited logging for events that can happen once per record.
//!
//! A poison-pill flood or a broken client must not turn the log into the
//! bottleneck (or bury everything else in it), yet the first occurrences are
//! what an operator needs to see. A [`LogLimit`] lets [`LogLimit::BURST`]
//! lines through per [`LogLimit::WINDOW`]; the first line allowed after a
//! suppressed stretch says how many were left out. The metric that goes with
//! each event is never limited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The state of one rate-limited log site.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// Milliseconds since the process's clock origin when the window began.
    window_start_ms: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

/// What a log site may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Log it, saying how many lines were suppressed before it.
    Log { suppressed: u64 },
    /// Do not log it (it was counted as suppressed).
    Quiet,
}

impl LogLimit {
    /// Lines allowed per window.
    pub const BURST: u64 = 10;
    /// The window, in milliseconds.
    pub const WINDOW: u64 = 10_000;

    pub const fn new() -> Self {
        Self {
            window_start_ms: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be logged now.
    pub fn allow(&self) -> Allowed {
        self.allow_at(now_ms())
    }

    fn allow_at(&self, now: u64) -> Allowed {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= Self::WINDOW
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < Self::BURST {
            Allowed::Log {
                suppressed: self.suppressed.swap(0, Ordering::Relaxed),
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Allowed::Quiet
        }
    }
}

/// Milliseconds since the first call, from a monotonic clock (never 0, so a
/// fresh limit's first window starts at once).
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_millis() as u64 + LogLimit::WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_quiet_then_the_count_of_what_was_left_out() {
        let limit = LogLimit::new();
        let t0 = 50_000;
        for _ in 0..LogLimit::BURST {
            assert_eq!(limit.allow_at(t0), Allowed::Log { suppressed: 0 });
        }
        for _ in 0..25 {
            assert_eq!(limit.allow_at(t0 + 1), Allowed::Quiet);
        }
        assert_eq!(
            limit.allow_at(t0 + LogLimit::WINDOW),
            Allowed::Log { suppressed: 25 },
            "the next window's first line reports the suppressed ones"
        );
        assert_eq!(
            limit.allow_at(t0 + LogLimit::WINDOW + 1),
            Allowed::Log { suppressed: 0 }
        );
    }
}
