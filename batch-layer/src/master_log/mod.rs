//! The master log: every event that ever arrived, immutable, per partition.
//!
//! ```text
//! <data-dir>/master-log/p-<partition>/<base offset, 20 digits>.log
//! <data-dir>/quarantine/p-<partition>/…       (segments set aside by --repair)
//! ```
//!
//! Records are appended in batches and fsynced by policy before a batch counts
//! as ingested. The log is its own resume position: ingestion continues at
//! [`MasterLog::end_offsets`] (last offset + 1 per partition) and skips
//! redelivered offsets, so a crash anywhere neither loses nor duplicates.
//!
//! With a shared store (`--store-url`, see `chunks`), chunks the log has
//! passed are sealed into it, the local segments wholly below the sealed end
//! are deleted once no reader holds a reference to a local segment, and the
//! offsets below the local log's start are read from the store.

pub mod chunks;
mod index;
mod partition;
pub mod record;
mod sealing;
mod segments;

pub use partition::{sync_dir, PartitionLog, SegmentMeta};
pub use record::{Record, RecordKind};
use sealing::Sealed;
pub use sealing::ToSeal;
pub use segments::{Lease, RecordIter, SegmentRef, Source};

use lambda_core::{Cut, Offset, Partition, Positions};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("master log of partition {partition} could not cut off a failed write, so its end is unknown; refusing appends until a restart recovers it")]
    Wedged { partition: Partition },
    #[error(transparent)]
    Store(#[from] common::store::StoreError),
    #[error("the store {store} listed the chunk `{key}`, which is gone")]
    MissingChunk { store: String, key: String },
    #[error("master log is corrupt in {path} at byte {position}: {reason}; refusing to start (run with --repair to quarantine the damaged segment and re-ingest it from Kafka)")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
}

impl LogError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// When appended batches are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// fsync every appended batch before it counts as ingested (the default).
    #[default]
    EveryBatch,
    /// Leave it to the OS: faster, but a machine crash can lose the last
    /// seconds; they are then ingested again from Kafka if still retained.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "every-batch" | "always" => Ok(FsyncPolicy::EveryBatch),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "unknown fsync policy `{other}` (use every-batch or never)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Quarantine damaged segments instead of refusing to start.
    pub repair: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::EveryBatch,
            repair: false,
        }
    }
}

/// The master log of every partition.
#[derive(Debug)]
pub struct MasterLog {
    root: PathBuf,
    quarantine: PathBuf,
    options: LogOptions,
    partitions: BTreeMap<Partition, PartitionLog>,
    /// The shared store and the chunks sealed into it, if there is one.
    sealed: Option<Sealed>,
    /// Cloned into every reference to a local segment (see [`Self::trim`]).
    lease: Lease,
    /// The partitions this instance owns (see [`Self::set_owned`]); `None`
    /// until ingestion knows them.
    owned: Option<BTreeSet<Partition>>,
}

impl MasterLog {
    /// Opens the log under `data_dir`, recovering every partition found.
    pub fn open(data_dir: &Path, options: LogOptions) -> Result<Self, LogError> {
        let root = data_dir.join("master-log");
        let quarantine = data_dir.join("quarantine");
        fs::create_dir_all(&root).map_err(|e| LogError::io(&root, e))?;
        let mut partitions = BTreeMap::new();
        for entry in fs::read_dir(&root).map_err(|e| LogError::io(&root, e))? {
            let entry = entry.map_err(|e| LogError::io(&root, e))?;
            let name = entry.file_name();
            let Some(p) = name
                .to_str()
                .and_then(|n| n.strip_prefix("p-"))
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let log = PartitionLog::open(p, &entry.path(), &quarantine, &options)?;
            partitions.insert(p, log);
        }
        Ok(MasterLog {
            root,
            quarantine,
            options,
            partitions,
            sealed: None,
            lease: Lease::default(),
            owned: None,
        })
    }

    pub fn options(&self) -> &LogOptions {
        &self.options
    }

    /// The log of `partition`, created on first use.
    pub fn partition_mut(&mut self, partition: Partition) -> Result<&mut PartitionLog, LogError> {
        if !self.partitions.contains_key(&partition) {
            let dir = self.root.join(format!("p-{partition}"));
            let log = PartitionLog::open(partition, &dir, &self.quarantine, &self.options)?;
            sync_dir(&self.root)?;
            self.partitions.insert(partition, log);
        }
        Ok(self.partitions.get_mut(&partition).expect("inserted above"))
    }

