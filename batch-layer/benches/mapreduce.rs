//! Criterion benchmark of the MapReduce engine over an in-memory text, side
//! by side with a single-threaded `HashMap` count of the same text (the
//! baseline every parallel engine must beat).
//!
//! Run: `cargo bench -p lambda-batch --bench mapreduce`

use batch_layer::mapreduce::{Engine, Order, TextInput};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lambda_core::Tokenizer;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

/// A reproducible Zipf-ish corpus of about `bytes` bytes.
fn corpus(bytes: usize) -> Vec<u8> {
    let common = [
        "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
        "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "Water",
        "Time", "café", "straße",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut out = Vec::with_capacity(bytes + 64);
    while out.len() < bytes {
        for _ in 0..(4 + next(12)) {
            let r = next(1000);
            if r < 600 {
                out.extend_from_slice(common[next(common.len() as u64) as usize].as_bytes());
            } else {
                // The long tail: a generated word out of ~100k.
                let id = next(100_000);
                out.extend_from_slice(format!("w{id:x}").as_bytes());
            }
            out.push(if next(10) == 0 { b',' } else { b' ' });
        }
        out.push(b'\n');
    }
    out
}

fn naive_count(text: &str) -> usize {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut t = Tokenizer::new();
    t.for_each_word(text, |w| {
        if let Some(c) = counts.get_mut(w) {
            *c += 1;
        } else {
            counts.insert(w.to_owned(), 1);
        }
    });
    counts.len()
}

fn bench(c: &mut Criterion) {
    let data = corpus(16 << 20);
    let text = std::str::from_utf8(&data)
        .expect("ascii/utf-8 corpus")
        .to_owned();
    let mut group = c.benchmark_group("word_count_16MiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);

    group.bench_function("naive_hashmap_1_thread", |b| b.iter(|| naive_count(&text)));
    for threads in [1, 2] {
        let engine = Engine::new(threads).expect("pool");
        let input = TextInput::new(data.clone(), (data.len() / (threads * 8)).max(64 << 10));
        group.bench_with_input(BenchmarkId::new("mapreduce", threads), &threads, |b, _| {
            b.iter(|| {
                input
                    .word_count(&engine, Order::ByCountDesc, &AtomicU64::new(0))
                    .counts
                    .len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
