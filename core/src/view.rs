//! The batch view format: a versioned file of word counts, and the manifest
//! that points at the newest.
//!
//! A view file is one JSON header line ([`ViewHeader`]: version, cut, totals,
//! time computed) followed by `key<TAB>count` lines sorted by key, so a
//! reader can binary-search it. Keys are words (all-time counts) and the
//! windowed keys of [`crate::window::Key`], which sort before every word. The [`Manifest`] carries the file's CRC32C;
//! whoever pulls a file checks it with [`verify_and_decode`]. Where the files
//! live and how they are replaced atomically is `lambda_common::views`.

use crate::compose::PartRef;
use crate::cut::{BucketSize, Cut, Partition};
use crate::lineage::Lineage;
use crate::window::{Key, Millis, Window, WindowSettings};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

pub const FORMAT: &str = "lambda-batch-view/1";

/// A word. Words up to 24 bytes (nearly all) are stored inline, so a hash
/// table compares keys without following a pointer to the heap: with boxed
/// keys, a third of the MapReduce's map phase was `memcmp` waiting on cache
/// misses.
pub type Word = CompactString;

/// One word and its count.
pub type WordCount = (Word, u64);

#[derive(Debug, Error)]
pub enum ViewError {
    /// Reading or writing a stored view failed (raised by the view store).
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The shared store holding views failed (raised by the view store).
    #[error("batch view store: {0}")]
    Store(String),
    #[error("batch view {what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error(
        "batch view {version} failed verification: checksum {actual:08x}, expected {expected:08x}"
    )]
    Checksum {
        version: u64,
        expected: u32,
        actual: u32,
    },
}

/// What a view covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewHeader {
    pub format: String,
    pub version: u64,
    /// Exactly the events below this cut are counted.
    pub cut: Cut,
    pub bucket_size: BucketSize,
    /// Milliseconds since the Unix epoch.
    pub computed_at_ms: i64,
    /// Events counted.
    pub events: u64,
    /// Records below the cut that are not events (kept in the master log, not counted).
    pub skipped_records: u64,
    /// Word occurrences (the sum of all-time counts).
    pub total_words: u64,
    pub distinct_words: u64,
    /// How it was computed (views older than incremental recomputes: full).
    #[serde(default)]
    pub lineage: Lineage,
    /// Event time below the cut (views older than windows: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<ViewWindows>,
}

/// What a view knows about event time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewWindows {
    pub settings: WindowSettings,
    /// Per partition, the newest timestamp that moved the watermark among
    /// the events below the cut: where a reader resuming at the cut starts
    /// its watermark.
    pub newest: BTreeMap<Partition, Millis>,
    /// The oldest window the view keeps counts of (retention).
    pub horizon: Window,
    /// Lines of windowed counts (keys other than words) in the file.
    pub entries: u64,
    /// Late events in the retained windows.
    #[serde(default)]
    pub late_events: u64,
}

impl ViewWindows {
    /// Drops the windowed counts older than the horizon.
    pub fn retain(&self, words: &mut Vec<WordCount>) {
        words.retain(|(k, _)| Key::window_of(k).is_none_or(|w| w >= self.horizon));
    }

    /// The horizon the retention gives with these newest timestamps.
    pub fn new(settings: WindowSettings, newest: BTreeMap<Partition, Millis>) -> Self {
        let horizon = newest
            .values()
            .max()
            .map_or(Window(0), |&n| settings.horizon(n));
        Self {
            settings,
            newest,
            horizon,
            entries: 0,
            late_events: 0,
        }
    }
}

/// The pointer to the newest view, also what `GET /views/latest` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    pub file: String,
    /// CRC32C of the whole view file.
    pub checksum: u32,
    pub bytes: u64,
    pub header: ViewHeader,
    /// For a composed view (see [`crate::compose`]): the part each
    /// partition's counts come from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<Partition, PartRef>,
}

impl Manifest {
    /// The file name of a view version.
    pub fn file_name(version: u64) -> String {
        format!("view-{version:010}.tsv")
    }
}

/// A loaded view: counts sorted by word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    pub header: ViewHeader,
    words: Vec<WordCount>,
}

/// What a view covers besides its counts; [`BatchView::build`] derives the
/// rest of the header (totals) from the counts themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewOrigin {
    pub version: u64,
    pub cut: Cut,
    pub bucket_size: BucketSize,
    /// Milliseconds since the Unix epoch.
    pub computed_at_ms: i64,
    pub events: u64,
    pub skipped_records: u64,
    pub lineage: Lineage,
    pub windows: Option<ViewWindows>,
}

impl ViewOrigin {
    /// A view of `version` covering `cut`, computed at the epoch from no
    /// counted events (tests and benchmarks set the fields they care about).
    pub fn new(version: u64, cut: Cut, bucket_size: BucketSize) -> Self {
        Self {
            version,
            cut,
            bucket_size,
            computed_at_ms: 0,
            events: 0,
            skipped_records: 0,
            lineage: Lineage::default(),
            windows: None,
        }
    }
}

impl BatchView {
    /// `words` must be sorted by word, each word once.
    pub fn new(header: ViewHeader, words: Vec<WordCount>) -> Self {
        debug_assert!(words.windows(2).all(|w| w[0].0 < w[1].0));
        Self { header, words }
    }

