//! Generated events for the batch layer's benchmarks, and a timed
//! recompute of them. Events: 4–15 words each, 60 %
//! from 16 very common words and the rest uniform over a vocabulary of
//! generated words, so the vocabulary (and so the view) stops growing long
//! before history does, as with natural text.

use batch_layer::mapreduce::Engine;
use batch_layer::master_log::{MasterLog, Record, RecordKind};
use batch_layer::recompute::{recompute, Outcome, Request};
use common::views::SharedViews;
use lambda_core::lineage::RecomputeMode;
use lambda_core::view::Manifest;
use lambda_core::window::{Millis, WindowSettings};
use lambda_core::BucketSize;
use std::sync::Mutex;
use std::time::Instant;

pub const PARTITIONS: i32 = 4;

pub struct Events {
    state: u64,
    vocabulary: u64,
}

impl Events {
    pub fn new(vocabulary: u64) -> Self {
        Self {
            state: 0x2545_f491_4f6c_dd1d,
            vocabulary,
        }
    }

    fn next(&mut self, bound: u64) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % bound
    }

    pub fn next_text(&mut self) -> String {
        const COMMON: [&str; 16] = [
            "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for",
            "on", "are", "with",
        ];
        let words = 4 + self.next(12);
        let mut text = String::new();
        for i in 0..words {
            if i > 0 {
                text.push(' ');
            }
            if self.next(10) < 6 {
                text.push_str(COMMON[self.next(COMMON.len() as u64) as usize]);
            } else {
                let w = self.next(self.vocabulary);
                text.push_str(&format!("w{w:x}"));
            }
        }
        text
    }
}

/// Appends `n` events spread over the partitions, the `i`th of each
/// partition stamped `stamp(i)`, then commits.
pub fn append(
    log: &Mutex<MasterLog>,
    events: &mut Events,
    n: usize,
    stamp: impl Fn(usize) -> Millis,
) {
    let mut log = log.lock().expect("log");
    let per_partition = n / PARTITIONS as usize;
    for p in 0..PARTITIONS {
        let start = log.end_offsets().get(p);
        let texts: Vec<String> = (0..per_partition).map(|_| events.next_text()).collect();
        let records = texts.iter().enumerate().map(|(i, t)| Record {
            offset: start + i as i64,
            timestamp_ms: Some(stamp(i)),
            kind: RecordKind::Event,
            payload: t.as_bytes(),
        });
        log.append(p, records).expect("append");
    }
    log.commit().expect("commit");
}

/// The bytes of every file under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let meta = e.metadata().expect("metadata");
                    if meta.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        meta.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A benchmark setting: the variable's number, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A forced recompute in `mode` with the default windows: its seconds and
/// the view it published.
pub fn timed(
    log: &Mutex<MasterLog>,
    store: &SharedViews,
    engine: &Engine,
    bucket: BucketSize,
    mode: RecomputeMode,
) -> (f64, Manifest) {
    let started = Instant::now();
    let request = Request {
        force: true,
        ..Request::new(mode)
    };
    let outcome = recompute(
        log,
        store,
        engine,
        bucket,
        &WindowSettings::default(),
        request,
    )
    .expect("recompute");
    let seconds = started.elapsed().as_secs_f64();
    let Outcome::Published { manifest, .. } = outcome else {
        panic!("forced, so published");
    };
    assert_eq!(manifest.header.lineage.mode, mode, "ran in the mode asked");
    (seconds, manifest)
}

/// The views of a store in `dir` (on a runtime of its own, for the store's
/// calls).
pub fn views_in(dir: &std::path::Path) -> SharedViews {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().expect("a runtime"));
    SharedViews::in_directory(&dir.join("store"), runtime.handle().clone(), 2).expect("views")
}