    /// Appends to one partition (see [`PartitionLog::append`]).
    pub fn append<'a>(
        &mut self,
        partition: Partition,
        records: impl IntoIterator<Item = Record<'a>>,
    ) -> Result<usize, LogError> {
        // A local log that starts empty above sealed chunks starts at their
        // end: nothing below it is appended again.
        let sealed_end = self.sealed_end(partition);
        let log = self.partition_mut(partition)?;
        let floor = if log.next_offset().is_none() {
            sealed_end
        } else {
            0
        };
        log.append(records.into_iter().filter(|r| r.offset >= floor))
    }

    /// Applies the fsync policy to every partition: call after each batch and
    /// before treating it as ingested.
    pub fn commit(&mut self) -> Result<(), LogError> {
        let policy = self.options.fsync;
        for log in self.partitions.values_mut() {
            log.commit(policy)?;
        }
        Ok(())
    }

    /// Per partition, the offset after the last record: where ingestion resumes
    /// and the largest cut a view may take. Partitions without records are
    /// absent.
    pub fn end_offsets(&self) -> Positions {
        let mut ends: BTreeMap<Partition, Offset> = self.sealed_ends().iter().collect();
        for (&p, log) in &self.partitions {
            if let Some(next) = log.next_offset() {
                let end = ends.entry(p).or_insert(next);
                *end = (*end).max(next);
            }
        }
        ends.into_iter().collect()
    }

    /// Records which partitions this instance owns now: all of the topic's,
    /// or the ones its consumer group assigned it. Recomputes cover those.
    pub fn set_owned(&mut self, partitions: BTreeSet<Partition>) {
        self.owned = Some(partitions);
    }

    /// The partitions this instance owns, once ingestion has said.
    pub fn owned(&self) -> Option<&BTreeSet<Partition>> {
        self.owned.as_ref()
    }

    /// The ends of the partitions this instance owns (one without records
    /// at 0); before ingestion has said which, of every partition the log
    /// holds.
    pub fn owned_ends(&self) -> Positions {
        let ends = self.end_offsets();
        match &self.owned {
            Some(owned) => owned.iter().map(|&p| (p, ends.get(p))).collect(),
            None => ends,
        }
    }

    /// The segments holding records below `cut`, as independent units of work
    /// for readers. Taken under the caller's lock; reading needs no lock, since
    /// records below a cut taken after `commit` never change.
    pub fn segments_below(&self, cut: &Cut) -> Vec<SegmentRef> {
        self.segments_between(&Cut::new(), cut)
    }

    /// The segments holding records at or above `from` and below `to`, each
    /// read only within those bounds (an incremental recompute's new
    /// events). Locking as [`Self::segments_below`].
    pub fn segments_between(&self, from: &Cut, to: &Cut) -> Vec<SegmentRef> {
        let mut out = Vec::new();
        // Below the local log's start, the store's chunks.
        if let Some(sealed) = &self.sealed {
            for (&partition, chunks) in &sealed.chunks {
                let (start, limit) = (from.get(partition), to.get(partition));
                let limit = limit.min(self.local_start(partition));
                for chunk in chunks {
                    if chunk.first < limit && chunk.end > start {
                        out.push(SegmentRef {
                            partition,
                            base_offset: chunk.first,
                            path: PathBuf::from(&chunk.key),
                            source: Source::Store {
                                store: sealed.store.clone(),
                                runtime: sealed.runtime.clone(),
                            },
                            len: 0,
                            from_byte: 0,
                            start: start.max(chunk.first),
                            limit: limit.min(chunk.end),
                        });
                    }
                }
            }
        }
        for (&partition, log) in &self.partitions {
            let (start, limit) = (from.get(partition), to.get(partition));
            let segments = log.segments();
            for (i, seg) in segments.iter().enumerate() {
                // A segment holds the offsets up to the next one's base.
                let ends_after_start = segments
                    .get(i + 1)
                    .is_none_or(|next| next.base_offset > start);
                if seg.base_offset < limit && ends_after_start && seg.len > 0 {
                    out.push(SegmentRef {
                        partition,
                        base_offset: seg.base_offset,
                        path: seg.path.clone(),
                        source: Source::File(self.lease.clone()),
                        // Up to a record at or past the limit, where the
                        // index knows one (sealing a chunk from a large
                        // segment reads the chunk, not the segment's rest).
                        len: seg
                            .index
                            .position_from(limit)
                            .map_or(seg.len, |p| p.min(seg.len)),
                        from_byte: seg.index.position_before(start),
                        start,
                        limit,
                    });
                }
            }
        }
        out
    }
}
