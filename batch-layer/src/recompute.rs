//! Recompute: a new batch view from the master log, in full or
//! incrementally.
//!
//! Every partition is recomputed on its own, into a **part** (see
//! `common::views::shared`): batch instances own different partitions, and the
//! view serving layers read is the sum of every partition's newest part.
//!
//! 1. Under the log's lock, take the durable end of every partition this
//!    instance owns, align it down to the bucket size (the cut), and list
//!    each partition's segments to read: all of them below its cut (full),
//!    or only those between its published part's cut and the new one
//!    (incremental).
//! 2. Without the lock, run the MapReduce job over each partition's
//!    segments; ingestion keeps appending meanwhile, above the cut. An
//!    incremental recompute adds the new counts to the published part's
//!    ([`lambda_core::lineage::add_counts`]); a full one also computes that
//!    sum and compares it with its own ([`lambda_core::lineage::FullCheck`]):
//!    the full view wins, and a difference is reported.
//! 3. Publish the parts and the view they compose in the shared store.

use crate::mapreduce::{Combiner, Engine, JobOutput, JobStats, Order, RunOf};
use crate::master_log::{LogError, MasterLog, RecordKind, SegmentRef};
use common::now_ms;
use common::sync::LockOrStop;
use common::views::SharedViews;
use lambda_core::compose::{PartRef, Settings};
use lambda_core::lineage::{add_counts, compare_counts, Lineage, RecomputeMode};
use lambda_core::view::{BatchView, Manifest, ViewError, ViewOrigin, ViewWindows, WordCount};
use lambda_core::window::{Key, Millis, Run, WindowSettings};
use lambda_core::{BucketSize, Cut, Offset, Partition};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
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

/// The part a recompute builds on: its partition's newest, with the new
/// events since its cut counted.
struct Chain {
    view: Arc<BatchView>,
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

/// One partition to recompute: its new cut, every segment below it, and
/// what to build on with the segments since its cut.
struct Plan {
    partition: Partition,
    cut: Offset,
    all: Vec<SegmentRef>,
    base: Option<(Base, Vec<SegmentRef>)>,
}

/// What a partition's recompute builds on.
enum Base {
    /// Its published part.
    Part(PartRef),
    /// Nothing yet, in this view: the partition's first part adds all its
    /// events to no counts, and carries on the view's chain.
    Empty { version: u64, last_full_ms: i64 },
}

/// Recomputes from the master log into `views` (see [`Recomputer::run`]).
pub fn recompute(
    log: &Mutex<MasterLog>,
    views: &SharedViews,
    engine: &Engine,
    bucket_size: BucketSize,
    windows: &WindowSettings,
    request: Request,
) -> Result<Outcome, RecomputeError> {
    Recomputer {
        log,
        views,
        engine,
        bucket_size,
        windows,
    }
    .run(request)
}

/// What every recompute of this batch layer shares.
struct Recomputer<'a> {
    log: &'a Mutex<MasterLog>,
    views: &'a SharedViews,
    engine: &'a Engine,
    bucket_size: BucketSize,
    windows: &'a WindowSettings,
}

