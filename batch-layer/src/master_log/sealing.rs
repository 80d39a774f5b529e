//! Sealing into the shared store (`--store-url`): which chunks the local log
//! has passed and the store does not hold yet, what the store holds (its
//! own and other instances' chunks), and the local segments it makes
//! redundant.

use super::{chunks, sync_dir, LogError, MasterLog, PartitionLog, SegmentRef};
use lambda_core::{Cut, Offset, Partition, Positions};
use std::collections::BTreeMap;
use std::fs;

/// The shared store the log seals chunks into, and what it holds.
#[derive(Debug)]
pub(super) struct Sealed {
    pub(super) store: common::store::Store,
    pub(super) runtime: tokio::runtime::Handle,
    /// Offsets per chunk.
    pub(super) size: Offset,
    pub(super) chunks: BTreeMap<Partition, Vec<chunks::Chunk>>,
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
            self.drop_local(p)?;
            tracing::info!(
                partition = p,
                sealed_end = self.sealed_end(p),
                "The store holds everything the local log had; resuming at its end."
            );
        }
        Ok(())
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
                self.drop_local(p)?;
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
    pub(super) fn local_start(&self, partition: Partition) -> Offset {
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

    /// Deletes `partition`'s local log, which the store has overtaken.
    fn drop_local(&mut self, partition: Partition) -> Result<(), LogError> {
        self.partitions.remove(&partition);
        let dir = self.root.join(format!("p-{partition}"));
        fs::remove_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        sync_dir(&self.root)
    }
}
