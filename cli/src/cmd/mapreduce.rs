//! `lambda mapreduce`: the batch engine over a plain text file.
//!
//! Writes TSV `word<TAB>count`, count descending then word ascending, and a
//! one-line summary on stderr. This is what the benchmarks compare with other
//! engines.

use anyhow::Context;
use batch_layer::mapreduce::{Engine, Order, TextFile};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct MapreduceArgs {
    /// The input text, one event per line.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Where to write the TSV (default: standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Worker threads (0: one per CPU).
    #[arg(long, env = common::config::env::THREADS, default_value_t = 0)]
    pub threads: usize,
}

/// Bytes of input per map split.
const SPLIT_BYTES: u64 = 512 << 10;

pub fn run(args: MapreduceArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let engine = Engine::new(args.threads)
        .with_context(|| format!("cannot start {} threads", args.threads))?;
    // Splits small enough that a worker's read buffer stays in its L2 cache
    // while it is tokenized, and many enough for rayon to balance.
    let input = TextFile::open(&args.input, SPLIT_BYTES)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let total = input.len();
    let progress = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        if std::io::stderr().is_terminal() {
            s.spawn(|| show_progress(total, &progress, &done));
        }
        let out = input.word_count(&engine, Order::ByCountDesc, &progress);
        done.store(true, Ordering::Relaxed);
        out
    });
    let out = out.with_context(|| format!("cannot read {}", args.input.display()))?;
    let computed = started.elapsed();
    drop(input);

    let tsv = engine.install(|| to_tsv(&out.counts));
    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        w.write_all(&tsv)?;
        w.flush()
    };
    match &args.output {
        Some(path) => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            write(&mut f).with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => write(&mut std::io::stdout().lock()).context("cannot write to standard output")?,
    }

    let seconds = started.elapsed().as_secs_f64();
    tracing::debug!(
        job_ms = computed.as_secs_f64() * 1e3,
        write_ms = (seconds - computed.as_secs_f64()) * 1e3,
        "mapreduce timeline."
    );
    let mb = total as f64 / 1e6;
    eprintln!(
        "mapreduce: {mb:.1} MB, {} events, {} skipped, {} words, {} distinct, {seconds:.3} s, {:.1} MB/s, {} threads",
        out.stats.events,
        out.stats.skipped,
        out.stats.words,
        out.counts.len(),
        mb / seconds.max(1e-9),
        engine.threads(),
    );
    Ok(())
}

/// The TSV lines `word<TAB>count`, formatted in parallel chunks: with
/// `writeln!` per line, formatting took as long as sorting.
fn to_tsv(counts: &[(batch_layer::mapreduce::Word, u64)]) -> Vec<u8> {
    use rayon::prelude::*;
    let chunks: Vec<Vec<u8>> = counts
        .par_chunks(16 << 10)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() * 16);
            let mut digits = itoa::Buffer::new();
            for (word, count) in chunk {
                out.extend_from_slice(word.as_bytes());
                out.push(b'\t');
                out.extend_from_slice(digits.format(*count).as_bytes());
                out.push(b'\n');
            }
            out
        })
        .collect();
    chunks.concat()
}

fn show_progress(total: u64, progress: &AtomicU64, done: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !done.load(Ordering::Relaxed) {
        bar.set_position(progress.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}
