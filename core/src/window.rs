//! Event-time windows: the arithmetic and the keys every layer must agree
//! on, as it agrees on bucket sizes.
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
//!
//! # Windows are one more key of the same counts
//!
//! A word's count in a window is counted, bucketed, published, merged and
//! cut exactly like its all-time count, under another key ([`Key`]):
//! `#<window>@<word>`, and the late events of a window under `#<window>!`.
//! Words are alphanumeric, so no word starts with `#`: the keys never meet.
//! The merge rule, the cut, the realtime topic, the stores and the batch
//! view format are therefore unchanged, and a window's answer is exact at
//! `as_of` for the same reasons an all-time answer is.
//!
//! # The speed layer counts each word once
//!
//! The batch view holds a word's all-time count beside its windowed ones.
//! The speed layer does not: an event's words are counted under their
//! window's key only (`#<window>@<word>`, or `#@<word>` for an event without
//! a timestamp, [`Key::Untimed`]), and a serving layer derives the all-time
//! count of a word in a bucket as the sum of them ([`Key::adds_to`],
//! [`all_time_counts`]). Counting, checkpointing, publishing and applying
//! two keys per word had made the realtime path carry twice the keys the
//! events need.
//!
//! A word's all-time key in a bucket is still published where the speed
//! layer has one: buckets it began counting before this rule (its store
//! then holds the word's all-time count, and it goes on counting it there
//! as before). Where a bucket's all-time key of a word comes with its
//! windowed ones, it is the count, and theirs add nothing to it.
//!
//! # Far-future timestamps
//!
//! A timestamp more than `max_future` ahead of the clock of the layer that
//! reads the record on arrival would push its partition's watermark ahead
//! and make every later event "late". Such an event is still counted, in
//! all-time and in its own window, but it does not move the watermark
//! ([`Arrival::Future`]; the layers count it in a metric). The batch layer
//! marks it when it ingests the record, so its recomputes decide as it did
//! on arrival.

use crate::cut::Partition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;
use thiserror::Error;

mod key;

/// Milliseconds since the Unix epoch (a Kafka record timestamp).
pub type Millis = i64;

/// What every layer must agree on about event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSettings {
    pub size: WindowSize,
    /// The watermark trails the newest timestamp by this much.
    pub allowed_lateness_ms: u64,
    /// How far back per-window counts are kept, from the newest timestamp.
    pub retention_ms: u64,
    /// A timestamp further ahead of the reading layer's clock is "future".
    pub max_future_ms: u64,
}

impl Default for WindowSettings {
    /// One-minute windows, a minute of allowed lateness, seven days of
    /// retention, five minutes of tolerated clock skew.
    fn default() -> Self {
        Self {
            size: WindowSize::MINUTE,
            allowed_lateness_ms: 60_000,
            retention_ms: 7 * 24 * 3_600_000,
            max_future_ms: 5 * 60_000,
        }
    }
}

impl WindowSettings {
    /// Whether an event at `t` is further in the future than `now` allows.
    pub fn is_future(&self, t: Millis, now: Millis) -> bool {
        t > now.saturating_add(self.max_future_ms.min(i64::MAX as u64) as Millis)
    }

    pub fn watermark(&self) -> EventWatermark {
        EventWatermark::new(Duration::from_millis(self.allowed_lateness_ms))
    }

    /// The oldest window kept when the newest timestamp is `newest`.
    pub fn horizon(&self, newest: Millis) -> Window {
        let retention = self.retention_ms.min(i64::MAX as u64) as Millis;
        self.size.window_of(newest.saturating_sub(retention))
    }
}

pub use key::{all_time_counts, Key, WindowedKeys, WINDOW_MARK};

/// How an event's arrival counts in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// In its window, before the window was complete.
    OnTime,
    /// Its window was already complete when it arrived: it is counted all
    /// the same, and reported as late.
    Late,
    /// Further in the future than the reading layer's clock allowed: counted
    /// in its window, but it did not move the watermark.
    Future,
    /// No timestamp (Kafka's -1): counted all-time only, in no window.
    Untimed,
}

