//! Recompute time against the size of history, full and incremental, side
//! by side in one run: a master log of 1×, 2× and 4× `BENCH_HISTORY`
//! events, then a fixed batch of `BENCH_NEW` new events, recomputed
//! incrementally (the previous view plus the new events) and in full (every
//! event). Incremental should stay flat as history grows; full grows with
//! it. Prints one line per size (median of `BENCH_RUNS`).
//!
//! Run: `cargo bench -p lambda-batch --bench recompute`
//!   BENCH_HISTORY=500000 BENCH_NEW=20000 BENCH_RUNS=3 cargo bench -p lambda-batch --bench recompute

use batch_layer::mapreduce::Engine;
use batch_layer::master_log::{FsyncPolicy, LogOptions, MasterLog};
use lambda_core::lineage::RecomputeMode;
use lambda_core::BucketSize;
use std::sync::Mutex;

mod events;

use events::{append, dir_bytes, env, timed, Events, PARTITIONS};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let history = env("BENCH_HISTORY", 500_000);
    let new = env("BENCH_NEW", 20_000);
    let runs = env("BENCH_RUNS", 3).max(1);
    let engine = Engine::new(0).expect("engine");
    let bucket = BucketSize::new(1).expect("non-zero");
    println!(
        "recompute: history of 1x/2x/4x {history} events over {PARTITIONS} partitions, then {new} new events; median of {runs}; {} MapReduce threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>10} {:>9} {:>10} {:>16} {:>10}",
        "history", "log MB", "full s", "incremental s", "full/incr"
    );
    let mut rows = Vec::new();
    for multiple in [1, 2, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogOptions {
            fsync: FsyncPolicy::Never,
            ..LogOptions::default()
        };
        let log = Mutex::new(MasterLog::open(dir.path(), options).expect("log"));
        let store = events::views_in(dir.path());
        let mut events = Events::new(100_000);
        append(&log, &mut events, history * multiple, |_| 0);
        timed(&log, &store, &engine, bucket, RecomputeMode::Full);
        let (mut full, mut incremental) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            // The same new events counted both ways: first incrementally
            // onto the view before them, then in full at the same cut.
            append(&log, &mut events, new, |_| 0);
            incremental.push(timed(&log, &store, &engine, bucket, RecomputeMode::Incremental).0);
            full.push(timed(&log, &store, &engine, bucket, RecomputeMode::Full).0);
        }
        let log_mb = dir_bytes(&dir.path().join("master-log")) as f64 / 1e6;
        let (full, incremental) = (median(full), median(incremental));
        rows.push((full, incremental));
        println!(
            "{:>10} {:>9.1} {:>10.3} {:>16.3} {:>10.1}",
            history * multiple,
            log_mb,
            full,
            incremental,
            full / incremental
        );
    }
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    println!(
        "4x history / 1x history: full {:.2}x, incremental {:.2}x",
        last.0 / first.0,
        last.1 / first.1
    );
}
