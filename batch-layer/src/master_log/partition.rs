//! One partition's log: a directory of segment files named by base offset.

use super::index::SparseIndex;
use super::record::{parse, Parsed, Record};
use super::{FsyncPolicy, LogError, LogOptions};
use lambda_core::{Offset, Partition};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const SEGMENT_SUFFIX: &str = ".log";

/// A closed or active segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// The offset of its first record (the file name).
    pub base_offset: Offset,
    pub path: PathBuf,
    /// Valid bytes in the file.
    pub len: u64,
    /// Where some of its records start, to read from an offset without
    /// reading the segment from its start.
    pub index: SparseIndex,
}

pub fn segment_file_name(base_offset: Offset) -> String {
    format!("{base_offset:020}{SEGMENT_SUFFIX}")
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    len: u64,
    next_offset: Option<Offset>,
}

/// An append-only log of one Kafka partition.
#[derive(Debug)]
pub struct PartitionLog {
    partition: Partition,
    dir: PathBuf,
    segments: Vec<SegmentMeta>,
    active: Option<File>,
    /// The offset after the last record; `None` while the log is empty.
    next_offset: Option<Offset>,
    /// Whether bytes were written since the last fsync.
    dirty: bool,
    /// The state to return to when a write or fsync fails: the active
    /// segment's length and the next offset at the last commit (or roll).
    mark: Mark,
    segment_bytes: u64,
    buf: Vec<u8>,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, checking every record. A torn tail
    /// of the last segment is truncated; any other damage is an error, or with
    /// `options.repair` the damaged segment and those after it are moved to
    /// `quarantine_dir` so that ingestion refills them from Kafka.
    pub fn open(
        partition: Partition,
        dir: &Path,
        quarantine_dir: &Path,
        options: &LogOptions,
    ) -> Result<Self, LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
            let entry = entry.map_err(|e| LogError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|b| b.parse::<Offset>().ok())
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();

