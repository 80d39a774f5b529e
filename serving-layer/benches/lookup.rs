//! How the serving layer should hold a batch view: the in-memory sorted array
//! it uses ([`LoadedView`]) against sled, side by side in one run, for the two
//! things that matter: a point lookup (every `/v1/words` query) and loading a
//! new version (every swap).
//!
//! Run: `cargo bench -p lambda-serving --bench lookup`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lambda_core::view::WordCount;
use lambda_core::view::{BatchView, ViewOrigin};
use lambda_core::{BucketSize, Cut};
use serving_layer::replica::LoadedView;
use std::sync::atomic::{AtomicU64, Ordering};

const WORDS: usize = 200_000;

fn words() -> Vec<WordCount> {
    let mut w: Vec<WordCount> = (0..WORDS)
        .map(|i| {
            let key = (i as u64).wrapping_mul(2_654_435_761) % 100_000_000;
            (format!("w{key:x}").into(), (WORDS - i) as u64)
        })
        .collect();
    w.sort();
    w.dedup_by(|a, b| a.0 == b.0);
    w
}

fn loaded(words: Vec<WordCount>) -> LoadedView {
    let origin = ViewOrigin::new(1, Cut::new(), BucketSize::DEFAULT);
    LoadedView::unstored(BatchView::build(origin, words))
}

fn load_sled(tree: &sled::Tree, words: &[WordCount]) {
    let mut batch = sled::Batch::default();
    for (w, c) in words {
        batch.insert(w.as_bytes(), &c.to_le_bytes());
    }
    tree.apply_batch(batch).expect("sled batch");
}

fn bench(c: &mut Criterion) {
    let words = words();
    let probes: Vec<Box<str>> = words
        .iter()
        .step_by(97)
        .map(|(w, _)| w.as_str().into())
        .collect();
    let view = loaded(words.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 << 20)
        .open()
        .expect("sled");
    let tree = db.open_tree("view").expect("tree");
    load_sled(&tree, &words);

    let mut g = c.benchmark_group("point lookup, 200k-word view");
    let mut i = 0;
    g.bench_function("in-memory sorted array", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            view.get(&probes[i])
        })
    });
    g.bench_function("sled", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            tree.get(probes[i].as_bytes())
                .expect("get")
                .map(|v| v.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("load a new version, 200k words");
    g.sample_size(10);
    g.bench_function("in-memory sorted array", |b| {
        b.iter_batched(|| words.clone(), loaded, BatchSize::LargeInput)
    });
    static TREES: AtomicU64 = AtomicU64::new(0);
    g.bench_function("sled", |b| {
        b.iter_batched(
            || {
                let n = TREES.fetch_add(1, Ordering::Relaxed);
                db.open_tree(format!("v{n}")).expect("tree")
            },
            |t| load_sled(&t, &words),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
