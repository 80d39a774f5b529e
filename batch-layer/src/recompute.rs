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

use crate::mapreduce::{Combiner, Engine, JobOutput, Order};
use crate::master_log::{LogError, MasterLog, RecordKind, SegmentRef};
use common::sync::LockOrStop;
use common::views::ViewStore;
use lambda_core::lineage::{add_counts, compare_counts, Lineage, RecomputeMode};
use lambda_core::view::{BatchView, Manifest, ViewError, ViewOrigin, WordCount};
use lambda_core::{BucketSize, Cut};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
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

/// Counts every event in the segments, below each segment's limit.
pub fn count_segments(engine: &Engine, segments: &[SegmentRef]) -> Result<JobOutput, LogError> {
    engine.run(
        segments,
        Order::ByWord,
        |segment, combiner: &mut Combiner| {
            let bytes = segment.load()?;
            combiner.bytes += bytes.len() as u64;
            for record in segment.records(&bytes) {
                let record = record?;
                match (record.kind, std::str::from_utf8(record.payload)) {
                    (RecordKind::Event, Ok(text)) => {
                        combiner.events += 1;
                        combiner.add_text(text);
                    }
                    _ => combiner.skipped += 1,
                }
            }
            Ok(())
        },
    )
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
    since: JobOutput,
}

impl Chain {
    /// The chain's counts at the new cut.
    fn counts(&self) -> Vec<WordCount> {
        add_counts(self.view.words(), &self.since.counts)
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
                prev.header.bucket_size == bucket_size && cut.dominates(&prev.header.cut)
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
            Ok(view) => Some(Chain {
                view,
                since: count_segments(engine, &segments)?,
            }),
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
                ..ViewOrigin::new(version, cut.clone(), bucket_size)
            };
            (chain.counts(), origin)
        }
        (_, chain) => {
            tracing::info!(cut = %cut, segments = all.len(), "Recomputing the batch view in full.");
            let out = count_segments(engine, &all)?;
            let check = chain.map(|chain| {
                compare_counts(
                    &out.counts,
                    &chain.counts(),
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
                ..ViewOrigin::new(version, cut.clone(), bucket_size)
            };
            (out.counts, origin)
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

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
