//! `lambda mapreduce`: the batch engine over a plain text file.
//!
//! Writes TSV `word<TAB>count`, count descending then word ascending, and a
//! one-line summary on stderr. This is what the benchmarks compare with other
//! engines.

use anyhow::Context;
use batch_layer::mapreduce::{Engine, Order, TextInput};
use clap::Args;
use std::io::{BufWriter, IsTerminal, Write};
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

pub fn run(args: MapreduceArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let engine = Engine::new(args.threads)
        .with_context(|| format!("cannot start {} threads", args.threads))?;
    // Several splits per thread so rayon can balance uneven lines.
    let split_bytes = (data.len() / (engine.threads() * 8)).clamp(64 << 10, 8 << 20);
    let input = TextInput::new(data, split_bytes);
    let total = input.len() as u64;

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
    drop(input);

    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, w);
        for (word, count) in &out.counts {
            writeln!(w, "{word}\t{count}")?;
        }
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
