//! Event-time windows: the arithmetic every layer must agree on, as it
//! agrees on bucket sizes (the groundwork of issue 17; no layer counts per
//! window yet).
//!
//! Event time is a record's Kafka timestamp, in milliseconds since the
//! epoch. With a window size `W`, the event at `t` falls in window
//! `⌊t / W⌋`, covering `[k·W, (k+1)·W)`. A queried range `[from, to)` is
//! rounded down to window boundaries at both ends ([`Range::rounded`]).
//!
//! The **watermark** of a partition is the newest timestamp seen there minus
//! the allowed lateness; a range is **complete** once every partition's
//! watermark has reached its end ([`Range::is_complete`]). An event is
//! **late** when it arrives after its window was complete
//! ([`EventWatermark::observe`]); late events are still counted — the
//! watermark only decides what an answer calls complete.

use crate::cut::Partition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;
use thiserror::Error;

/// Milliseconds since the Unix epoch (a Kafka record timestamp).
pub type Millis = i64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeError {
    #[error("`{0}` is neither RFC 3339 (2026-12-02T10:00:00Z) nor milliseconds since the epoch")]
    Unreadable(String),
    #[error("`{0}` is before the Unix epoch")]
    BeforeEpoch(String),
    #[error("the window size must be at least 1 ms and at most a year, not `{0}`")]
    WindowSize(String),
}

/// The window size, at least 1 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowSize(NonZeroU64);

impl WindowSize {
    /// One minute, the default.
    pub const MINUTE: WindowSize = WindowSize(match NonZeroU64::new(60_000) {
        Some(ms) => ms,
        None => unreachable!(),
    });

    pub fn from_millis(ms: u64) -> Option<Self> {
        NonZeroU64::new(ms).map(Self)
    }

    pub fn millis(self) -> u64 {
        self.0.get()
    }

    /// The window of an event at `t` (timestamps before the epoch fall in
    /// window 0: Kafka's "no timestamp" is -1).
    pub fn window_of(self, t: Millis) -> Window {
        Window(t.max(0) as u64 / self.millis())
    }

    /// The first millisecond of `window`.
    pub fn start_of(self, window: Window) -> Millis {
        window.0.saturating_mul(self.millis()).min(i64::MAX as u64) as Millis
    }
}

impl std::str::FromStr for WindowSize {
    type Err = TimeError;

    /// `1m`, `30s`, `1h`, `500ms` (humantime's format).
    fn from_str(s: &str) -> Result<Self, TimeError> {
        let d: Duration =
            humantime::parse_duration(s).map_err(|_| TimeError::WindowSize(s.to_owned()))?;
        let ms = d.as_millis();
        if ms == 0 || ms > 366 * 24 * 3_600_000 {
            return Err(TimeError::WindowSize(s.to_owned()));
        }
        Ok(Self::from_millis(ms as u64).expect("checked non-zero"))
    }
}

/// A window's index: window `k` covers `[k·W, (k+1)·W)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window(pub u64);

/// A queried time range of whole windows, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: Window,
    /// The first window after the range.
    pub to: Window,
}

impl Range {
    /// `[from, to)` in milliseconds, both rounded down to window boundaries
    /// (so the range states exactly which events it covers); `None` when it
    /// holds no whole window.
    pub fn rounded(size: WindowSize, from: Millis, to: Millis) -> Option<Self> {
        let (from, to) = (size.window_of(from), size.window_of(to));
        (from < to).then_some(Self { from, to })
    }

    /// The effective range in milliseconds, `[start, end)`.
    pub fn millis(self, size: WindowSize) -> (Millis, Millis) {
        (size.start_of(self.from), size.start_of(self.to))
    }

    pub fn windows(self) -> impl Iterator<Item = Window> {
        (self.from.0..self.to.0).map(Window)
    }

    pub fn contains(self, window: Window) -> bool {
        self.from <= window && window < self.to
    }

    /// Whether every event of the range has arrived, as far as the
    /// watermarks can tell: each partition's watermark has reached the
    /// range's end. A partition without a watermark has seen nothing yet,
    /// so the range is not complete.
    pub fn is_complete(
        self,
        size: WindowSize,
        watermarks: &Watermarks,
        partitions: &[Partition],
    ) -> bool {
        let (_, end) = self.millis(size);
        !partitions.is_empty()
            && partitions
                .iter()
                .all(|p| watermarks.0.get(p).is_some_and(|&w| w >= end))
    }
}

/// Per partition, the event-time watermark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks(pub BTreeMap<Partition, Millis>);

/// The watermark of one partition as events arrive: the newest timestamp
/// seen minus the allowed lateness, never going back.
#[derive(Debug, Clone, Copy)]
pub struct EventWatermark {
    lateness: Millis,
    newest: Option<Millis>,
}

/// What [`EventWatermark::observe`] says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    OnTime,
    /// Its window was already complete when it arrived: it is counted all
    /// the same, and reported as late.
    Late,
}

impl EventWatermark {
    pub fn new(allowed_lateness: Duration) -> Self {
        Self {
            lateness: allowed_lateness.as_millis().min(i64::MAX as u128) as Millis,
            newest: None,
        }
    }

