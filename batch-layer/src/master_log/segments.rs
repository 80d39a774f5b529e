//! Reading segments: each is an independent unit of work (one rayon task).

use super::record::{parse, Parsed, Record};
use super::LogError;
use lambda_core::{Offset, Partition};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Where a segment's bytes are.
#[derive(Debug, Clone)]
pub enum Source {
    /// A local segment file at the reference's `path`, which the log does
    /// not delete while the reference (its lease) lives.
    File(Lease),
    /// A sealed chunk in the shared store, at the key `path` spells (read
    /// on the runtime's I/O from a blocking thread).
    Store {
        store: common::store::Store,
        runtime: tokio::runtime::Handle,
    },
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Source::File(_), Source::File(_)) => true,
            (Source::Store { store: a, .. }, Source::Store { store: b, .. }) => a.url() == b.url(),
            _ => false,
        }
    }
}

impl Eq for Source {}

/// Held by every reference to a local segment: the log trims segments only
/// when no reference to any of them is alive.
#[derive(Debug, Clone, Default)]
pub struct Lease(pub(super) std::sync::Arc<()>);

/// A segment to read, from `start` up to (not including) `limit`: a local
/// segment file, or a sealed chunk in the store (see `chunks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    pub partition: Partition,
    pub base_offset: Offset,
    /// The file, or the chunk's key in the store.
    pub path: PathBuf,
    pub source: Source,
    /// Bytes known to be valid when the reference was taken.
    pub len: u64,
    /// Where reading starts: a record at or before `start` begins here.
    pub from_byte: u64,
    /// Records below this offset are skipped.
    pub start: Offset,
    /// Records at or above this offset are not read.
    pub limit: Offset,
}

impl SegmentRef {
    /// Reads the segment's valid bytes from `from_byte` (a segment is at
    /// most a few tens of MiB).
    pub fn load(&self) -> Result<Vec<u8>, LogError> {
        if let Source::Store { store, runtime } = &self.source {
            let key = self.path.to_string_lossy();
            return match runtime.block_on(store.get(&key)) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(LogError::MissingChunk {
                    store: store.url().to_owned(),
                    key: key.into_owned(),
                }),
                Err(source) => Err(LogError::Store(source)),
            };
        }
        let io = |e| LogError::io(&self.path, e);
        let want = self.len.saturating_sub(self.from_byte);
        let mut buf = Vec::with_capacity(want as usize);
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(self.from_byte)).map_err(io)?;
        file.take(want).read_to_end(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// Iterates over the records of `bytes` (from [`SegmentRef::load`]) from
    /// the start, below the limit.
    pub fn records<'a>(&'a self, bytes: &'a [u8]) -> RecordIter<'a> {
        RecordIter {
            segment: self,
            bytes,
            pos: 0,
        }
    }
}

/// Records of a loaded segment, in offset order, from its start, below its
/// limit.
#[derive(Debug)]
pub struct RecordIter<'a> {
    segment: &'a SegmentRef,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.bytes.len() {
            match parse(&self.bytes[self.pos..]) {
                Parsed::Record(record, len) => {
                    if record.offset >= self.segment.limit {
                        break;
                    }
                    self.pos += len;
                    if record.offset >= self.segment.start {
                        return Some(Ok(record));
                    }
                }
                Parsed::Short | Parsed::Corrupt(_) => {
                    let position = self.segment.from_byte + self.pos as u64;
                    self.pos = self.bytes.len();
                    return Some(Err(LogError::Corrupt {
                        path: self.segment.path.clone(),
                        position,
                        reason: "unreadable record below the cut",
                    }));
                }
            }
        }
        self.pos = self.bytes.len();
        None
    }
}