impl Arrival {
    /// The window an event counts in, if any.
    pub fn window(self, size: WindowSize, t: Option<Millis>) -> Option<Window> {
        match (self, t) {
            (Arrival::Untimed, _) | (_, None) => None,
            (_, Some(t)) => Some(size.window_of(t)),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeError {
    #[error("`{0}` is neither RFC 3339 (2026-12-02T10:00:00Z) nor milliseconds since the epoch")]
    Unreadable(String),
    #[error("`{0}` is after the year 9999 (more than 15 digits)")]
    AfterYear9999(String),
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

    /// The newest timestamp seen (what a checkpoint keeps).
    pub fn newest(&self) -> Option<Millis> {
        self.newest
    }

    /// Resumes after events whose newest timestamp was `newest`.
    pub fn resume(mut self, newest: Option<Millis>) -> Self {
        self.newest = newest;
        self
    }

    /// Whether an event at `t` would be late now.
    pub fn is_late(&self, size: WindowSize, t: Millis) -> bool {
        let window_end = size.start_of(Window(size.window_of(t).0 + 1));
        self.watermark().is_some_and(|w| window_end <= w)
    }

    /// Notes an event at `t`; says whether it is late (its window ended at
    /// or before the watermark as it stood when the event arrived).
    pub fn observe(&mut self, size: WindowSize, t: Millis) -> Arrival {
        let arrival = if self.is_late(size, t) {
            Arrival::Late
        } else {
            Arrival::OnTime
        };
        self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        arrival
    }

    /// Notes an event with its timestamp, if it has one; `future` says the
    /// reading layer found it too far ahead of its clock (it then leaves the
    /// watermark where it is).
    pub fn arrive(&mut self, size: WindowSize, t: Option<Millis>, future: bool) -> Arrival {
        match t {
            None => Arrival::Untimed,
            Some(_) if future => Arrival::Future,
            Some(t) => self.observe(size, t),
        }
    }
}

/// The lateness of a run of one partition's events, worked out without
/// knowing the events before the run: what lets the batch layer's map phase
/// read segments in parallel and still call late exactly the events a
/// reader from the start would ([`Run::resolve`] adds what came before).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// The newest timestamp that moves the watermark in the run.
    pub newest: Option<Millis>,
    /// Events late even by the run's own watermark, per window.
    pub late: BTreeMap<Window, u64>,
    /// Every other timed event that moves nothing, per window: late exactly
    /// when the watermark before the run had passed its window.
    pub pending: BTreeMap<Window, u64>,
}

impl Run {
    /// Notes an event, in the run's order (`future` as for
    /// [`EventWatermark::arrive`]); returns the window it counts in.
    pub fn note(
        &mut self,
        settings: &WindowSettings,
        t: Option<Millis>,
        future: bool,
    ) -> Option<Window> {
        let mut mark = settings.watermark().resume(self.newest);
        let arrival = mark.arrive(settings.size, t, future);
        self.newest = mark.newest();
        let window = arrival.window(settings.size, t)?;
        match arrival {
            Arrival::Late => *self.late.entry(window).or_default() += 1,
            Arrival::OnTime => *self.pending.entry(window).or_default() += 1,
            Arrival::Future | Arrival::Untimed => {}
        }
        Some(window)
    }

    /// Adds the run's late events, given the newest timestamp before it, to
    /// `late`; returns the newest timestamp after it.
    pub fn resolve(
        &self,
        settings: &WindowSettings,
        before: Option<Millis>,
        late: &mut BTreeMap<Window, u64>,
    ) -> Option<Millis> {
        let mark = settings.watermark().resume(before);
        for (&window, &n) in &self.late {
            *late.entry(window).or_default() += n;
        }
        for (&window, &n) in &self.pending {
            if mark.is_late(settings.size, settings.size.start_of(window)) {
                *late.entry(window).or_default() += n;
            }
        }
        newest_of(before, self.newest)
    }
}

/// The newer of two optional timestamps.
pub fn newest_of(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    a.max(b)
}

/// The last millisecond of the year 9999, the latest time RFC 3339 writes.
pub const MAX_TIME: Millis = 253_402_300_799_999;

/// Parses a range bound: RFC 3339 (`2026-12-02T10:00:00Z`, fractional
/// seconds and offsets from UTC allowed) or milliseconds since the epoch.
/// Times before the epoch are the epoch (no event is older).
pub fn parse_time(s: &str) -> Result<Millis, TimeError> {
    let s = s.trim();
    let unreadable = || TimeError::Unreadable(s.to_owned());
    // Up to 15 digits: milliseconds, the latest time at most.
    if (1..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        let ms: Millis = s.parse().map_err(|_| unreadable())?;
        return Ok(ms.min(MAX_TIME));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TimeError::AfterYear9999(s.to_owned()));
    }
    let (base, offset_ms) = split_offset(s);
    // humantime reads years from 1970 on: an earlier date is checked as a
    // date of 1972 (a leap year, like any year it stands for), then read as
    // the epoch.
    let year = base.get(..4).and_then(|y| y.parse::<u32>().ok());
    if year.is_some_and(|y| y < 1970) {
        humantime::parse_rfc3339_weak(&format!("1972{}", &base[4..])).map_err(|_| unreadable())?;
        return Ok(0);
    }
    let t = humantime::parse_rfc3339_weak(base).map_err(|_| unreadable())?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as Millis);
    Ok(ms.saturating_sub(offset_ms).clamp(0, MAX_TIME))
}

