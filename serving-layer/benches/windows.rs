//! Ranged answers over one-minute windows: an hour of windows over a
//! 200,000-word vocabulary, as the issue on event-time windows sizes it.
//! Side by side in one run: the all-time top-K (the reference), a ranged
//! top-K over the last hour (the threshold algorithm over the view's sums
//! over the hour and two realtime windows; the first one after a swap reads
//! the view's 60 windows one by one while those sums are computed in the
//! background), and one word's count over the hour; plus what loading the
//! view costs (its per-window rankings are built then).
//!
//! Run: `cargo bench -p lambda-serving --bench windows`

use criterion::{criterion_group, criterion_main, Criterion};
use lambda_core::realtime::RealtimeUpsert;
use lambda_core::view::{BatchView, ViewOrigin, WordCount};
use lambda_core::window::{Key, Range, Window, WindowSettings};
use lambda_core::{BucketSize, Cut};
use serving_layer::replica::{LoadedView, Replica};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

const VOCABULARY: u64 = 200_000;
const WINDOWS: u64 = 60;
/// Distinct words per one-minute window.
const PER_WINDOW: u64 = 50_000;
/// The first window of the hour (an arbitrary minute of 2026).
const FIRST: u64 = 29_400_000;

fn word(i: u64) -> String {
    format!("w{:x}", i.wrapping_mul(2_654_435_761) % 100_000_000)
}

/// Zipf-like: word `i` of the vocabulary counts about `N / (i + 1)`.
fn count(i: u64, window: u64) -> u64 {
    1 + 1_000_000 / (i + 1 + window % 7)
}

/// The batch view: all-time counts and an hour of windows, each holding a
/// different slice of the vocabulary.
fn view() -> BatchView {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut words: Vec<WordCount> = Vec::new();
    for w in 0..WINDOWS {
        for j in 0..PER_WINDOW {
            let i = (j * 3 + w * 1_009) % VOCABULARY;
            let c = count(i, w);
            *totals.entry(word(i)).or_default() += c;
            words.push((
                Key::InWindow(Window(FIRST + w), &word(i)).encode().into(),
                c,
            ));
        }
    }
    words.extend(totals.into_iter().map(|(w, c)| (w.into(), c)));
    words.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    words.dedup_by(|a, b| a.0 == b.0);
    let cut: Cut = [(0, 1 << 20)].into_iter().collect();
    let origin = ViewOrigin::new(1, cut, BucketSize::DEFAULT);
    BatchView::build(origin, words)
}

fn bench(c: &mut Criterion) {
    let size = BucketSize::DEFAULT;
    let started = Instant::now();
    let built = view();
    let keys = built.words().len();
    let manifest = built.manifest(&built.encode());
    let loaded = Instant::now();
    let view = Arc::new(LoadedView::new(manifest, built));
    eprintln!(
        "view: {keys} keys, built in {:.1} s, loaded for queries (rankings per window) in {:.0} ms",
        started.elapsed().as_secs_f64(),
        loaded.elapsed().as_secs_f64() * 1e3
    );
    let mut replica = Replica::new(size).with_windows(WindowSettings::default());
    replica.swap_view(Arc::clone(&view));
    // Realtime counts above the cut: the newest two windows, 5,000 words.
    let upserts: Vec<RealtimeUpsert> = (0..5_000u64)
        .map(|i| RealtimeUpsert {
            word: Key::InWindow(Window(FIRST + WINDOWS - 1 - i % 2), &word(i * 7)).encode(),
            partition: 0,
            bucket: (1 << 20) / size.get() + i % 4,
            count: 1 + i % 50,
        })
        .collect();
    let resolved = replica.resolve(&upserts);
    replica.apply(resolved, [(0, (1 << 20) + 4096)].into_iter().collect());
    // What a release added waits to be ranked until a top-K asks; the
    // serving layer folds it in first, as here.
    replica.rank_pending();
    let hour = Range {
        from: Window(FIRST),
        to: Window(FIRST + WINDOWS),
    };

    let cold = Instant::now();
    let first = replica.top_in(hour, 10);
    eprintln!(
        "first ranged top-10 after a swap (window by window): {:.1} ms; top word {:?}",
        cold.elapsed().as_secs_f64() * 1e3,
        first.first()
    );
    // The first one started computing the view's sums over the hour in the
    // background; the benchmark below reads them.
    let computing = Instant::now();
    while !view.has_range_sums(hour) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    eprintln!(
        "first ranged top-10 after a swap: the view's sums over the hour ready {:.0} ms later",
        computing.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(replica.top_in(hour, 10), first, "both ways agree");
    c.bench_function("top_10_all_time", |b| b.iter(|| replica.top(10)));
    c.bench_function("top_10_last_hour", |b| b.iter(|| replica.top_in(hour, 10)));
    c.bench_function("word_last_hour", |b| {
        b.iter(|| replica.word_in(&word(7), hour))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
