//! The MapReduce engine: word counts over independent splits, on rayon.
//!
//! The textbook phases, each its own function:
//!
//! 1. [`map_phase`]: every task tokenizes its splits and combines counts
//!    locally (the "combiner"), so only one entry per distinct word and task
//!    leaves it.
//! 2. [`shuffle_phase`]: every task's entries are hash-partitioned into `R`
//!    shards, then grouped by shard across all tasks.
//! 3. [`reduce_phase`]: each shard sums its entries, shards in parallel.
//! 4. [`sort_phase`]: the reduced shards are concatenated and sorted.
//!
//! Inputs are anything that can be cut into splits: the master log's segments
//! up to a cut ([`crate::recompute`]), or byte ranges of a text file
//! ([`TextInput`], [`TextFile`], in `text`).

use common::sync::LockOrStop;
use lambda_core::window::{Key, Run, Window, WindowedKeys};
use lambda_core::{Offset, Partition, Tokenizer};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::sync::Mutex;

use crate::word_table::WordTable;

pub use lambda_core::view::{Word, WordCount};
pub use text::{TextFile, TextInput};

mod text;

/// A map task's local table and tallies.
#[derive(Debug, Default)]
pub struct Combiner {
    counts: WordTable,
    tokenizer: Tokenizer,
    /// Events (records or lines) mapped.
    pub events: u64,
    /// Records or lines skipped because they are not events.
    pub skipped: u64,
    /// Input bytes consumed.
    pub bytes: u64,
    /// The event-time lateness of each run of a partition's events mapped
    /// (master-log segments; none for text files).
    pub runs: Vec<RunOf>,
    windowed: WindowedKeys,
}

/// The lateness of one partition's events from `start` on, up to the next
/// run's start.
#[derive(Debug, Clone)]
pub struct RunOf {
    pub partition: Partition,
    pub start: Offset,
    pub run: Run,
}

impl Combiner {
    /// Tokenizes one event (or a run of whole events) and counts its words.
    pub fn add_text(&mut self, text: &str) {
        let counts = &mut self.counts;
        self.tokenizer.for_each_word(text, |w| counts.add(w));
    }

    /// Counts one event's words all-time and, if it has one, in its window
    /// (see [`lambda_core::window::Key`]).
    pub fn add_event(&mut self, text: &str, window: Option<Window>) {
        let Some(window) = window else {
            return self.add_text(text);
        };
        let (counts, keys) = (&mut self.counts, &mut self.windowed);
        keys.set_window(window);
        self.tokenizer.for_each_word(text, |w| {
            counts.add(w);
            counts.add(keys.key(w));
        });
    }
}

/// Totals of a whole job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobStats {
    pub events: u64,
    pub skipped: u64,
    pub bytes: u64,
    /// Word occurrences counted.
    pub words: u64,
}

/// The result of a job: every word with its count, in the requested order.
#[derive(Debug, Default)]
pub struct JobOutput {
    pub counts: Vec<WordCount>,
    pub stats: JobStats,
    /// The map tasks' event-time runs, in no particular order.
    pub runs: Vec<RunOf>,
}

/// How [`sort_phase`] orders the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Word ascending: batch views, for lookups by binary search.
    ByWord,
    /// Count descending, then word ascending: `lambda mapreduce` output.
    ByCountDesc,
}

/// Map: runs `map_split` over every split, combining locally.
///
/// The "task" that combines is a worker thread: each worker keeps one table
/// for all the splits it runs, so a word is allocated, shuffled and reduced
/// once per worker rather than once per split, while splits stay small enough
/// for rayon to balance uneven input.
pub fn map_phase<S, E>(
    splits: &[S],
    map_split: impl Fn(&S, &mut Combiner) -> Result<(), E> + Sync,
) -> Result<Vec<Combiner>, E>
where
    S: Sync,
    E: Send,
{
    let workers = rayon::current_num_threads().max(1);
    let tables: Vec<Mutex<Combiner>> = (0..workers)
        .map(|_| Mutex::new(Combiner::default()))
        .collect();
    splits.par_iter().try_for_each(|split| {
        let worker = rayon::current_thread_index().unwrap_or(0) % workers;
        // Uncontended: a worker runs one split at a time, and map_split does
        // not re-enter rayon.
        let mut combiner = tables[worker].lock_or_stop("a combiner");
        map_split(split, &mut combiner)
    })?;
    Ok(tables
        .into_iter()
        .map(|m| m.into_inner_or_stop("a combiner"))
        .filter(|c| c.bytes > 0 || c.events > 0 || c.skipped > 0 || !c.counts.is_empty())
        .collect())
}

