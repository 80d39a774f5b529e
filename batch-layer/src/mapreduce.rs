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
//! ([`TextInput`]).

use common::sync::LockOrStop;
use lambda_core::Tokenizer;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::word_table::WordTable;

pub use lambda_core::view::{Word, WordCount};

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
}

impl Combiner {
    /// Tokenizes one event (or a run of whole events) and counts its words.
    pub fn add_text(&mut self, text: &str) {
        let counts = &mut self.counts;
        self.tokenizer.for_each_word(text, |w| counts.add(w));
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
    let mapped = map_phase(splits, map_split)?;
    let tasks = mapped.len();
    let t1 = std::time::Instant::now();
    let (shuffled, mut stats) = shuffle_phase(mapped, shards);
    let t2 = std::time::Instant::now();
    let reduced = reduce_phase(shuffled);
    let t3 = std::time::Instant::now();
    let counts = sort_phase(reduced, order);
    let t4 = std::time::Instant::now();
    stats.words = counts.iter().map(|(_, c)| c).sum();
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
    Ok(JobOutput { counts, stats })
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

/// A plain text file in memory, one event per line, cut into splits at line
/// boundaries.
#[derive(Debug)]
pub struct TextInput {
    data: Vec<u8>,
    splits: Vec<(usize, usize)>,
}

impl TextInput {
    /// Splits `data` into pieces of about `split_bytes`, each ending after a
    /// newline (or at the end of the data).
    pub fn new(data: Vec<u8>, split_bytes: usize) -> Self {
        let split_bytes = split_bytes.max(1);
        let mut splits = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let mut end = (start + split_bytes).min(data.len());
            if end < data.len() {
                end = match data[end..].iter().position(|&b| b == b'\n') {
                    Some(i) => end + i + 1,
                    None => data.len(),
                };
            }
            splits.push((start, end));
            start = end;
        }
        Self { data, splits }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Counts the words of every line. `progress` receives bytes as splits finish.
    pub fn word_count(&self, engine: &Engine, order: Order, progress: &AtomicU64) -> JobOutput {
        let result: Result<JobOutput, std::convert::Infallible> =
            engine.run(&self.splits, order, |&(s, e), combiner| {
                map_text(&self.data[s..e], combiner);
                progress.fetch_add((e - s) as u64, Ordering::Relaxed);
                Ok(())
            });
        match result {
            Ok(out) => out,
            Err(never) => match never {},
        }
    }
}

/// A text file read split by split while it is mapped, one event per line:
/// no up-front copy of the whole file, and no memory for it either.
///
/// Splits are byte ranges of the file; a split owns the lines that start in
/// it (Hadoop's rule), so it skips the piece of a line that began in the
/// previous split and reads past its end to finish its own last line.
#[derive(Debug)]
pub struct TextFile {
    file: std::fs::File,
    len: u64,
    splits: Vec<(u64, u64)>,
}

impl TextFile {
    /// Opens `path` and cuts it into splits of `split_bytes`.
    pub fn open(path: &std::path::Path, split_bytes: u64) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let split_bytes = split_bytes.max(1);
        let splits = (0..len.div_ceil(split_bytes))
            .map(|i| (i * split_bytes, ((i + 1) * split_bytes).min(len)))
            .collect();
        Ok(Self { file, len, splits })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counts the words of every line, like [`TextInput::word_count`].
    pub fn word_count(
        &self,
        engine: &Engine,
        order: Order,
        progress: &AtomicU64,
    ) -> std::io::Result<JobOutput> {
        thread_local! {
            /// One read buffer per worker thread, reused across its splits.
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        engine.run(&self.splits, order, |&(start, end), combiner| {
            BUFFER.with_borrow_mut(|buf| {
                let lines = self.read_lines(start, end, buf)?;
                map_text(lines, combiner);
                progress.fetch_add(end - start, Ordering::Relaxed);
                Ok(())
            })
        })
    }

    /// Reads the lines that start in `[start, end)` into `buf`.
    fn read_lines<'b>(
        &self,
        start: u64,
        end: u64,
        buf: &'b mut Vec<u8>,
    ) -> std::io::Result<&'b [u8]> {
        buf.clear();
        // One byte before the split tells whether a line starts at `start`.
        append_at(&self.file, start.saturating_sub(1), end, buf)?;
        // Finish the last line: read on until a newline or the end of file.
        let mut pos = end;
        while buf.last() != Some(&b'\n') && pos < self.len {
            let more = (pos + (64 << 10)).min(self.len);
            let old = buf.len();
            append_at(&self.file, pos, more, buf)?;
            if let Some(i) = buf[old..].iter().position(|&b| b == b'\n') {
                buf.truncate(old + i + 1);
                break;
            }
            pos = more;
        }
        // Skip the end of the line that started before this split.
        let first = if start == 0 {
            0
        } else {
            buf.iter()
                .position(|&b| b == b'\n')
                .map_or(buf.len(), |i| i + 1)
        };
        Ok(&buf[first..])
    }
}

/// Appends bytes `[from, to)` of `file` to `buf`.
fn append_at(file: &std::fs::File, from: u64, to: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let n = usize::try_from(to - from).map_err(std::io::Error::other)?;
    let old = buf.len();
    buf.resize(old + n, 0);
    file.read_exact_at(&mut buf[old..], from)
}

/// Maps a run of whole lines. Valid UTF-8 (the usual case) is tokenized in one
/// pass, since a newline separates words anyway; otherwise line by line, and
/// lines that are not UTF-8 are skipped.
fn map_text(chunk: &[u8], combiner: &mut Combiner) {
    combiner.bytes += chunk.len() as u64;
    // SIMD search: a plain filter-and-count was 6 % of the whole job.
    let newlines = memchr::memchr_iter(b'\n', chunk).count() as u64;
    let lines = newlines + u64::from(chunk.last().is_some_and(|&b| b != b'\n'));
    match std::str::from_utf8(chunk) {
        Ok(text) => {
            combiner.events += lines;
            combiner.add_text(text);
        }
        Err(_) => {
            for line in chunk.split(|&b| b == b'\n') {
                match std::str::from_utf8(line) {
                    Ok(text) => {
                        combiner.events += 1;
                        combiner.add_text(text);
                    }
                    Err(_) => combiner.skipped += 1,
                }
            }
            // `split` yields an empty piece after a trailing newline.
            if chunk.last() == Some(&b'\n') {
                combiner.events -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

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

    #[test]
    fn splits_end_at_line_boundaries() {
        let input = TextInput::new(b"aa bb\ncc\ndd ee ff\n".to_vec(), 4);
        for &(s, e) in &input.splits {
            assert!(e == input.data.len() || input.data[e - 1] == b'\n');
            assert!(s < e);
        }
        assert_eq!(input.splits.last().map(|s| s.1), Some(input.data.len()));
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
