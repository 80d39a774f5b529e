//! What the serving layer knows about the other layers and Kafka: whether the
//! batch layer answered lately, where each topic ends, and since when the
//! replica has covered every event in Kafka (freshness).
//!
//! Every answer carries these facts, so a client can tell an exact answer
//! about old data from an exact answer about current data.

use crate::reconcile::Reconciliation;
use common::retry::Stalls;
use common::sync::LockOrStop;
use lambda_core::{Cut, Positions};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Samples of the topic ends kept to date freshness (at one per 250 ms,
/// about a minute).
const HISTORY: usize = 240;
/// Produce-to-visible latencies summarised in `/v1/status`: those of the
/// last minute, at most this many.
const VISIBLE_WINDOW: Duration = Duration::from_secs(60);
const VISIBLE_SAMPLES: usize = 10_000;

/// Shared, updated by the background tasks, read by the API.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    stale_after: Duration,
    inner: Mutex<Inner>,
    /// Durable writes failing right now (readiness then says no).
    pub stalls: Stalls,
    /// Every view swap checked against the realtime counts.
    pub reconciliation: Reconciliation,
}

#[derive(Debug, Default)]
struct Inner {
    batch_ok_at: Option<Instant>,
    batch_error: Option<String>,
    kafka_ok_at: Option<Instant>,
    kafka_error: Option<String>,
    caught_up_at: Option<Instant>,
    /// Recent (time asked, events ends) samples, oldest first.
    history: std::collections::VecDeque<(Instant, Positions)>,
    ends: Ends,
    follower_positions: Positions,
    follower_held: usize,
    follower_waiting: Cut,
    /// Per speed layer (writer id), its latest watermark's positions and
    /// when it was read.
    writers: std::collections::BTreeMap<u64, (Positions, Instant)>,
    /// The batch instances, as the batch layer last listed them.
    batch_instances: Vec<lambda_core::instance::BatchInstance>,
    /// Recent (applied at, produce-to-visible) latencies, oldest first.
    visible: std::collections::VecDeque<(Instant, Duration)>,
}

/// Recent produce-to-visible latencies, as `/v1/status` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visibility {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// End offsets of the topics the serving layer watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ends {
    pub events: Positions,
    pub realtime: Positions,
    /// Records in the dead-letter topic.
    pub dead_letters: u64,
}

/// A point-in-time copy for one answer.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub uptime: Duration,
    /// Since the replica last covered every event in Kafka.
    pub freshness: Duration,
    pub batch_stale: bool,
    pub batch_error: Option<String>,
    pub realtime_stale: bool,
    pub kafka_error: Option<String>,
    pub ends: Ends,
    pub follower_positions: Positions,
    pub follower_held: usize,
    /// Where the speed layer started past its checkpoint beyond this
    /// replica's view: its counts wait for a view that reaches there.
    pub follower_waiting: Cut,
    /// The speed layers seen within [`WRITERS_SEEN_WITHIN`]: writer id,
    /// positions, time since.
    pub writers: Vec<(u64, Positions, Duration)>,
    /// The batch instances, as the batch layer last listed them.
    pub batch_instances: Vec<lambda_core::instance::BatchInstance>,
}

/// A speed layer whose watermarks stopped longer ago than this is gone from
/// `/v1/status` (it died, or left without partitions).
pub const WRITERS_SEEN_WITHIN: Duration = Duration::from_secs(60);

