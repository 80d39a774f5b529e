//! An hour of events: the master log, the batch view's size and the
//! recompute times, with one-minute windows (issue 17).
//!
//! Appends `BENCH_MINUTES` (60) minutes of events at `BENCH_RATE` (20,000)
//! events/s straight to a master log (4 partitions, each event stamped so
//! the timestamps spread evenly over the span, one-minute windows, default
//! retention), recomputes in full, then appends one more minute and
//! recomputes incrementally and in full. Prints the sizes and times.
//!
//! Run: `cargo bench -p lambda-batch --bench hour`
//!   BENCH_RATE=20000 BENCH_MINUTES=60 BENCH_VOCABULARY=200000 cargo bench -p lambda-batch --bench hour

use batch_layer::mapreduce::Engine;
use batch_layer::master_log::{FsyncPolicy, LogOptions, MasterLog};
use lambda_core::lineage::RecomputeMode;
use lambda_core::window::Millis;
use lambda_core::BucketSize;
use std::sync::Mutex;
use std::time::Instant;

mod events;

use events::{append, dir_bytes, env, timed, Events, PARTITIONS};

/// Events appended per call, bounding the texts held at once.
const CHUNK: usize = 1_000_000;

/// Appends `minutes` of events at `rate` per second, stamped evenly from
/// `start_ms` on; returns the time just after the last.
fn append_minutes(
    log: &Mutex<MasterLog>,
    events: &mut Events,
    rate: usize,
    minutes: usize,
    start_ms: Millis,
) -> Millis {
    let total = rate * 60 * minutes;
    let span_ms = (minutes * 60_000) as f64;
    let per_partition = (total / PARTITIONS as usize).max(1);
    let mut done = 0;
    while done < total {
        let n = CHUNK.min(total - done);
        let base = done / PARTITIONS as usize;
        append(log, events, n, |i| {
            start_ms + ((base + i) as f64 * span_ms / per_partition as f64) as Millis
        });
        done += n;
    }
    start_ms + span_ms as Millis
}

fn main() {
    let rate = env("BENCH_RATE", 20_000);
    let minutes = env("BENCH_MINUTES", 60).max(1);
    let vocabulary = env("BENCH_VOCABULARY", 200_000) as u64;
    let engine = Engine::new(0).expect("engine");
    let bucket = BucketSize::new(1).expect("non-zero");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        ..LogOptions::default()
    };
    let log = Mutex::new(MasterLog::open(dir.path(), options).expect("log"));
    let store = events::views_in(dir.path());
    let mut events = Events::new(vocabulary);

    let started = Instant::now();
    let start_ms = common::now_ms() - (minutes as Millis + 1) * 60_000;
    let end_ms = append_minutes(&log, &mut events, rate, minutes, start_ms);
    let appended = started.elapsed().as_secs_f64();
    let log_mb = dir_bytes(&dir.path().join("master-log")) as f64 / 1e6;
    let (full_s, view) = timed(&log, &store, &engine, bucket, RecomputeMode::Full);
    append_minutes(&log, &mut events, rate, 1, end_ms);
    let (incremental_s, _) = timed(&log, &store, &engine, bucket, RecomputeMode::Incremental);
    let (full_more_s, _) = timed(&log, &store, &engine, bucket, RecomputeMode::Full);

    let h = &view.header;
    let windows = h.windows.as_ref().expect("a view with windows");
    println!(
        "an hour of events: {minutes} min at {rate} events/s ({} events, 4–15 words, vocabulary {vocabulary}), \
         {PARTITIONS} partitions, 1-minute windows, {} MapReduce threads",
        h.events,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("master log                 {log_mb:>10.1} MB (appended in {appended:.1} s)");
    println!(
        "batch view                 {:>10.1} MB ({} words all-time, {} windowed entries)",
        view.bytes as f64 / 1e6,
        h.distinct_words,
        windows.entries
    );
    println!("full recompute             {full_s:>10.2} s");
    println!(
        "one more minute: incremental {incremental_s:>8.2} s, full {full_more_s:.2} s ({:.1}x)",
        full_more_s / incremental_s
    );
}