impl Recomputer<'_> {
    fn settings(&self) -> Settings {
        Settings {
            bucket_size: self.bucket_size,
            windows: Some(*self.windows),
        }
    }

    /// Recomputes every partition this instance owns whose cut moved (all
    /// of them if `request.force` is set) into a part of its own, and
    /// publishes the view they compose (see `common::views::shared`). A partition
    /// whose published part already covers more (a previous owner's) is
    /// left to it until this instance's log passes it. An incremental
    /// recompute without a part it can build on (none, other settings, a
    /// file that does not verify) computes that partition in full.
    fn run(&self, request: Request) -> Result<Outcome, RecomputeError> {
        let started = Instant::now();
        let computed_at_ms = now_ms();
        let previous = self.views.latest()?;
        let version = previous.as_ref().map_or(1, |m| m.version + 1);
        let same_settings = previous.as_ref().is_some_and(|prev| {
            prev.header.bucket_size == self.bucket_size
                && prev.header.windows.as_ref().map(|w| &w.settings) == Some(self.windows)
        });
        let published = |p: Partition| previous.as_ref().and_then(|m| m.parts.get(&p));
        let base = |p: Partition| -> Option<(Base, Offset)> {
            let previous = previous.as_ref().filter(|_| same_settings)?;
            Some(match published(p) {
                Some(part) => (Base::Part(part.clone()), part.cut),
                None => (
                    Base::Empty {
                        version: previous.version,
                        last_full_ms: previous.header.lineage.last_full_ms,
                    },
                    0,
                ),
            })
        };
        // A full recompute recounts every partition; an incremental one
        // those whose cut moved.
        let full = request.mode == RecomputeMode::Full;
        let plans: Vec<Plan> = {
            let log = self.log.lock_or_stop("the master log");
            let cut: Cut = log.owned_ends().aligned_cut(self.bucket_size);
            cut.iter()
                .filter(|&(p, c)| match published(p) {
                    Some(part) if part.cut > c => {
                        tracing::debug!(
                            partition = p,
                            published = part.cut,
                            ours = c,
                            "A published part covers more of this partition; leaving it."
                        );
                        false
                    }
                    Some(part) => full || request.force || part.cut < c || !same_settings,
                    None => true,
                })
                .map(|(p, c)| {
                    let one = |offset| -> Cut { [(p, offset)].into_iter().collect() };
                    Plan {
                        partition: p,
                        cut: c,
                        all: log.segments_below(&one(c)),
                        base: base(p)
                            .map(|(base, from)| (base, log.segments_between(&one(from), &one(c)))),
                    }
                })
                .collect()
        };
        if let (true, Some(prev)) = (plans.is_empty(), &previous) {
            return Ok(Outcome::Unchanged(prev.clone()));
        }
        let parts = plans
            .into_iter()
            .map(|plan| self.part(plan, version, request.mode, computed_at_ms))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(pause) = request.fault_pause {
            tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                "Fault injection: pausing before publishing the view."
            );
            std::thread::sleep(pause);
        }
        let recomputed = parts.len();
        let manifest = self.views.publish(self.settings(), parts)?;
        if previous
            .as_ref()
            .is_some_and(|prev| prev.version == manifest.version)
        {
            return Ok(Outcome::Unchanged(manifest));
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            version = manifest.version,
            mode = %manifest.header.lineage.mode,
            cut = %manifest.header.cut,
            recomputed_partitions = recomputed,
            events = manifest.header.events,
            distinct_words = manifest.header.distinct_words,
            seconds,
            "Published batch view."
        );
        Ok(Outcome::Published { manifest, seconds })
    }

    /// The part of one partition at its new cut, in the mode asked.
    fn part(
        &self,
        plan: Plan,
        version: u64,
        mode: RecomputeMode,
        computed_at_ms: i64,
    ) -> Result<BatchView, RecomputeError> {
        let Plan {
            partition,
            cut,
            all,
            base,
        } = plan;
        let (engine, windows) = (self.engine, self.windows);
        let chain = match base {
            Some((
                Base::Empty {
                    version,
                    last_full_ms,
                },
                segments,
            )) => {
                let empty = ViewOrigin {
                    lineage: Lineage {
                        last_full_ms,
                        ..Lineage::default()
                    },
                    ..ViewOrigin::new(version, Cut::new(), self.bucket_size)
                };
                let view = Arc::new(BatchView::build(empty, Vec::new()));
                let since = count(engine, &segments, windows, &BTreeMap::new())?;
                Some(Chain { view, since })
            }
            Some((Base::Part(reference), segments)) => match self.views.load_part(&reference) {
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
                    tracing::warn!(partition, version = reference.version, %error, "Cannot read the part to build on; computing the partition in full.");
                    None
                }
            },
            None => None,
        };
        let cut: Cut = [(partition, cut)].into_iter().collect();
        let (words, origin) = match (mode, chain) {
            (RecomputeMode::Incremental, Some(chain)) => {
                tracing::debug!(partition, cut = %cut, base = chain.view.header.version, new_events = chain.since.stats.events, "Recomputing a partition incrementally.");
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
                    ..ViewOrigin::new(version, cut, self.bucket_size)
                };
                (chain.counts(&event_time), origin)
            }
            (_, chain) => {
                tracing::debug!(partition, cut = %cut, segments = all.len(), "Recomputing a partition in full.");
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
                        partition,
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
                    ..ViewOrigin::new(version, cut, self.bucket_size)
                };
                (out.words, origin)
            }
        };
        Ok(BatchView::build(origin, words))
    }
}
