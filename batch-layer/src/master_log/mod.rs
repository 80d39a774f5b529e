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

mod partition;
pub mod record;
mod segments;

pub use partition::{sync_dir, PartitionLog, SegmentMeta};
pub use record::{Record, RecordKind};
pub use segments::{RecordIter, SegmentRef};

use lambda_core::{Cut, Partition, Positions};
use std::collections::BTreeMap;
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
        self.partition_mut(partition)?.append(records)
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
        self.partitions
            .iter()
            .filter_map(|(&p, log)| log.next_offset().map(|o| (p, o)))
            .collect()
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
                        len: seg.len,
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