impl Health {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            stale_after,
            inner: Mutex::new(Inner::default()),
            stalls: Stalls::default(),
            reconciliation: Reconciliation::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_stop("the serving health")
    }

    pub fn batch_ok(&self) {
        let mut i = self.lock();
        i.batch_ok_at = Some(Instant::now());
        i.batch_error = None;
    }

    pub fn batch_failed(&self, error: String) {
        self.lock().batch_error = Some(error);
    }

    /// Records topic ends fetched starting at `asked_at`, and with `as_of`
    /// (the replica's position now) moves `caught_up_at` to the newest sample
    /// it covers: every event that existed then is visible now. Under steady
    /// production the replica never covers the *current* end, but it does
    /// cover the end of a moment ago, and that moment is the freshness.
    pub fn kafka_ends(&self, asked_at: Instant, ends: Ends, as_of: &Cut) {
        let mut i = self.lock();
        i.kafka_ok_at = Some(Instant::now());
        i.kafka_error = None;
        i.history.push_back((asked_at, ends.events.clone()));
        while i.history.len() > HISTORY {
            i.history.pop_front();
        }
        if let Some(&(t, _)) = i
            .history
            .iter()
            .rev()
            .find(|(_, e)| as_of.dominates(&e.as_cut()))
        {
            i.caught_up_at = Some(i.caught_up_at.map_or(t, |c| c.max(t)));
        }
        i.ends = ends;
    }

    pub fn kafka_failed(&self, error: String) {
        self.lock().kafka_error = Some(error);
    }

    pub fn follower(&self, positions: Positions, held: usize) {
        let mut i = self.lock();
        i.follower_positions = positions;
        i.follower_held = held;
    }

    /// Records a speed layer's watermark: the partitions it names are the
    /// ones it owns.
    pub fn writer_seen(&self, writer: u64, positions: &Positions) {
        self.lock()
            .writers
            .insert(writer, (positions.clone(), Instant::now()));
    }

    /// Records the batch instances the batch layer lists.
    pub fn batch_instances(&self, instances: Vec<lambda_core::instance::BatchInstance>) {
        self.lock().batch_instances = instances;
    }

    /// Records the starts the follower's next release waits for a view to
    /// reach (empty: none).
    pub fn follower_waiting(&self, starts: Cut) {
        self.lock().follower_waiting = starts;
    }

    /// Records how long the oldest event of a release took from its record
    /// timestamp to being visible in answers.
    pub fn visible(&self, latency: Duration) {
        let mut i = self.lock();
        let now = Instant::now();
        i.visible.push_back((now, latency));
        while i.visible.len() > VISIBLE_SAMPLES
            || i.visible
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > VISIBLE_WINDOW)
        {
            i.visible.pop_front();
        }
    }

    /// p50, p99 and max of the last minute's produce-to-visible latencies.
    pub fn recent_visibility(&self) -> Visibility {
        let now = Instant::now();
        let mut recent: Vec<Duration> = self
            .lock()
            .visible
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= VISIBLE_WINDOW)
            .map(|(_, d)| *d)
            .collect();
        if recent.is_empty() {
            return Visibility::default();
        }
        recent.sort_unstable();
        let rank =
            |q: f64| recent[((recent.len() as f64 * q).ceil() as usize).clamp(1, recent.len()) - 1];
        Visibility {
            samples: recent.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: recent[recent.len() - 1],
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        // Copies only what an answer reports: never the sample history,
        // since this runs on every query.
        let i = self.lock();
        let now = Instant::now();
        let freshness = now.saturating_duration_since(i.caught_up_at.unwrap_or(self.started));
        let batch_stale = i.batch_error.is_some()
            || i.batch_ok_at
                .is_none_or(|t| now.saturating_duration_since(t) > self.stale_after);
        Snapshot {
            uptime: now.saturating_duration_since(self.started),
            freshness,
            batch_stale,
            batch_error: i.batch_error.clone(),
            realtime_stale: freshness > self.stale_after,
            kafka_error: i.kafka_error.clone(),
            ends: i.ends.clone(),
            follower_positions: i.follower_positions.clone(),
            follower_held: i.follower_held,
            follower_waiting: i.follower_waiting.clone(),
            writers: i
                .writers
                .iter()
                .map(|(&w, (positions, at))| {
                    (w, positions.clone(), now.saturating_duration_since(*at))
                })
                .filter(|(_, _, since)| *since <= WRITERS_SEEN_WITHIN)
                .collect(),
            batch_instances: i.batch_instances.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_turn_stale_when_they_stop_answering() {
        let h = Health::new(Duration::from_millis(50));
        let s = h.snapshot();
        assert!(s.batch_stale, "no contact yet");
        h.batch_ok();
        h.kafka_ends(Instant::now(), Ends::default(), &Cut::new());
        let s = h.snapshot();
        assert!(!s.batch_stale && !s.realtime_stale);
        h.batch_failed("connection refused".into());
        assert!(h.snapshot().batch_stale);
        std::thread::sleep(Duration::from_millis(60));
        let s = h.snapshot();
        assert!(s.realtime_stale, "not covered since 60ms > 50ms");
        assert!(s.freshness >= Duration::from_millis(60));
        let ahead = Ends {
            events: [(0, 10)].into_iter().collect(),
            ..Ends::default()
        };
        h.kafka_ends(Instant::now(), ahead.clone(), &Cut::new());
        assert!(h.snapshot().realtime_stale, "ends known but not covered");
        // Covering a sample taken a moment ago makes it that fresh.
        let asked = Instant::now();
        h.kafka_ends(asked, ahead, &[(0, 10)].into_iter().collect());
        assert!(!h.snapshot().realtime_stale);
        assert!(h.snapshot().freshness < Duration::from_millis(50));
    }

    #[test]
    fn recent_visibility_is_the_nearest_rank_of_the_last_minute() {
        let h = Health::new(Duration::from_secs(1));
        assert_eq!(h.recent_visibility(), Visibility::default());
        for ms in 1..=100 {
            h.visible(Duration::from_millis(ms));
        }
        let v = h.recent_visibility();
        assert_eq!(v.samples, 100);
        assert_eq!(v.p50, Duration::from_millis(50));
        assert_eq!(v.p99, Duration::from_millis(99));
        assert_eq!(v.max, Duration::from_millis(100));
    }
}
