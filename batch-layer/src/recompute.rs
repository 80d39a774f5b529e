//! Recompute: a new batch view from the master log, from scratch.
//!
//! 1. Under the log's lock, take the durable end of every partition, align it
//!    down to the bucket size (the cut), and list the segments below it.
//! 2. Without the lock, run the MapReduce job over those segments; ingestion
//!    keeps appending meanwhile, above the cut.
//! 3. Publish the view: file, fsync, rename, manifest.

use crate::mapreduce::{Combiner, Engine, JobOutput, Order};
use crate::master_log::{LogError, MasterLog, RecordKind, SegmentRef};
use common::sync::LockOrStop;
use common::views::ViewStore;
use lambda_core::view::{BatchView, Manifest, ViewError, ViewOrigin};
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

/// Recomputes from the master log and publishes a new view if the cut moved
/// (or if `force` is set). `fault_pause` (tests only) sleeps between
/// counting and publishing.
pub fn recompute(
    log: &Mutex<MasterLog>,
    store: &ViewStore,
    engine: &Engine,
    bucket_size: BucketSize,
    force: bool,
    fault_pause: Option<std::time::Duration>,
) -> Result<Outcome, RecomputeError> {
    let started = Instant::now();
    let previous = store.latest()?;
    let (cut, segments) = {
        let log = log.lock_or_stop("the master log");
        let cut: Cut = log.end_offsets().aligned_cut(bucket_size);
        let segments = log.segments_below(&cut);
        (cut, segments)
    };
    if let Some(prev) = &previous {
        if !force && prev.header.cut == cut && prev.header.bucket_size == bucket_size {
            return Ok(Outcome::Unchanged(prev.clone()));
        }
        if !cut.dominates(&prev.header.cut) {
            tracing::warn!(previous = %prev.header.cut, new = %cut, "The new cut is behind the previous view's in some partition (was the log repaired?).");
        }
    }
    tracing::info!(cut = %cut, segments = segments.len(), "Recomputing the batch view.");
    let out = count_segments(engine, &segments)?;
    if let Some(pause) = fault_pause {
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "Fault injection: pausing before publishing the view."
        );
        std::thread::sleep(pause);
    }
    let version = previous.as_ref().map_or(1, |m| m.version + 1);
    let origin = ViewOrigin {
        computed_at_ms: now_ms(),
        events: out.stats.events,
        skipped_records: out.stats.skipped,
        ..ViewOrigin::new(version, cut.clone(), bucket_size)
    };
    let view = BatchView::build(origin, out.counts);
    debug_assert_eq!(view.header.total_words, out.stats.words);
    let manifest = store.publish(&view)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        version,
        cut = %cut,
        events = manifest.header.events,
        distinct_words = manifest.header.distinct_words,
        segments = segments.len(),
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
