//! Batch views: immutable, versioned files of word counts, and the manifest
//! that points at the newest.
//!
//! ```text
//! <data-dir>/views/view-<version, 10 digits>.tsv
//! <data-dir>/views/MANIFEST.json
//! ```
//!
//! A view file is one JSON header line ([`ViewHeader`]: version, cut, totals,
//! time computed) followed by `word<TAB>count` lines sorted by word, so a
//! reader can binary-search it. The manifest carries the file's CRC32C; serving
//! layers verify it after pulling the file. Files are written to a temporary
//! name, fsynced and renamed, and the manifest is replaced the same way after
//! the view is durable, so a crash leaves either the old or the new view.

use crate::mapreduce::WordCount;
use common::{BucketSize, Cut};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const FORMAT: &str = "lambda-batch-view/1";
const MANIFEST: &str = "MANIFEST.json";

#[derive(Debug, Error)]
pub enum ViewError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ViewError + '_ {
    move |source| ViewError::Io {
        path: path.to_owned(),
        source,
    }
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
    /// Word occurrences (the sum of all counts).
    pub total_words: u64,
    pub distinct_words: u64,
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
}

/// A loaded view: counts sorted by word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    pub header: ViewHeader,
    words: Vec<WordCount>,
}

impl BatchView {
    /// `words` must be sorted by word, each word once.
    pub fn new(header: ViewHeader, words: Vec<WordCount>) -> Self {
        debug_assert!(words.windows(2).all(|w| w[0].0 < w[1].0));
        Self { header, words }
    }

    pub fn get(&self, word: &str) -> u64 {
        self.words
            .binary_search_by(|(w, _)| (**w).cmp(word))
            .map(|i| self.words[i].1)
            .unwrap_or(0)
    }

    pub fn words(&self) -> &[WordCount] {
        &self.words
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
            total += c;
            words.push((w.into(), c));
        }
        if words.len() as u64 != header.distinct_words || total != header.total_words {
            return Err(bad("totals do not match the header".into()));
        }
        Ok(Self { header, words })
    }
}

/// The directory of views and their manifest.
#[derive(Debug)]
pub struct ViewStore {
    dir: PathBuf,
    keep: usize,
}

impl ViewStore {
    /// `keep` is how many versions stay on disk (at least 1).
    pub fn open(data_dir: &Path, keep: usize) -> Result<Self, ViewError> {
        let dir = data_dir.join("views");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Leftovers of a crash mid-write are never referenced: remove them.
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            keep: keep.max(1),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest view's manifest, if any view was written.
    pub fn latest(&self) -> Result<Option<Manifest>, ViewError> {
        let path = self.dir.join(MANIFEST);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ViewError::Malformed {
                        what: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn file_name(version: u64) -> String {
        format!("view-{version:010}.tsv")
    }

    /// The bytes of a stored version, `None` if it is not (or no longer) kept.
    pub fn read(&self, version: u64) -> Result<Option<Vec<u8>>, ViewError> {
        let path = self.dir.join(Self::file_name(version));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Writes `view` durably, points the manifest at it, and prunes old
    /// versions beyond `keep`.
    pub fn publish(&self, view: &BatchView) -> Result<Manifest, ViewError> {
        let version = view.header.version;
        let bytes = view.encode();
        let manifest = Manifest {
            version,
            file: Self::file_name(version),
            checksum: crc32c::crc32c(&bytes),
            bytes: bytes.len() as u64,
            header: view.header.clone(),
        };
        self.store_verified(&manifest, &bytes)?;
        Ok(manifest)
    }

    /// Stores a view's file bytes as they are (already verified against
    /// `manifest`, e.g. pulled by a serving layer), then the manifest.
    pub fn store_verified(&self, manifest: &Manifest, bytes: &[u8]) -> Result<(), ViewError> {
        let manifest = Manifest {
            file: Self::file_name(manifest.version),
            ..manifest.clone()
        };
        self.write_atomically(&manifest.file, bytes)?;
        let manifest_bytes =
            serde_json::to_vec_pretty(&manifest).expect("a manifest always serialises");
        self.write_atomically(MANIFEST, &manifest_bytes)?;
        self.prune(manifest.version);
        Ok(())
    }

    /// The newest stored view, verified against its manifest.
    pub fn load_latest(&self) -> Result<Option<(Manifest, BatchView)>, ViewError> {
        let Some(manifest) = self.latest()? else {
            return Ok(None);
        };
        let bytes = self
            .read(manifest.version)?
            .ok_or_else(|| ViewError::Malformed {
                what: self.dir.join(&manifest.file).display().to_string(),
                reason: "the manifest points at a missing file".into(),
            })?;
        let view = verify_and_decode(&manifest, &bytes)?;
        Ok(Some((manifest, view)))
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), ViewError> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let target = self.dir.join(name);
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &target).map_err(io_err(&target))?;
        // The rename is durable only once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    fn prune(&self, newest: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(v) = name
                .to_str()
                .and_then(|n| n.strip_prefix("view-"))
                .and_then(|n| n.strip_suffix(".tsv"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if v + (self.keep as u64) <= newest {
                if let Err(error) = fs::remove_file(entry.path()) {
                    tracing::warn!(version = v, %error, "Cannot remove an old batch view.");
                }
            }
        }
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
        let words: Vec<WordCount> = words.iter().map(|(w, c)| ((*w).into(), *c)).collect();
        BatchView::new(
            ViewHeader {
                format: FORMAT.into(),
                version,
                cut: [(0, 1024)].into_iter().collect(),
                bucket_size: BucketSize::DEFAULT,
                computed_at_ms: 1,
                events: 3,
                skipped_records: 0,
                total_words: words.iter().map(|w| w.1).sum(),
                distinct_words: words.len() as u64,
            },
            words,
        )
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

    #[test]
    fn publish_keeps_n_versions_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ViewStore::open(dir.path(), 2).expect("store");
        assert_eq!(store.latest().expect("read"), None);
        for version in 1..=3 {
            store
                .publish(&view(version, &[("a", version)]))
                .expect("publish");
        }
        let latest = store.latest().expect("read").expect("some");
        assert_eq!(latest.version, 3);
        assert!(store.read(1).expect("read").is_none(), "pruned");
        let bytes = store.read(2).expect("read").expect("kept");
        assert_eq!(BatchView::decode(&bytes).expect("decodes").get("a"), 2);

        let bytes = store.read(3).expect("read").expect("kept");
        assert_eq!(
            verify_and_decode(&latest, &bytes)
                .expect("verified")
                .get("a"),
            3
        );
        let mut tampered = bytes.clone();
        let last = tampered.len() - 2;
        tampered[last] = b'9';
        assert!(matches!(
            verify_and_decode(&latest, &tampered),
            Err(ViewError::Checksum { .. })
        ));
    }
}