        let mut segments = Vec::with_capacity(bases.len());
        let mut next_offset: Option<Offset> = None;
        let count = bases.len();
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_file_name(base));
            let is_last = i + 1 == count;
            match scan_segment(&path, base, next_offset)? {
                Scan::Clean {
                    len,
                    last_offset,
                    index,
                } => {
                    if let Some(last) = last_offset {
                        next_offset = Some(last + 1);
                    }
                    segments.push(SegmentMeta {
                        base_offset: base,
                        path,
                        len,
                        index,
                    });
                }
                Scan::Damaged {
                    position,
                    reason,
                    torn_tail,
                    last_offset,
                    file_len,
                    index,
                } => {
                    if is_last && torn_tail {
                        truncate(&path, position)?;
                        tracing::warn!(
                            partition,
                            file = %path.display(),
                            position,
                            bytes_cut = file_len - position,
                            "Truncated a torn tail of the master log."
                        );
                        if let Some(last) = last_offset {
                            next_offset = Some(last + 1);
                        }
                        segments.push(SegmentMeta {
                            base_offset: base,
                            path,
                            len: position,
                            index,
                        });
                    } else if options.repair {
                        quarantine(partition, &bases[i..], dir, quarantine_dir)?;
                        break;
                    } else {
                        return Err(LogError::Corrupt {
                            path,
                            position,
                            reason,
                        });
                    }
                }
            }
        }

        let mark = Mark {
            len: segments.last().map_or(0, |s| s.len),
            next_offset,
        };
        let mut log = PartitionLog {
            partition,
            dir: dir.to_owned(),
            segments,
            active: None,
            next_offset,
            dirty: false,
            mark,
            segment_bytes: options.segment_bytes,
            buf: Vec::new(),
        };
        if let Some(last) = log.segments.last() {
            log.active = Some(open_append(&last.path)?);
        }
        Ok(log)
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The offset after the last record, `None` if the log is empty: where
    /// ingestion resumes.
    pub fn next_offset(&self) -> Option<Offset> {
        self.next_offset
    }

    pub fn segments(&self) -> &[SegmentMeta] {
        &self.segments
    }

    /// Appends records in offset order, skipping any at or below the last
    /// offset already in the log (a redelivery after a restart or rebalance):
    /// this is what makes ingestion exactly-once. Returns how many were
    /// appended. Not durable until [`PartitionLog::sync`].
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = Record<'a>>,
    ) -> Result<usize, LogError> {
        if self.active.is_none() && !self.segments.is_empty() {
            return Err(LogError::Wedged {
                partition: self.partition,
            });
        }
        let mut appended = 0;
        self.buf.clear();
        // The offset after the last record written or buffered.
        let mut next = self.next_offset;
        for record in records {
            if next.is_some_and(|n| record.offset < n) {
                continue;
            }
            let needs_roll = match self.segments.last() {
                None => true,
                Some(seg) => seg.len + self.buf.len() as u64 >= self.segment_bytes,
            };
            if needs_roll {
                self.flush_buf(next)?;
                self.roll(record.offset)?;
            }
            let seg = self.segments.last_mut().expect("rolled above");
            seg.index
                .note(record.offset, seg.len + self.buf.len() as u64);
            record.encode_into(&mut self.buf);
            next = Some(record.offset + 1);
            appended += 1;
        }
        self.flush_buf(next)?;
        Ok(appended)
    }

    /// Writes the buffered records; `next` is the offset after them.
    fn flush_buf(&mut self, next: Option<Offset>) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .last_mut()
            .expect("roll() opened a segment before any write");
        let file = self
            .active
            .as_mut()
            .expect("the last segment is open for appending");
        let written = file.write_all(&self.buf);
        let len = self.buf.len() as u64;
        self.buf.clear();
        if let Err(e) = written {
            let error = LogError::io(&seg.path, e);
            return Err(self.cut_back(error));
        }
        seg.len += len;
        self.dirty = true;
        self.next_offset = next;
        Ok(())
    }

    /// After a failed write or fsync (a full disk, say): cuts the active
    /// segment back to the last commit, so the log and its resume position are
    /// exactly as before the failed batch and a retry writes it again. After a
    /// failed fsync the kernel may already have dropped the dirty pages while
    /// still serving them from cache, so bytes written since the mark can never
    /// be trusted again; they are cut, not re-synced. If even the cut fails the
    /// file's end is unknown: the partition refuses appends until a restart,
    /// whose recovery scan finds the true end.
    fn cut_back(&mut self, error: LogError) -> LogError {
        let seg = self
            .segments
            .last_mut()
            .expect("only called with an active segment");
        let Some(file) = self.active.as_ref() else {
            return error;
        };
        match file.set_len(self.mark.len) {
            Ok(()) => {
                seg.len = self.mark.len;
                seg.index.truncate(seg.len);
                self.next_offset = self.mark.next_offset;
                // The shorter length itself must reach the disk.
                self.dirty = true;
            }
            Err(undo) => {
                tracing::error!(partition = self.partition, file = %seg.path.display(), error = %undo, "Cannot cut off a failed write; refusing appends until a restart recovers the log.");
                self.active = None;
            }
        }
        error
    }

    fn roll(&mut self, base_offset: Offset) -> Result<(), LogError> {
        // The finished segment must be durable before a newer one exists, so
        // recovery only ever finds a torn tail in the last segment.
        self.sync()?;
        let path = self.dir.join(segment_file_name(base_offset));
        // Not `create_new`: a roll that failed after creating the file (its
        // directory entry could not be synced, say) leaves it behind empty or
        // cut, and the retry must be able to take it over.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|f| f.set_len(0).map(|()| f))
            .map_err(|e| LogError::io(&path, e))?;
        sync_dir(&self.dir)?;
        self.active = Some(file);
        self.segments.push(SegmentMeta {
            base_offset,
            path,
            len: 0,
            index: SparseIndex::default(),
        });
        self.mark = Mark {
            len: 0,
            next_offset: self.next_offset,
        };
        Ok(())
    }

    /// Deletes the closed segments whose every offset is below `offset`
    /// (sealed into the store); the active segment always stays. Returns how
    /// many were deleted.
    pub fn trim_below(&mut self, offset: Offset) -> Result<usize, LogError> {
        let mut trimmed = 0;
        while self.segments.len() > 1 && self.segments[1].base_offset <= offset {
            let segment = self.segments.remove(0);
            fs::remove_file(&segment.path).map_err(|e| LogError::io(&segment.path, e))?;
            trimmed += 1;
        }
        if trimmed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(trimmed)
    }

    /// Makes everything appended so far durable. On failure the active
    /// segment is cut back to the last commit (see [`Self::cut_back`]).
    pub fn sync(&mut self) -> Result<(), LogError> {
        if let (true, Some(file), Some(seg)) =
            (self.dirty, self.active.as_ref(), self.segments.last())
        {
            if let Err(e) = file.sync_data() {
                let error = LogError::io(&seg.path, e);
                return Err(self.cut_back(error));
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Ends a batch: applies the fsync policy, and on success makes the
    /// batch the state a later failure returns to.
    pub fn commit(&mut self, policy: FsyncPolicy) -> Result<(), LogError> {
        if policy == FsyncPolicy::EveryBatch {
            self.sync()?;
        }
        self.mark = Mark {
            len: self.segments.last().map_or(0, |s| s.len),
            next_offset: self.next_offset,
        };
        Ok(())
    }
}

enum Scan {
    Clean {
        len: u64,
        last_offset: Option<Offset>,
        index: SparseIndex,
    },
    Damaged {
        position: u64,
        reason: &'static str,
        /// Whether the damage reaches the end of the file (a torn write).
        torn_tail: bool,
        last_offset: Option<Offset>,
        file_len: u64,
        /// Of the valid part before `position`.
        index: SparseIndex,
    },
}

fn scan_segment(
    path: &Path,
    base: Offset,
    previous_next: Option<Offset>,
) -> Result<Scan, LogError> {
    let bytes = fs::read(path).map_err(|e| LogError::io(path, e))?;
    let mut pos = 0usize;
    let mut last_offset: Option<Offset> = None;
    let mut expected_min = previous_next.unwrap_or(0).max(base);
    let mut index = SparseIndex::default();
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let damage = match parse(rest) {
            Parsed::Record(record, len) => {
                if record.offset < expected_min {
                    Some(("offsets out of order", false))
                } else {
                    last_offset = Some(record.offset);
                    expected_min = record.offset + 1;
                    index.note(record.offset, pos as u64);
                    pos += len;
                    None
                }
            }
            Parsed::Short => Some(("record cut short", true)),
            Parsed::Corrupt(reason) => {
                // A bad record is a torn write when nothing valid follows it:
                // its declared span runs to the end of the file, or the rest of
                // the file is zeros (space allocated but never written).
                let declared =
                    u32::from_le_bytes(rest[0..4].try_into().expect("parse checked length"))
                        as usize
                        + super::record::HEADER_LEN;
                let torn = declared >= rest.len() || rest.iter().all(|&b| b == 0);
                Some((reason, torn))
            }
        };
        if let Some((reason, torn_tail)) = damage {
            return Ok(Scan::Damaged {
                position: pos as u64,
                reason,
                torn_tail,
                last_offset,
                file_len: bytes.len() as u64,
                index,
            });
        }
    }
    Ok(Scan::Clean {
        len: bytes.len() as u64,
        last_offset,
        index,
    })
}

fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))?;
    file.set_len(len).map_err(|e| LogError::io(path, e))?;
    file.sync_all().map_err(|e| LogError::io(path, e))
}

fn quarantine(
    partition: Partition,
    bases: &[Offset],
    dir: &Path,
    quarantine_dir: &Path,
) -> Result<(), LogError> {
    let target = quarantine_dir.join(format!("p-{partition}"));
    fs::create_dir_all(&target).map_err(|e| LogError::io(&target, e))?;
    for &base in bases {
        let from = dir.join(segment_file_name(base));
        let to = target.join(segment_file_name(base));
        fs::rename(&from, &to).map_err(|e| LogError::io(&from, e))?;
        tracing::error!(
            partition,
            from = %from.display(),
            to = %to.display(),
            "Quarantined a master-log segment; its offsets will be ingested again from Kafka."
        );
    }
    sync_dir(dir)
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))
}

/// Makes a directory's entries (new or renamed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}