/// Shuffle: partitions every map output into `shards` by word hash and groups
/// the pieces by shard. Returns, per shard, the runs from each map task.
pub fn shuffle_phase(
    map_outputs: Vec<Combiner>,
    shards: usize,
) -> (Vec<Vec<Vec<WordCount>>>, JobStats) {
    let shards = shards.max(1);
    let mut stats = JobStats::default();
    for m in &map_outputs {
        stats.events += m.events;
        stats.skipped += m.skipped;
        stats.bytes += m.bytes;
    }
    let partitioned: Vec<Vec<Vec<WordCount>>> = map_outputs
        .into_par_iter()
        .map(|m| {
            let per_shard = m.counts.len() / shards + 1;
            let mut out: Vec<Vec<WordCount>> =
                (0..shards).map(|_| Vec::with_capacity(per_shard)).collect();
            // The combiner hashed every word already, the same way in
            // every task; its high bits pick the shard.
            for (hash, w, c) in m.counts.into_counts() {
                let shard = ((hash >> 32) % shards as u64) as usize;
                out[shard].push((w, c));
            }
            out
        })
        .collect();
    // Transpose: task-major to shard-major.
    let mut grouped: Vec<Vec<Vec<WordCount>>> = (0..shards)
        .map(|_| Vec::with_capacity(partitioned.len()))
        .collect();
    for task in partitioned {
        for (shard, run) in task.into_iter().enumerate() {
            grouped[shard].push(run);
        }
    }
    (grouped, stats)
}

/// Reduce: sums each shard's runs, shards in parallel.
pub fn reduce_phase(shards: Vec<Vec<Vec<WordCount>>>) -> Vec<Vec<WordCount>> {
    shards
        .into_par_iter()
        .map(|runs| {
            let mut runs = runs.into_iter();
            let Some(first) = runs.next() else {
                return Vec::new();
            };
            let mut sums: FxHashMap<Word, u64> = first.into_iter().collect();
            for run in runs {
                for (w, c) in run {
                    *sums.entry(w).or_insert(0) += c;
                }
            }
            sums.into_iter().collect()
        })
        .collect()
}

/// Sort: concatenates the reduced shards in the requested order.
pub fn sort_phase(reduced: Vec<Vec<WordCount>>, order: Order) -> Vec<WordCount> {
    let mut all: Vec<WordCount> = reduced.into_iter().flatten().collect();
    match order {
        Order::ByWord => all.par_sort_unstable_by(|a, b| a.0.cmp(&b.0)),
        Order::ByCountDesc => {
            all.par_sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)))
        }
    }
    all
}

/// Runs the four phases on the current rayon pool.
pub fn run_job<S, E>(
    splits: &[S],
    shards: usize,
    order: Order,
    map_split: impl Fn(&S, &mut Combiner) -> Result<(), E> + Sync,
) -> Result<JobOutput, E>
where
    S: Sync,
    E: Send,
{
    let t0 = std::time::Instant::now();
    let mut mapped = map_phase(splits, map_split)?;
    let runs = mapped
        .iter_mut()
        .flat_map(|c| std::mem::take(&mut c.runs))
        .collect();
    let tasks = mapped.len();
    let t1 = std::time::Instant::now();
    let (shuffled, mut stats) = shuffle_phase(mapped, shards);
    let t2 = std::time::Instant::now();
    let reduced = reduce_phase(shuffled);
    let t3 = std::time::Instant::now();
    let counts = sort_phase(reduced, order);
    let t4 = std::time::Instant::now();
    stats.words = counts
        .iter()
        .filter(|(w, _)| Key::is_word(w))
        .map(|(_, c)| c)
        .sum();
    let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
    tracing::debug!(
        splits = splits.len(),
        map_tasks = tasks,
        shards,
        map_ms = ms(t0, t1),
        shuffle_ms = ms(t1, t2),
        reduce_ms = ms(t2, t3),
        sort_ms = ms(t3, t4),
        "MapReduce phases."
    );
    Ok(JobOutput {
        counts,
        stats,
        runs,
    })
}

/// A dedicated rayon pool, so a job's thread count is the caller's choice and
/// recomputes never compete with the async runtime's threads.
#[derive(Debug)]
pub struct Engine {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl Engine {
    /// `threads == 0` means one per CPU.
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        Self::build(threads, false)
    }

    /// An engine whose threads run at a lower scheduling priority, for
    /// recomputes beside latency-sensitive work (see [`common::background`]).
    pub fn background(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        Self::build(threads, true)
    }

