//! `lambda mapreduce`: the batch engine over a plain text file.
//!
//! Writes TSV `word<TAB>count`, count descending then word ascending, and a
//! one-line summary on stderr. This is what the benchmarks compare with other
//! engines.

use anyhow::Context;
use batch_layer::mapreduce::{Engine, Order, TextFile, WordCount};
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

    let write = |w: &mut dyn Write| write_tsv(&engine, &out.counts, w);
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

/// Writes the TSV lines `word<TAB>count`, formatted in parallel (with
/// `writeln!` per line, formatting took as long as sorting), a window of
/// lines at a time so the text in memory stays bounded however many words
/// there are.
fn write_tsv(engine: &Engine, counts: &[WordCount], w: &mut dyn Write) -> std::io::Result<()> {
    use rayon::prelude::*;
    const LINES_PER_TASK: usize = 16 << 10;
    const LINES_PER_WINDOW: usize = 64 * LINES_PER_TASK;
    for window in counts.chunks(LINES_PER_WINDOW) {
        let parts: Vec<Vec<u8>> = engine.install(|| {
            window
                .par_chunks(LINES_PER_TASK)
                .map(|lines| {
                    let mut out = Vec::with_capacity(lines.len() * 16);
                    let mut digits = itoa::Buffer::new();
                    for (word, count) in lines {
                        out.extend_from_slice(word.as_bytes());
                        out.push(b'\t');
                        out.extend_from_slice(digits.format(*count).as_bytes());
                        out.push(b'\n');
                    }
                    out
                })
                .collect()
        });
        for part in &parts {
            w.write_all(part)?;
        }
    }
    w.flush()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// More lines than one window, so the windows must join seamlessly.
    #[test]
    fn tsv_equals_line_by_line_formatting_across_windows() {
        let counts: Vec<WordCount> = (0..1_100_000u64)
            .map(|i| (format!("w{i}").into(), i * 7919))
            .collect();
        let mut want = String::new();
        for (w, c) in &counts {
            want.push_str(&format!("{w}\t{c}\n"));
        }
        let engine = Engine::new(2).expect("pool");
        let mut got = Vec::new();
        write_tsv(&engine, &counts, &mut got).expect("write to memory");
        assert!(
            got == want.as_bytes(),
            "the TSV differs from line-by-line formatting"
        );
    }
}
