//! What following the speed layer costs a serving replica: resolving and
//! applying the upserts of a stream of releases, as `follow` does for each
//! one (the store's commit between the two is left out).
//!
//! The releases are what a speed layer publishes for 200,000 events of ten
//! words (a Zipf-like draw from a 50,000-word vocabulary) on four
//! partitions, in buckets of 64 offsets (as `lambda demo` runs) and
//! one-minute windows, in micro-batches of 200 events (what it reads in
//! about 10 ms at 20,000 events/s): each release carries, per key a batch
//! changed, its absolute count in each bucket. The replica starts empty
//! (every bucket is above its cut) and takes in its rankings every 100
//! releases, as top-K queries would make it.
//!
//! Then a catch-up: a speed layer behind publishes a release per
//! micro-batch of up to 100,000 records. What queries feel of it is the
//! longest the follower holds the replica's write lock at once: printed for
//! releases applied whole and in slices (`replica::slices`).
//!
//! Run: `cargo bench -p lambda-serving --bench apply` (EVENTS=N to resize,
//! CATCH_UP_BATCH=N for the catch-up's micro-batches).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lambda_core::realtime::RealtimeUpsert;
use lambda_core::window::{Key, Window, WindowSettings};
use lambda_core::{BucketSize, Cut, Partition};
use rustc_hash::FxHashMap;
use serving_layer::replica::{slices, Replica, SLICE_COUNTS};
use std::time::{Duration, Instant};

/// The `lambda` binary's allocator (`cli/src/main.rs`), so the bench
/// measures what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WORDS_PER_EVENT: u64 = 10;
const VOCABULARY: f64 = 50_000.0;
const PARTITIONS: u64 = 4;
const BUCKET: u64 = 64;
const BATCH: u64 = 200;
/// Records per micro-batch of a speed layer catching up (its bound).
const CATCH_UP_BATCH: u64 = 100_000;
/// Events per one-minute window at 20,000 events/s.
const PER_WINDOW: u64 = 1_200_000;
/// The first window (an arbitrary minute of 2026).
const FIRST: u64 = 29_400_000;

struct Release {
    upserts: Vec<RealtimeUpsert>,
    as_of: Cut,
}

/// The releases for `events` events, in order, with the absolute counts the
/// speed layer would publish.
fn releases(events: u64, batch_events: u64) -> Vec<Release> {
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 11
    };
    let mut counts: FxHashMap<(String, Partition, u64), u64> = FxHashMap::default();
    let mut out = Vec::new();
    for batch in 0..events / batch_events {
        let mut changed = Vec::new();
        for event in batch * batch_events..(batch + 1) * batch_events {
            let partition = (event % PARTITIONS) as Partition;
            let bucket = event / PARTITIONS / BUCKET;
            let window = Window(FIRST + event / PER_WINDOW);
            for _ in 0..WORDS_PER_EVENT {
                // Zipf-like with exponent 1: rank = V^u for u uniform.
                let u = (next() as f64) / ((1u64 << 53) as f64);
                let rank = VOCABULARY.powf(u) as u64;
                let key = Key::InWindow(window, &format!("w{rank:x}")).encode();
                let c = counts.entry((key.clone(), partition, bucket)).or_default();
                *c += 1;
                changed.push((key, partition, bucket));
            }
        }
        changed.sort();
        changed.dedup();
        let upserts = changed
            .into_iter()
            .map(|(word, partition, bucket)| {
                let count = counts[&(word.clone(), partition, bucket)];
                RealtimeUpsert {
                    word,
                    partition,
                    bucket,
                    count,
                }
            })
            .collect();
        let end = (batch + 1) * batch_events;
        let as_of = (0..PARTITIONS as Partition)
            .map(|p| (p, (end / PARTITIONS) as i64))
            .collect();
        out.push(Release { upserts, as_of });
    }
    out
}

fn follow(releases: &[Release]) -> Replica {
    let mut replica = Replica::new(size()).with_windows(WindowSettings::default());
    for (i, release) in releases.iter().enumerate() {
        let counts = replica.resolve(&release.upserts);
        replica.apply(counts, release.as_of.clone());
        if i % 100 == 99 {
            replica.rank_pending();
        }
    }
    replica.rank_pending();
    replica
}

fn size() -> BucketSize {
    BucketSize::new(BUCKET).expect("non-zero")
}

/// Follows `releases`, each applied in slices of `min_counts` (whole with
/// `usize::MAX`): the longest single apply (a hold of the write lock), all
/// of applying, cutting the slices (outside the lock), and the number of
/// applies.
fn holds(releases: &[Release], min_counts: usize) -> (Duration, Duration, Duration, usize) {
    let mut replica = Replica::new(size()).with_windows(WindowSettings::default());
    let (mut longest, mut total, mut slicing, mut applies) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
    for release in releases {
        let counts = replica.resolve(&release.upserts);
        let from = replica.realtime_as_of().clone();
        let started = Instant::now();
        let parts = slices(counts, &from, release.as_of.clone(), size(), min_counts);
        slicing += started.elapsed();
        for part in parts {
            let started = Instant::now();
            replica.apply(part.counts, part.as_of);
            let took = started.elapsed();
            longest = longest.max(took);
            total += took;
            applies += 1;
        }
    }
    (longest, total, slicing, applies)
}

fn catch_up(events: u64) {
    let batch: u64 = std::env::var("CATCH_UP_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CATCH_UP_BATCH);
    let releases = releases(events.max(batch), batch);
    let upserts: usize = releases.iter().map(|r| r.upserts.len()).sum();
    println!(
        "catch-up: {} releases of {batch} events, {upserts} upserts",
        releases.len()
    );
    for round in 1..=3 {
        for (name, min_counts) in [("whole", usize::MAX), ("sliced", SLICE_COUNTS)] {
            let (longest, total, slicing, applies) = holds(&releases, min_counts);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "  round {round} {name:<7} {applies:>5} applies, longest {:>7.2} ms, all {:>7.1} ms, slicing {:>6.1} ms",
                ms(longest),
                ms(total),
                ms(slicing)
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    // As `lambda` does first thing (see `common::memory`).
    common::memory::avoid_transparent_huge_pages().expect("prctl");
    let events: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    catch_up(events);
    let releases = releases(events, BATCH);
    let upserts: usize = releases.iter().map(|r| r.upserts.len()).sum();
    println!(
        "{} releases, {upserts} upserts ({:.2} per event)",
        releases.len(),
        upserts as f64 / events as f64
    );
    // The replica derives every word's all-time count from its windowed
    // ones: it must come out as the number of draws.
    let replica = follow(&releases);
    let total: u64 = replica.top(usize::MAX).iter().map(|(_, c)| c).sum();
    assert_eq!(
        total,
        events * WORDS_PER_EVENT,
        "every occurrence counted once"
    );

    let mut g = c.benchmark_group("follow");
    g.throughput(Throughput::Elements(upserts as u64));
    g.bench_function("resolve_and_apply", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let replica = follow(&releases);
                took += started.elapsed();
                drop(replica);
            }
            took
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
