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
mod segments;

pub use partition::{sync_dir, PartitionLog, SegmentMeta};
pub use record::{Record, RecordKind};
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

/// The shared store the log seals chunks into, and what it holds.
#[derive(Debug)]
struct Sealed {
    store: common::store::Store,
    runtime: tokio::runtime::Handle,
    /// Offsets per chunk.
    size: Offset,
    chunks: BTreeMap<Partition, Vec<chunks::Chunk>>,
}

/// A chunk ready to seal: its bounds and the local segments holding it.
#[derive(Debug)]
pub struct ToSeal {
    pub partition: Partition,
    pub first: Offset,
    pub end: Offset,
    pub segments: Vec<SegmentRef>,
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

    /// Seals chunks of `size` offsets into `store` from now on, which
    /// already holds `chunks` (see [`chunks::list`]): where the local log
    /// ends at or below their end (a new, lost or stale data directory:
    /// another instance sealed further), its segments are deleted and it
    /// resumes at their end, so the local log always continues the store
    /// without a hole; the offsets below its start are read from the store.
    pub fn attach_store(
        &mut self,
        store: common::store::Store,
        runtime: tokio::runtime::Handle,
        size: Offset,
        chunks: BTreeMap<Partition, Vec<chunks::Chunk>>,
    ) -> Result<(), LogError> {
        self.sealed = Some(Sealed {
            store,
            runtime,
            size,
            chunks,
        });
        let stale: Vec<Partition> = self
            .partitions
            .iter()
            .filter(|(&p, log)| {
                log.next_offset()
                    .is_some_and(|next| next <= self.sealed_end(p))
            })
            .map(|(&p, _)| p)
            .collect();
        for p in stale {
            self.partitions.remove(&p);
            let dir = self.root.join(format!("p-{p}"));
            fs::remove_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
            tracing::info!(
                partition = p,
                sealed_end = self.sealed_end(p),
                "The store holds everything the local log had; resuming at its end."
            );
        }
        sync_dir(&self.root)
    }

    /// Takes in what the store holds now (`chunks`, see [`chunks::list`]):
    /// chunks other instances sealed since this one last looked (they own
    /// partitions this one may own next). A local log the store has
    /// overtaken is deleted, as at start, unless a reference to a local
    /// segment is alive (a recompute reading): then that partition waits
    /// for a later call, so no reader ever sees the store's chunks and the
    /// local log overlap. Returns the partitions brought up to the store.
    pub fn refresh_sealed(
        &mut self,
        chunks: BTreeMap<Partition, Vec<chunks::Chunk>>,
    ) -> Result<Vec<Partition>, LogError> {
        let leased = std::sync::Arc::strong_count(&self.lease.0) > 1;
        let mut refreshed = Vec::new();
        for (p, listed) in chunks {
            let Some(end) = listed.last().map(|c| c.end) else {
                continue;
            };
            if end <= self.sealed_end(p) {
                continue;
            }
            let stale = self
                .partitions
                .get(&p)
                .and_then(PartitionLog::next_offset)
                .is_some_and(|next| next <= end);
            if stale {
                if leased {
                    continue;
                }
                self.partitions.remove(&p);
                let dir = self.root.join(format!("p-{p}"));
                fs::remove_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
                sync_dir(&self.root)?;
                tracing::info!(
                    partition = p,
                    sealed_end = end,
                    "Another instance sealed past the local log; resuming at the store's end."
                );
            }
            if let Some(sealed) = &mut self.sealed {
                sealed.chunks.insert(p, listed);
                refreshed.push(p);
            }
        }
        Ok(refreshed)
    }

    /// The offset below which `partition`'s chunks are sealed in the store.
    pub fn sealed_end(&self, partition: Partition) -> Offset {
        self.sealed
            .as_ref()
            .and_then(|s| s.chunks.get(&partition)?.last().map(|c| c.end))
            .unwrap_or(0)
    }

    /// Per partition with sealed chunks, the offset below which the store
    /// holds it.
    pub fn sealed_ends(&self) -> Positions {
        self.sealed
            .iter()
            .flat_map(|s| &s.chunks)
            .filter_map(|(&p, chunks)| chunks.last().map(|c| (p, c.end)))
            .collect()
    }

    /// The first offset the local log holds for `partition` (everything
    /// below comes from the store).
    fn local_start(&self, partition: Partition) -> Offset {
        match self
            .partitions
            .get(&partition)
            .and_then(|l| l.segments().first())
        {
            Some(first) => first.base_offset,
            None => self.sealed_end(partition),
        }
    }

    /// The chunks the local log has passed but the store does not hold yet,
    /// at most `max` of them, oldest first per partition.
    pub fn to_seal(&self, max: usize) -> Vec<ToSeal> {
        let Some(sealed) = &self.sealed else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (&partition, log) in &self.partitions {
            let Some(next) = log.next_offset() else {
                continue;
            };
            let mut first = self.sealed_end(partition);
            // The local log must hold the whole chunk.
            if self.local_start(partition) > first {
                continue;
            }
            while first + sealed.size <= next && out.len() < max {
                let end = first + sealed.size;
                let bounds = |o| -> Cut { [(partition, o)].into_iter().collect() };
                out.push(ToSeal {
                    partition,
                    first,
                    end,
                    segments: self.segments_between(&bounds(first), &bounds(end)),
                });
                first = end;
            }
        }
        out
    }

    /// Deletes the local segments wholly below each partition's sealed end
    /// (the store holds them), unless a reference to a local segment is
    /// alive (a recompute reading, say): then it waits for a later call.
    /// Returns how many segments were deleted.
    pub fn trim(&mut self) -> Result<usize, LogError> {
        if self.sealed.is_none() || std::sync::Arc::strong_count(&self.lease.0) > 1 {
            return Ok(0);
        }
        let ends: Vec<(Partition, Offset)> = self
            .partitions
            .keys()
            .map(|&p| (p, self.sealed_end(p)))
            .collect();
        let mut trimmed = 0;
        for (p, end) in ends {
            if let Some(log) = self.partitions.get_mut(&p) {
                trimmed += log.trim_below(end)?;
            }
        }
        Ok(trimmed)
    }

    /// Notes that `chunk` of `partition` is in the store.
    pub fn note_sealed(&mut self, partition: Partition, chunk: chunks::Chunk) {
        let end = self.sealed_end(partition);
        if let Some(sealed) = &mut self.sealed {
            if chunk.first == end {
                sealed.chunks.entry(partition).or_default().push(chunk);
            }
        }
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
        let mut ends: BTreeMap<Partition, Offset> = BTreeMap::new();
        if let Some(sealed) = &self.sealed {
            for (&p, chunks) in &sealed.chunks {
                if let Some(last) = chunks.last() {
                    ends.insert(p, last.end);
                }
            }
        }
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
