//! Recompute: a new batch view from the master log, in full or
//! incrementally.
//!
//! 1. Under the log's lock, take the durable end of every partition, align it
//!    down to the bucket size (the cut), and list the segments to read: all
//!    of them below the cut (full), or only those between the previous
//!    view's cut and the new one (incremental).
//! 2. Without the lock, run the MapReduce job over those segments; ingestion
//!    keeps appending meanwhile, above the cut. An incremental recompute adds
//!    the new counts to the previous view's
//!    ([`lambda_core::lineage::add_counts`]); a full one also computes that
//!    sum and compares it with its own ([`lambda_core::lineage::FullCheck`]):
//!    the full view wins, and a difference is reported.
//! 3. Publish the view: file, fsync, rename, manifest.

use crate::mapreduce::{Combiner, Engine, JobOutput, JobStats, Order, RunOf};
use crate::master_log::{LogError, MasterLog, RecordKind, SegmentRef};
use common::now_ms;
use common::sync::LockOrStop;
use common::views::ViewStore;
use lambda_core::lineage::{add_counts, compare_counts, Lineage, RecomputeMode};
use lambda_core::view::{BatchView, Manifest, ViewError, ViewOrigin, ViewWindows, WordCount};
use lambda_core::window::{Key, Millis, Run, WindowSettings};
use lambda_core::{BucketSize, Cut, Partition};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RecomputeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    View(#[from] ViewError),
}

/// What a recompute did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new view was published.
    Published { manifest: Manifest, seconds: f64 },
    /// The cut has not moved since the newest view; nothing to do.
    Unchanged(Manifest),
}

impl Outcome {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Outcome::Published { manifest, .. } | Outcome::Unchanged(manifest) => manifest,
        }
    }
}

/// Counts every event in the segments, below each segment's limit: each
/// word all-time and in its event's window, and each segment's lateness as a
/// [`lambda_core::window::Run`], resolved by [`event_time`].
pub fn count_segments(
    engine: &Engine,
    segments: &[SegmentRef],
    windows: &WindowSettings,
) -> Result<JobOutput, LogError> {
    engine.run(
        segments,
        Order::ByWord,
        |segment, combiner: &mut Combiner| {
            let bytes = segment.load()?;
            combiner.bytes += bytes.len() as u64;
            let mut run = Run::default();
            for record in segment.records(&bytes) {
                let record = record?;
                let future = match record.kind {
                    RecordKind::Event => false,
                    RecordKind::FutureEvent => true,
                    RecordKind::Marker => continue,
                    RecordKind::InvalidUtf8 | RecordKind::TooLarge | RecordKind::Empty => {
                        combiner.skipped += 1;
                        continue;
                    }
                };
                match std::str::from_utf8(record.payload) {
                    Ok(text) => {
                        combiner.events += 1;
                        let window = run.note(windows, record.timestamp_ms, future);
                        combiner.add_event(text, window);
                    }
                    Err(_) => combiner.skipped += 1,
                }
            }
            combiner.runs.push(RunOf {
                partition: segment.partition,
                // Segments of a partition share `start`; their runs follow
                // one another in base-offset order.
                start: segment.base_offset.max(segment.start),
                run,
            });
            Ok(())
        },
    )
}

/// Event time after a job: every partition's runs resolved in offset order
/// after the newest timestamps `before` them (the previous view's, for an
/// incremental recompute). Returns the late events per window as counts
/// (sorted `#<window>!` keys) and the newest timestamp per partition.
pub fn event_time(
    runs: &mut [RunOf],
    windows: &WindowSettings,
    before: &BTreeMap<Partition, Millis>,
) -> (Vec<WordCount>, BTreeMap<Partition, Millis>) {
    runs.sort_unstable_by_key(|r| (r.partition, r.start));
    let mut late = BTreeMap::new();
    let mut newest = before.clone();
    for r in runs.iter() {
        let after = r
            .run
            .resolve(windows, newest.get(&r.partition).copied(), &mut late);
        if let Some(t) = after {
            newest.insert(r.partition, t);
        }
    }
    let mut late: Vec<WordCount> = late
        .into_iter()
        .map(|(w, n)| (Key::Late(w).encode().into(), n))
        .collect();
    late.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    (late, newest)
}

/// What a job over segments counted, event time resolved.
struct Counted {
    /// Sorted, late-event keys included.
    words: Vec<WordCount>,
    stats: JobStats,
    /// The newest timestamp per partition after the segments.
    newest: BTreeMap<Partition, Millis>,
}

fn count(
    engine: &Engine,
    segments: &[SegmentRef],
    windows: &WindowSettings,
    before: &BTreeMap<Partition, Millis>,
) -> Result<Counted, LogError> {
    let mut out = count_segments(engine, segments, windows)?;
    let (late, newest) = event_time(&mut out.runs, windows, before);
    Ok(Counted {
        words: add_counts(&late, &out.counts),
        stats: out.stats,
        newest,
    })
}

/// What a recompute is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub mode: RecomputeMode,
    /// Publish a new view even if the cut has not moved.
    pub force: bool,
    /// Tests only: sleep between counting and publishing.
    pub fault_pause: Option<std::time::Duration>,
}

impl Request {
    pub fn new(mode: RecomputeMode) -> Self {
        Self {
            mode,
            force: false,
            fault_pause: None,
        }
    }
}

