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
    let engine = Engine::new(args.threads)
        .with_context(|| format!("cannot start {} threads", args.threads))?;
    let data = read_parallel(&args.input, engine.threads())
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    // Several splits per thread so rayon can balance uneven lines.
    let split_bytes = (data.len() / (engine.threads() * 8)).clamp(64 << 10, 8 << 20);
    let input = TextInput::new(data, split_bytes);
    let total = input.len() as u64;
    let read = started.elapsed();

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
    let computed = started.elapsed();
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
    tracing::debug!(
        read_ms = read.as_secs_f64() * 1e3,
        job_ms = (computed - read).as_secs_f64() * 1e3,
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

/// Reads the whole file with one positioned read per thread: copying out of
/// the page cache (and faulting in the fresh buffer) is CPU work, and a single
/// reader left the other cores idle for a tenth of the run.
fn read_parallel(path: &std::path::Path, threads: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    let mut data = vec![0u8; len];
    let chunk = len.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let readers: Vec<_> = data
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, part)| {
                let file = &file;
                s.spawn(move || file.read_exact_at(part, (i * chunk) as u64))
            })
            .collect();
        readers.into_iter().try_for_each(|r| {
            r.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")))
        })
    })?;
    Ok(data)
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
