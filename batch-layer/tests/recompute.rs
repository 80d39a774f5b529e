//! Recompute modes over a real master log and view store: every view, full
//! or incremental, equals a recount of the events below its cut; a full
//! recompute agrees with the incremental chain, and reports (and replaces)
//! a chain that went wrong.

use batch_layer::mapreduce::Engine;
use batch_layer::master_log::{LogOptions, MasterLog, Record, RecordKind};
use batch_layer::recompute::{recompute, Outcome, Request};
use common::views::SharedViews;
use lambda_core::compose::Settings;
use lambda_core::lineage::{Lineage, RecomputeMode};
use lambda_core::view::{BatchView, ViewOrigin};
use lambda_core::window::{Arrival, Key, WindowSettings, WindowSize};
use lambda_core::{BucketSize, Cut, Tokenizer};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

const WORDS: &[&str] = &["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];

/// A master log and view store in `dir`, with the events appended so far.
struct Fixture {
    log: Mutex<MasterLog>,
    store: SharedViews,
    /// Runs the store's calls.
    _runtime: tokio::runtime::Runtime,
    engine: Engine,
    bucket_size: BucketSize,
    windows: WindowSettings,
    /// (partition, offset) → what was appended there.
    appended: BTreeMap<(i32, i64), Appended>,
}

/// One appended record.
#[derive(Debug, Clone)]
struct Appended {
    /// The event's text, `None` for a record that is not an event.
    text: Option<String>,
    timestamp_ms: Option<i64>,
    /// Marked by ingestion as too far in the future.
    future: bool,
}

impl Fixture {
    fn new(dir: &Path) -> Fixture {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let options = LogOptions {
            // Small segments, so segments roll and cuts fall inside them.
            segment_bytes: 4096,
            ..LogOptions::default()
        };
        Fixture {
            log: Mutex::new(MasterLog::open(dir, options).expect("log")),
            store: SharedViews::in_directory(&dir.join("store"), runtime.handle().clone(), 3)
                .expect("store"),
            _runtime: runtime,
            engine: Engine::new(2).expect("engine"),
            bucket_size: BucketSize::new(4).expect("non-zero"),
            // Windows of 10 s over timestamps spread across 5 minutes, out of
            // order: some events are late, some windows fall out of the
            // 200 s retention.
            windows: WindowSettings {
                size: WindowSize::from_millis(10_000).expect("non-zero"),
                allowed_lateness_ms: 5_000,
                retention_ms: 200_000,
                max_future_ms: 60_000,
            },
            appended: BTreeMap::new(),
        }
    }

    /// Appends `n` records to `partition`: texts and timestamps from a
    /// seed; every 7th record not an event, every 11th without a timestamp,
    /// every 13th in the far future.
    fn append(&mut self, partition: i32, n: usize, seed: usize) {
        let start = self
            .appended
            .keys()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| o + 1)
            .max()
            .unwrap_or(0);
        let texts: Vec<(i64, Appended)> = (0..n)
            .map(|i| {
                let k = seed * 31 + i * 7;
                let text = (k % 7 != 3).then(|| {
                    (0..1 + k % 4)
                        .map(|j| WORDS[(k + j * 5) % WORDS.len()])
                        .collect::<Vec<_>>()
                        .join(" ")
                });
                let future = k % 13 == 5;
                let t = 1_000_000 + (k * 7919 % 300_000) as i64;
                let record = Appended {
                    text,
                    timestamp_ms: (k % 11 != 4).then_some(if future {
                        t + 1_000_000_000
                    } else {
                        t
                    }),
                    future,
                };
                (start + i as i64, record)
            })
            .collect();
        let records = texts.iter().map(|(offset, r)| Record {
            offset: *offset,
            timestamp_ms: r.timestamp_ms,
            kind: match (&r.text, r.future) {
                (None, _) => RecordKind::InvalidUtf8,
                (Some(_), true) => RecordKind::FutureEvent,
                (Some(_), false) => RecordKind::Event,
            },
            payload: r.text.as_deref().map_or(b"\xc3\x28", str::as_bytes),
        });
        let mut log = self.log.lock().expect("log");
        log.append(partition, records).expect("append");
        log.commit().expect("commit");
        self.appended
            .extend(texts.into_iter().map(|(o, t)| ((partition, o), t)));
    }

    fn recompute(&self, mode: RecomputeMode) -> BatchView {
        let outcome = recompute(
            &self.log,
            &self.store,
            &self.engine,
            self.bucket_size,
            &self.windows,
            Request::new(mode),
        )
        .expect("recompute");
        let Outcome::Published { manifest, .. } = outcome else {
            panic!("the cut moved, so a view is published");
        };
        self.store
            .load(&manifest)
            .expect("the published view loads")
    }

    /// The counts of the events below `cut`, by an independent recount:
    /// every partition read from its start, one event at a time, words
    /// all-time and per window, late events per window, then the windows
    /// older than the retention dropped.
    fn recount(&self, cut: &Cut) -> Vec<(String, u64)> {
        let s = &self.windows;
        let mut tokenizer = Tokenizer::new();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut marks = BTreeMap::new();
        for ((p, o), r) in &self.appended {
            let (true, Some(text)) = (cut.includes(*p, *o), &r.text) else {
                continue;
            };
            let mark = marks.entry(*p).or_insert_with(|| s.watermark());
            let arrival = mark.arrive(s.size, r.timestamp_ms, r.future);
            let window = arrival.window(s.size, r.timestamp_ms);
            tokenizer.for_each_word(text, |w| {
                *counts.entry(w.to_owned()).or_insert(0) += 1;
                if let Some(window) = window {
                    *counts.entry(Key::InWindow(window, w).encode()).or_insert(0) += 1;
                }
            });
            if let (Arrival::Late, Some(window)) = (arrival, window) {
                *counts.entry(Key::Late(window).encode()).or_insert(0) += 1;
            }
        }
        let newest = marks.values().filter_map(|m| m.newest()).max();
        let horizon = newest.map(|n| s.horizon(n));
        counts
            .into_iter()
            .filter(|(k, _)| match (Key::parse(k), horizon) {
                (Some(Key::InWindow(w, _) | Key::Late(w)), Some(h)) => w >= h,
                _ => true,
            })
            .collect()
    }

    fn events_below(&self, cut: &Cut) -> u64 {
        self.appended
            .iter()
            .filter(|((p, o), r)| cut.includes(*p, *o) && r.text.is_some())
            .count() as u64
    }

    fn assert_exact(&self, view: &BatchView) {
        let words: Vec<(String, u64)> = view
            .words()
            .iter()
            .map(|(w, c)| (w.to_string(), *c))
            .collect();
        assert_eq!(
            words,
            self.recount(&view.header.cut),
            "v{}",
            view.header.version
        );
        assert_eq!(view.header.events, self.events_below(&view.header.cut));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Rounds of appends to random partitions, each followed by a recompute
    /// in a random mode: every view equals the recount at its cut, an
    /// incremental view builds on the one before it, and every full view
    /// agrees with the incremental chain.
    #[test]
    fn every_view_full_or_incremental_equals_a_recount(
        rounds in proptest::collection::vec(
            (proptest::collection::vec((0i32..3, 1usize..120), 1..4), any::<bool>()),
            1..6,
        ),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = Fixture::new(dir.path());
        let mut previous: Option<u64> = None;
        for (round, (appends, incremental)) in rounds.into_iter().enumerate() {
            for (i, (partition, n)) in appends.into_iter().enumerate() {
                f.append(partition, n, round * 10 + i);
            }
            let mode = if incremental { RecomputeMode::Incremental } else { RecomputeMode::Full };
            let outcome = recompute(&f.log, &f.store, &f.engine, f.bucket_size, &f.windows, Request::new(mode))
                .expect("recompute");
            let Outcome::Published { manifest, .. } = outcome else {
                // Appends that did not fill a bucket leave the cut where it was.
                continue;
            };
            let view = f.store.load(&manifest).expect("loads");
            f.assert_exact(&view);
            let lineage = &view.header.lineage;
            match (mode, previous) {
                (RecomputeMode::Incremental, Some(base)) => {
                    prop_assert_eq!(lineage.mode, RecomputeMode::Incremental);
                    prop_assert_eq!(lineage.base_version, Some(base));
                }
                _ => {
                    prop_assert_eq!(lineage.mode, RecomputeMode::Full);
                    prop_assert_eq!(lineage.check.as_ref().is_none_or(|c| c.agreed), true, "{:?}", lineage.check);
                    prop_assert_eq!(lineage.check.is_some(), previous.is_some());
                }
            }
            previous = Some(view.header.version);
        }
    }
}

/// A chain that went wrong (here a view with one count off, as a bug in
/// the incremental road would leave) is found by the next full recompute,
/// which reports the word and publishes the correct view; the chain then
/// continues from the full view.
#[test]
fn a_full_recompute_reports_a_wrong_chain_and_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path());
    f.append(0, 100, 1);
    f.append(1, 60, 2);
    let first = f.recompute(RecomputeMode::Full);
    f.assert_exact(&first);

    // The "incremental" part of partition 1 in v2 counts a word once too
    // often (partition 0 holds no events: seed 1 makes none).
    let latest = f.store.latest().expect("read").expect("published");
    let part = f.store.load_part(&latest.parts[&1]).expect("part 1");
    let mut words = part.words().to_vec();
    let wrong = words
        .iter_mut()
        .find(|(w, _)| WORDS.contains(&w.as_str()))
        .expect("a word occurs");
    wrong.1 += 1;
    let wrong = wrong.0.to_string();
    let lineage = Lineage {
        mode: RecomputeMode::Incremental,
        base_version: Some(1),
        ..part.header.lineage.clone()
    };
    let origin = ViewOrigin {
        events: part.header.events,
        lineage,
        windows: part.header.windows.clone(),
        ..ViewOrigin::new(2, part.header.cut.clone(), f.bucket_size)
    };
    let settings = Settings {
        bucket_size: f.bucket_size,
        windows: Some(f.windows),
    };
    let v2 = f
        .store
        .publish(settings, vec![BatchView::build(origin, words)])
        .expect("publish");
    assert_eq!(v2.version, 2);

    f.append(0, 40, 3);
    let full = f.recompute(RecomputeMode::Full);
    f.assert_exact(&full);
    let check = full.header.lineage.check.clone().expect("checked");
    assert!(!check.agreed, "{check:?}");
    assert_eq!(check.chain_version, 2);
    assert_eq!(check.differing_words, 1);
    assert!(
        check.examples[0].starts_with(&format!("{wrong}: full ")),
        "{check:?}"
    );

    f.append(2, 50, 4);
    let next = f.recompute(RecomputeMode::Incremental);
    f.assert_exact(&next);
    assert_eq!(next.header.lineage.base_version, Some(3));
    assert_eq!(
        next.header.lineage.last_full_ms, full.header.computed_at_ms,
        "the chain remembers its last full recompute"
    );
}

/// An incremental recompute reads only the segments holding new events.
#[test]
fn an_incremental_recompute_reads_only_the_new_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path());
    f.append(0, 2000, 1);
    let first = f.recompute(RecomputeMode::Full);
    f.append(0, 40, 2);
    let log = f.log.lock().expect("log");
    let to = log.end_offsets().aligned_cut(f.bucket_size);
    let all = log.segments_below(&to);
    let new = log.segments_between(&first.header.cut, &to);
    assert!(all.len() > 10, "{} segments", all.len());
    assert!(
        new.len() <= 2,
        "{} of {} segments read",
        new.len(),
        all.len()
    );
    let mut offsets = Vec::new();
    for segment in &new {
        let bytes = segment.load().expect("load");
        for r in segment.records(&bytes) {
            offsets.push(r.expect("record").offset);
        }
    }
    let from = first.header.cut.get(0);
    assert_eq!(offsets, (from..to.get(0)).collect::<Vec<_>>());
}