/// How many differing words a full check names.
const CHECK_EXAMPLES: usize = 5;

/// The view a recompute builds on: the newest one, with the new events
/// since its cut counted.
struct Chain {
    view: BatchView,
    since: Counted,
}

impl Chain {
    /// The chain's counts at the new cut, windows older than `windows`'s
    /// horizon left out.
    fn counts(&self, windows: &ViewWindows) -> Vec<WordCount> {
        let mut counts = add_counts(self.view.words(), &self.since.words);
        windows.retain(&mut counts);
        counts
    }
}

/// Recomputes from the master log and publishes a new view if the cut moved
/// (or if `request.force` is set). An incremental recompute without a
/// previous view it can build on (none, another bucket size, a cut behind
/// it, a file that does not verify) computes in full.
pub fn recompute(
    log: &Mutex<MasterLog>,
    store: &ViewStore,
    engine: &Engine,
    bucket_size: BucketSize,
    windows: &WindowSettings,
    request: Request,
) -> Result<Outcome, RecomputeError> {
    let started = Instant::now();
    let previous = store.latest()?;
    let (cut, all, since_previous) = {
        let log = log.lock_or_stop("the master log");
        let cut: Cut = log.end_offsets().aligned_cut(bucket_size);
        let all = log.segments_below(&cut);
        let since = previous
            .as_ref()
            .filter(|prev| {
                prev.header.bucket_size == bucket_size
                    && cut.dominates(&prev.header.cut)
                    && prev.header.windows.as_ref().map(|w| &w.settings) == Some(windows)
            })
            .map(|prev| log.segments_between(&prev.header.cut, &cut));
        (cut, all, since)
    };
    if let Some(prev) = &previous {
        if !request.force && prev.header.cut == cut && prev.header.bucket_size == bucket_size {
            return Ok(Outcome::Unchanged(prev.clone()));
        }
        if !cut.dominates(&prev.header.cut) {
            tracing::warn!(previous = %prev.header.cut, new = %cut, "The new cut is behind the previous view's in some partition (was the log repaired?); computing in full.");
        }
    }
    let chain = match (&previous, since_previous) {
        (Some(prev), Some(segments)) => match store.load(prev) {
            Ok(view) => {
                let before = view
                    .header
                    .windows
                    .as_ref()
                    .map(|w| w.newest.clone())
                    .unwrap_or_default();
                let since = count(engine, &segments, windows, &before)?;
                Some(Chain { view, since })
            }
            Err(error) => {
                tracing::warn!(version = prev.version, %error, "Cannot read the previous view to build on; computing in full.");
                None
            }
        },
        _ => None,
    };
    let version = previous.as_ref().map_or(1, |m| m.version + 1);
    let computed_at_ms = now_ms();
    let (words, origin) = match (request.mode, chain) {
        (RecomputeMode::Incremental, Some(chain)) => {
            tracing::info!(cut = %cut, base = chain.view.header.version, new_events = chain.since.stats.events, "Recomputing the batch view incrementally.");
            let base = &chain.view.header;
            let event_time = ViewWindows::new(*windows, chain.since.newest.clone());
            let origin = ViewOrigin {
                computed_at_ms,
                events: base.events + chain.since.stats.events,
                skipped_records: base.skipped_records + chain.since.stats.skipped,
                lineage: Lineage {
                    mode: RecomputeMode::Incremental,
                    base_version: Some(base.version),
                    last_full_ms: base.lineage.last_full_ms,
                    check: None,
                },
                windows: Some(event_time.clone()),
                ..ViewOrigin::new(version, cut.clone(), bucket_size)
            };
            (chain.counts(&event_time), origin)
        }
        (_, chain) => {
            tracing::info!(cut = %cut, segments = all.len(), "Recomputing the batch view in full.");
            let mut out = count(engine, &all, windows, &BTreeMap::new())?;
            let event_time = ViewWindows::new(*windows, out.newest.clone());
            event_time.retain(&mut out.words);
            let check = chain.map(|chain| {
                compare_counts(
                    &out.words,
                    &chain.counts(&event_time),
                    chain.view.header.version,
                    CHECK_EXAMPLES,
                )
            });
            if let Some(check) = check.as_ref().filter(|c| !c.agreed) {
                tracing::error!(
                    version,
                    chain_version = check.chain_version,
                    differing_words = check.differing_words,
                    examples = ?check.examples,
                    "The full recompute differs from the incremental chain at the same cut; the full view wins."
                );
            }
            let origin = ViewOrigin {
                computed_at_ms,
                events: out.stats.events,
                skipped_records: out.stats.skipped,
                lineage: Lineage {
                    mode: RecomputeMode::Full,
                    base_version: None,
                    last_full_ms: computed_at_ms,
                    check,
                },
                windows: Some(event_time),
                ..ViewOrigin::new(version, cut.clone(), bucket_size)
            };
            (out.words, origin)
        }
    };
    if let Some(pause) = request.fault_pause {
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "Fault injection: pausing before publishing the view."
        );
        std::thread::sleep(pause);
    }
    let view = BatchView::build(origin, words);
    let manifest = store.publish(&view)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        version,
        mode = %manifest.header.lineage.mode,
        cut = %cut,
        events = manifest.header.events,
        distinct_words = manifest.header.distinct_words,
        seconds,
        "Published batch view."
    );
    Ok(Outcome::Published { manifest, seconds })
}