/// Splits an offset from UTC (`+05:30`, `-08:00`) off an RFC 3339 time:
/// the time without it, and the offset in milliseconds (0 without one).
fn split_offset(s: &str) -> (&str, Millis) {
    let b = s.as_bytes();
    let Some(i) = b.len().checked_sub(6).filter(|&i| i >= 19) else {
        return (s, 0);
    };
    let digit = |k: usize| b[k].is_ascii_digit();
    if !matches!(b[i], b'+' | b'-')
        || b[i + 3] != b':'
        || ![1, 2, 4, 5].iter().all(|&k| digit(i + k))
    {
        return (s, 0);
    }
    let num = |k: usize| Millis::from(b[k] - b'0') * 10 + Millis::from(b[k + 1] - b'0');
    let minutes = num(i + 1) * 60 + num(i + 4);
    let sign = if b[i] == b'-' { -1 } else { 1 };
    (&s[..i], sign * minutes * 60_000)
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

    /// One partition's events: timestamp (or none) and whether the reading
    /// layer found it in the future.
    fn events() -> impl Strategy<Value = Vec<(Option<i64>, bool)>> {
        proptest::collection::vec(
            (
                proptest::option::weighted(0.9, 0i64..2_000_000),
                proptest::bool::weighted(0.1),
            ),
            0..300,
        )
    }

    proptest! {
        /// Runs read in any split, resolved in order, call late exactly the
        /// events a single reader from the start calls late.
        #[test]
        fn runs_resolve_to_what_one_reader_sees(
            events in events(),
            splits in proptest::collection::vec(0usize..300, 0..6),
            lateness in 0u64..200_000,
        ) {
            let settings = WindowSettings {
                size: WindowSize::from_millis(10_000).expect("non-zero"),
                allowed_lateness_ms: lateness,
                ..WindowSettings::default()
            };
            let mut reader = settings.watermark();
            let mut want: BTreeMap<Window, u64> = BTreeMap::new();
            for &(t, future) in &events {
                if reader.arrive(settings.size, t, future) == Arrival::Late {
                    *want.entry(settings.size.window_of(t.expect("timed"))).or_default() += 1;
                }
            }
            let mut bounds: Vec<usize> = splits.into_iter().map(|s| s.min(events.len())).collect();
            bounds.push(0);
            bounds.push(events.len());
            bounds.sort_unstable();
            let mut got = BTreeMap::new();
            let mut newest = None;
            for pair in bounds.windows(2) {
                let mut run = Run::default();
                for &(t, future) in &events[pair[0]..pair[1]] {
                    let window = run.note(&settings, t, future);
                    prop_assert_eq!(window, t.map(|t| settings.size.window_of(t)));
                }
                newest = run.resolve(&settings, newest, &mut got);
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(newest, reader.newest());
        }

        /// The quick read of a key's window says what the full parse says.
        #[test]
        fn window_of_agrees_with_parse(key in "#?[0-9]{0,22}[@!x-]?[a-z!@]{0,3}") {
            let parsed = match Key::parse(&key) {
                Some(Key::InWindow(w, _) | Key::Late(w)) => Some(w),
                _ => None,
            };
            prop_assert_eq!(Key::window_of(&key), parsed, "{}", key);
        }

        /// Keys read back as what they encode, and no word is taken for a
        /// windowed key.
        #[test]
        fn keys_round_trip(word in "[a-z0-9é]{1,12}", window in 0u64..u64::MAX / 2) {
            let w = Window(window);
            prop_assert_eq!(Key::parse(&word), Some(Key::Word(&word)));
            prop_assert!(Key::is_word(&word));
            let k = Key::InWindow(w, &word).encode();
            prop_assert!(!Key::is_word(&k));
            prop_assert_eq!(Key::parse(&k), Some(Key::InWindow(w, &word)));
            let mut keys = WindowedKeys::default();
            keys.set_window(w);
            prop_assert_eq!(keys.key(&word), k.as_str());
            prop_assert_eq!(Key::window_of(&k), Some(w));
            prop_assert_eq!(Key::window_of(&Key::Late(w).encode()), Some(w));
            prop_assert_eq!(Key::window_of(&word), None);
            prop_assert_eq!(Key::window_of(&Key::Untimed(&word).encode()), None);
            let late = Key::Late(w).encode();
            prop_assert_eq!(Key::parse(&late), Some(Key::Late(w)));
            let untimed = Key::Untimed(&word).encode();
            prop_assert!(!Key::is_word(&untimed));
            prop_assert_eq!(Key::parse(&untimed), Some(Key::Untimed(&word)));
            prop_assert_eq!(Key::parse(&untimed).and_then(Key::adds_to), Some(word.as_str()));
            prop_assert_eq!(Key::parse(&k).and_then(Key::adds_to), Some(word.as_str()));
        }
    }

    #[test]
    fn malformed_windowed_keys_are_not_read() {
        for bad in [
            "#",
            "#12",
            "#x@a",
            "#12?a",
            "#-@a",
            "#12!x",
            "#99999999999999999999999@a",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad}");
            assert_eq!(Key::window_of(bad), None, "{bad}");
        }
        assert_eq!(
            Key::parse("#7@"),
            Some(Key::InWindow(Window(7), "")),
            "an empty word parses; no layer writes one"
        );
    }

    #[test]
    fn far_future_events_do_not_move_the_watermark() {
        let settings = WindowSettings::default();
        let now = 1_764_669_600_000;
        assert!(!settings.is_future(now + 300_000, now));
        assert!(settings.is_future(now + 300_001, now));
        let mut mark = settings.watermark();
        let size = settings.size;
        assert_eq!(mark.arrive(size, Some(now), false), Arrival::OnTime);
        let year = 365 * 24 * 3_600_000;
        assert_eq!(mark.arrive(size, Some(now + year), true), Arrival::Future);
        assert_eq!(mark.newest(), Some(now), "the watermark did not move");
        assert_eq!(
            mark.arrive(size, Some(now + 1_000), false),
            Arrival::OnTime,
            "the next event is on time"
        );
        assert_eq!(mark.arrive(size, None, false), Arrival::Untimed);
        assert_eq!(Arrival::Untimed.window(size, Some(now)), None);
        assert_eq!(
            settings.horizon(settings.retention_ms as i64 + 60_000),
            Window(1)
        );
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
        assert!(matches!(parse_time("-5"), Err(TimeError::Unreadable(_))));
        assert_eq!(
            parse_time("1969-07-20T20:17:40Z"),
            Ok(0),
            "before the epoch"
        );
        assert_eq!(
            parse_time("1968-02-29T00:00:00Z"),
            Ok(0),
            "a leap day before it"
        );
        assert!(parse_time("1969-02-30T00:00:00Z").is_err());
        assert_eq!(
            parse_time("2025-12-02T11:30:00+01:30"),
            Ok(1_764_669_600_000),
            "an offset from UTC"
        );
        assert_eq!(
            parse_time("2025-12-02T08:00:00.000000-02:00"),
            Ok(1_764_669_600_000)
        );
        assert_eq!(parse_time("253402300799999"), Ok(MAX_TIME));
        assert_eq!(parse_time("999999999999999"), Ok(MAX_TIME), "clamped");
        for late in ["2534023008000000", "99999999999999999999"] {
            assert!(
                matches!(parse_time(late), Err(TimeError::AfterYear9999(_))),
                "{late}"
            );
        }
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