    fn build(threads: usize, background: bool) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mapreduce-{i}"))
            .start_handler(move |_| {
                if background {
                    common::background::lower_this_threads_priority();
                }
            })
            .build()?;
        let threads = pool.current_num_threads();
        Ok(Self { pool, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Reduce shards: a few per thread, so shards balance across threads.
    pub fn shards(&self) -> usize {
        self.threads * 4
    }

    /// Runs `f` on this engine's pool, for work around a job.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Runs a job on this engine's pool.
    pub fn run<S, E>(
        &self,
        splits: &[S],
        order: Order,
        map_split: impl Fn(&S, &mut Combiner) -> Result<(), E> + Sync + Send,
    ) -> Result<JobOutput, E>
    where
        S: Sync,
        E: Send,
    {
        let shards = self.shards();
        self.pool
            .install(|| run_job(splits, shards, order, map_split))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;

    fn naive(text: &str) -> HashMap<String, u64> {
        let mut t = Tokenizer::new();
        let mut counts = HashMap::new();
        t.for_each_word(text, |w| *counts.entry(w.to_owned()).or_insert(0) += 1);
        counts
    }

    fn run_text(data: &[u8], threads: usize, split: usize, order: Order) -> JobOutput {
        let engine = Engine::new(threads).expect("pool");
        TextInput::new(data.to_vec(), split).word_count(&engine, order, &AtomicU64::new(0))
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_background_engine_runs_its_threads_at_a_lower_priority() {
        use common::background::{this_threads_nice, BACKGROUND_NICE};
        let here = this_threads_nice();
        let background = Engine::background(2).expect("pool");
        let seen: Vec<i32> = background.install(|| rayon::broadcast(|_| this_threads_nice()));
        assert_eq!(seen, vec![(here + BACKGROUND_NICE).min(19); 2]);
        let normal = Engine::new(2).expect("pool");
        let seen: Vec<i32> = normal.install(|| rayon::broadcast(|_| this_threads_nice()));
        assert_eq!(seen, vec![here; 2]);
    }

    #[test]
    fn counts_sorted_by_count_then_word() {
        let out = run_text(b"b a b\nc a b\n", 2, 3, Order::ByCountDesc);
        let got: Vec<(&str, u64)> = out.counts.iter().map(|(w, c)| (&**w, *c)).collect();
        assert_eq!(got, [("b", 3), ("a", 2), ("c", 1)]);
        assert_eq!(out.stats.events, 2);
        assert_eq!(out.stats.words, 6);
        assert_eq!(out.stats.bytes, 12);
    }

    #[test]
    fn invalid_lines_are_skipped_and_counted() {
        let out = run_text(
            b"good line\n\xff\xfe bad\nalso good",
            1,
            1000,
            Order::ByWord,
        );
        let got: Vec<&str> = out.counts.iter().map(|(w, _)| &**w).collect();
        assert_eq!(got, ["also", "good", "line"]);
        assert_eq!((out.stats.events, out.stats.skipped), (2, 1));
    }

    fn run_file(data: &[u8], threads: usize, split: u64) -> JobOutput {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("input.txt");
        std::fs::write(&path, data).expect("write input");
        let engine = Engine::new(threads).expect("pool");
        TextFile::open(&path, split)
            .expect("open")
            .word_count(&engine, Order::ByWord, &AtomicU64::new(0))
            .expect("word count")
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = TextFile::open(std::path::Path::new("/nonexistent/input.txt"), 10)
            .expect_err("no such file");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    proptest! {
        /// Reading split by split from a file, whatever the split size and
        /// however lines straddle split boundaries, gives exactly what the
        /// whole text in memory gives.
        #[test]
        fn a_file_read_by_splits_counts_like_the_text_in_memory(
            // Short lines of a few letters, spaces and a byte that is never
            // UTF-8, so some lines are skipped.
            lines in prop::collection::vec(
                prop::collection::vec(prop::sample::select(vec![b'a', b'b', b' ', 0xff]), 0..40),
                0..40,
            ),
            trailing_newline in any::<bool>(),
            threads in 1usize..4,
            split in 1u64..50,
        ) {
            let mut data = lines.join(&b'\n');
            if trailing_newline {
                data.push(b'\n');
            }
            let want = run_text(&data, 1, 1 << 20, Order::ByWord);
            let got = run_file(&data, threads, split);
            prop_assert_eq!(&got.counts, &want.counts);
            prop_assert_eq!(got.stats, want.stats);
        }

        #[test]
        fn mapreduce_equals_a_single_threaded_count(
            lines in prop::collection::vec("[a-cA-C0-9 ,.'é\u{0130}-]{0,30}", 0..60),
            threads in 1usize..5,
            split in 1usize..64,
        ) {
            let text = lines.join("\n");
            let out = run_text(text.as_bytes(), threads, split, Order::ByWord);
            let got: HashMap<String, u64> = out.counts.iter().map(|(w, c)| (w.to_string(), *c)).collect();
            prop_assert_eq!(&got, &naive(&text));
            prop_assert_eq!(out.counts.len(), got.len(), "no word appears twice");
            prop_assert!(out.counts.windows(2).all(|w| w[0].0 < w[1].0), "sorted by word");
            prop_assert_eq!(out.stats.events, text.lines().count() as u64);
        }
    }
}