    /// The watermark: the newest timestamp seen minus the allowed lateness.
    pub fn watermark(&self) -> Option<Millis> {
        self.newest.map(|n| n.saturating_sub(self.lateness))
    }

    /// Notes an event at `t`; says whether it is late (its window ended at
    /// or before the watermark as it stood when the event arrived).
    pub fn observe(&mut self, size: WindowSize, t: Millis) -> Arrival {
        let window_end = size.start_of(Window(size.window_of(t).0 + 1));
        let arrival = match self.watermark() {
            Some(w) if window_end <= w => Arrival::Late,
            _ => Arrival::OnTime,
        };
        self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        arrival
    }
}

/// Parses a range bound: RFC 3339 (`2026-12-02T10:00:00Z`, fractional
/// seconds and offsets allowed) or milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<Millis, TimeError> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return if ms < 0 {
            Err(TimeError::BeforeEpoch(s.to_owned()))
        } else {
            Ok(ms)
        };
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| TimeError::Unreadable(s.to_owned()))?;
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| TimeError::BeforeEpoch(s.to_owned()))?;
    Ok(since.as_millis().min(i64::MAX as u128) as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every timestamp falls in exactly the window whose span holds it.
        #[test]
        fn a_timestamp_lies_in_its_window(t in 0i64..4_000_000_000_000, w in 1u64..10_000_000) {
            let size = WindowSize::from_millis(w).expect("non-zero");
            let window = size.window_of(t);
            prop_assert!(size.start_of(window) <= t);
            prop_assert!(t < size.start_of(Window(window.0 + 1)));
        }

        /// A rounded range holds exactly the windows between its rounded
        /// ends, and states them in milliseconds on window boundaries.
        #[test]
        fn ranges_round_down_at_both_ends(from in 0i64..10_000_000, len in 0i64..10_000_000, w in 1u64..100_000) {
            let size = WindowSize::from_millis(w).expect("non-zero");
            let to = from + len;
            match Range::rounded(size, from, to) {
                None => prop_assert_eq!(size.window_of(from), size.window_of(to)),
                Some(r) => {
                    let (start, end) = r.millis(size);
                    prop_assert!(start <= from && from - start < w as i64);
                    prop_assert!(end <= to && to - end < w as i64);
                    prop_assert_eq!(r.windows().count() as i64, (end - start) / w as i64);
                }
            }
        }

        /// An event is late exactly when its window ended at or before the
        /// watermark it arrived under; the watermark never goes back.
        #[test]
        fn late_means_its_window_was_complete_on_arrival(
            times in proptest::collection::vec(0i64..1_000_000, 1..200),
            lateness in 0u64..100_000,
        ) {
            let size = WindowSize::from_millis(10_000).expect("non-zero");
            let mut mark = EventWatermark::new(Duration::from_millis(lateness));
            let mut newest: Option<i64> = None;
            for t in times {
                let before = mark.watermark();
                prop_assert_eq!(before, newest.map(|n| n - lateness as i64));
                let end = size.start_of(Window(size.window_of(t).0 + 1));
                let late = before.is_some_and(|w| end <= w);
                prop_assert_eq!(mark.observe(size, t) == Arrival::Late, late);
                newest = Some(newest.map_or(t, |n| n.max(t)));
                prop_assert!(mark.watermark() >= before);
            }
        }
    }

    #[test]
    fn a_range_is_complete_once_every_partition_has_passed_its_end() {
        let size = WindowSize::MINUTE;
        let r = Range::rounded(size, 0, 120_000).expect("two windows");
        let mut marks = Watermarks::default();
        assert!(!r.is_complete(size, &marks, &[0, 1]), "nothing seen");
        marks.0.insert(0, 150_000);
        assert!(!r.is_complete(size, &marks, &[0, 1]), "partition 1 unseen");
        marks.0.insert(1, 119_999);
        assert!(
            !r.is_complete(size, &marks, &[0, 1]),
            "partition 1 short by 1 ms"
        );
        marks.0.insert(1, 120_000);
        assert!(r.is_complete(size, &marks, &[0, 1]));
        assert!(
            !r.is_complete(size, &marks, &[]),
            "no partitions: nothing known"
        );
    }

    #[test]
    fn times_parse_as_rfc3339_or_milliseconds() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1764669600000"), Ok(1_764_669_600_000));
        assert_eq!(parse_time("2025-12-02T10:00:00Z"), Ok(1_764_669_600_000));
        assert_eq!(
            parse_time("2025-12-02T10:00:00.250Z"),
            Ok(1_764_669_600_250)
        );
        assert!(matches!(parse_time("-5"), Err(TimeError::BeforeEpoch(_))));
        assert!(matches!(
            parse_time("yesterday"),
            Err(TimeError::Unreadable(_))
        ));
        assert_eq!("1m".parse::<WindowSize>(), Ok(WindowSize::MINUTE));
        assert_eq!(
            "250ms".parse::<WindowSize>().map(WindowSize::millis),
            Ok(250)
        );
        assert!("0s".parse::<WindowSize>().is_err());
        assert!("2years".parse::<WindowSize>().is_err());
        assert_eq!(
            WindowSize::MINUTE.window_of(-1),
            Window(0),
            "Kafka's no-timestamp"
        );
    }
}