    /// The view of `words` (in any order, each key once), with the header's
    /// totals computed from them: the one way every view is made. Windowed
    /// counts older than the retention's horizon are left out.
    pub fn build(origin: ViewOrigin, mut words: Vec<WordCount>) -> Self {
        if let Some(windows) = &origin.windows {
            windows.retain(&mut words);
        }
        if !words.is_sorted_by(|a, b| a.0 < b.0) {
            words.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let (plain, windowed): (Vec<&WordCount>, Vec<&WordCount>) =
            words.iter().partition(|(k, _)| Key::is_word(k));
        let windows = origin.windows.map(|w| ViewWindows {
            entries: windowed.len() as u64,
            late_events: windowed
                .iter()
                .filter(|(k, _)| matches!(Key::parse(k), Some(Key::Late(_))))
                .map(|(_, c)| c)
                .sum(),
            ..w
        });
        let header = ViewHeader {
            format: FORMAT.to_owned(),
            version: origin.version,
            cut: origin.cut,
            bucket_size: origin.bucket_size,
            computed_at_ms: origin.computed_at_ms,
            events: origin.events,
            skipped_records: origin.skipped_records,
            total_words: plain.iter().map(|(_, c)| c).sum(),
            distinct_words: plain.len() as u64,
            lineage: origin.lineage,
            windows,
        };
        Self::new(header, words)
    }

    /// The manifest that describes this view stored as `bytes` (its encoding).
    pub fn manifest(&self, bytes: &[u8]) -> Manifest {
        Manifest {
            version: self.header.version,
            file: Manifest::file_name(self.header.version),
            checksum: crc32c::crc32c(bytes),
            bytes: bytes.len() as u64,
            header: self.header.clone(),
            parts: BTreeMap::new(),
        }
    }

    pub fn get(&self, word: &str) -> u64 {
        self.words
            .binary_search_by(|(w, _)| (**w).cmp(word))
            .map(|i| self.words[i].1)
            .unwrap_or(0)
    }

    /// Every key with its count, sorted: the windowed keys, then the words.
    pub fn words(&self) -> &[WordCount] {
        &self.words
    }

    /// The all-time counts only.
    pub fn plain_words(&self) -> &[WordCount] {
        let first = self.words.partition_point(|(k, _)| !Key::is_word(k));
        &self.words[first..]
    }

    /// The windowed keys only.
    pub fn windowed(&self) -> &[WordCount] {
        let first = self.words.partition_point(|(k, _)| !Key::is_word(k));
        &self.words[..first]
    }

    /// Encodes the view file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.header).expect("a header always serialises");
        out.push(b'\n');
        for (w, c) in &self.words {
            out.extend_from_slice(w.as_bytes());
            out.push(b'\t');
            out.extend_from_slice(c.to_string().as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Decodes a view file, checking the format, order and totals.
    pub fn decode(bytes: &[u8]) -> Result<Self, ViewError> {
        let bad = |reason: String| ViewError::Malformed {
            what: "file".to_owned(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let (head, body) = text
            .split_once('\n')
            .ok_or_else(|| bad("no header line".into()))?;
        let header: ViewHeader =
            serde_json::from_str(head).map_err(|e| bad(format!("header: {e}")))?;
        if header.format != FORMAT {
            return Err(bad(format!("unknown format `{}`", header.format)));
        }
        let mut words: Vec<WordCount> = Vec::with_capacity(header.distinct_words as usize);
        let mut total = 0u64;
        for (i, line) in body.lines().enumerate() {
            let (w, c) = line
                .split_once('\t')
                .ok_or_else(|| bad(format!("line {} has no tab", i + 2)))?;
            let c: u64 = c
                .parse()
                .map_err(|_| bad(format!("line {} has a bad count", i + 2)))?;
            if words.last().is_some_and(|(prev, _)| **prev >= *w) {
                return Err(bad(format!("line {} is out of order", i + 2)));
            }
            if Key::is_word(w) {
                total += c;
            }
            words.push((w.into(), c));
        }
        let windowed = header.windows.as_ref().map_or(0, |w| w.entries);
        if words.len() as u64 != header.distinct_words + windowed || total != header.total_words {
            return Err(bad("totals do not match the header".into()));
        }
        Ok(Self { header, words })
    }
}

/// Verifies pulled bytes against a manifest and decodes them.
pub fn verify_and_decode(manifest: &Manifest, bytes: &[u8]) -> Result<BatchView, ViewError> {
    let actual = crc32c::crc32c(bytes);
    if actual != manifest.checksum {
        return Err(ViewError::Checksum {
            version: manifest.version,
            expected: manifest.checksum,
            actual,
        });
    }
    let view = BatchView::decode(bytes)?;
    if view.header != manifest.header {
        return Err(ViewError::Malformed {
            what: format!("version {}", manifest.version),
            reason: "header differs from the manifest".into(),
        });
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: u64, words: &[(&str, u64)]) -> BatchView {
        let words = words.iter().map(|(w, c)| ((*w).into(), *c)).collect();
        let cut = [(0, 1024)].into_iter().collect();
        BatchView::build(ViewOrigin::new(version, cut, BucketSize::DEFAULT), words)
    }

    #[test]
    fn build_sorts_and_totals_and_the_manifest_verifies() {
        let v = view(7, &[("pear", 1), ("apple", 3)]);
        assert_eq!(v.words()[0].0, "apple", "sorted by word");
        assert_eq!((v.header.total_words, v.header.distinct_words), (4, 2));
        let bytes = v.encode();
        let manifest = v.manifest(&bytes);
        assert_eq!(manifest.file, "view-0000000007.tsv");
        assert_eq!(verify_and_decode(&manifest, &bytes).expect("verifies"), v);
    }

    #[test]
    fn encode_decode_round_trip_and_lookup() {
        let v = view(1, &[("apple", 3), ("pear", 1), ("été", 2)]);
        let back = BatchView::decode(&v.encode()).expect("decodes");
        assert_eq!(back, v);
        assert_eq!(back.get("pear"), 1);
        assert_eq!(back.get("été"), 2);
        assert_eq!(back.get("missing"), 0);
    }
}
