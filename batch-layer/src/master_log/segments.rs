//! Reading segments: each is an independent unit of work (one rayon task).

use super::record::{parse, Parsed, Record};
use super::LogError;
use lambda_core::{Offset, Partition};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// A segment to read, from `start` up to (not including) `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    pub partition: Partition,
    pub base_offset: Offset,
    pub path: PathBuf,
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
