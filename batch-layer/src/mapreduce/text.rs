//! The engine's text inputs: a text file in memory or read split by split,
//! one event per line, cut into splits at line boundaries.

use super::{Combiner, Engine, JobOutput, Order};
use std::sync::atomic::{AtomicU64, Ordering};

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

    #[test]
    fn splits_end_at_line_boundaries() {
        let input = TextInput::new(b"aa bb\ncc\ndd ee ff\n".to_vec(), 4);
        for &(s, e) in &input.splits {
            assert!(e == input.data.len() || input.data[e - 1] == b'\n');
            assert!(s < e);
        }
        assert_eq!(input.splits.last().map(|s| s.1), Some(input.data.len()));
    }
}
