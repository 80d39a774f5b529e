//! Reading the store back: the snapshot, then every delta in order, less
//! what lies below the expiry floor. Counts are absolute, so the last value
//! read for a key is its count, whatever a crash interrupted.
//!
//! Precedence, oldest first: the snapshot kept per bucket (`b`), the
//! formats before it (per-count `c` entries, the whole-store snapshot `s`:
//! only in stores written by older versions, and gone after their first
//! compaction), then the deltas in sequence order.

use crate::keys::{delta_key, delta_seq, Floor, BUCKETED, LEGACY_COUNT, META_FLOOR, SNAPSHOT};
use crate::{Inner, StoreError};
use lambda_core::{chunk, BucketKey, CountKey};
use rustc_hash::FxHashMap;

/// What changed since the last compaction: the deltas below a sequence
/// number folded (last value wins) over any entries of the older formats.
#[derive(Default)]
pub(crate) struct Changes {
    pub(crate) counts: FxHashMap<CountKey, u64>,
    /// The keys folded in (deltas and old-format entries), to remove.
    pub(crate) folded_keys: Vec<sled::IVec>,
    pub(crate) deltas: u64,
    pub(crate) delta_bytes: u64,
    /// Bytes of old-format entries folded in (they counted as snapshot).
    pub(crate) legacy_bytes: u64,
}

impl Inner {
    fn decode_into(
        &self,
        chunk: &[u8],
        counts: &mut FxHashMap<CountKey, u64>,
    ) -> Result<(), StoreError> {
        chunk::decode(chunk, |k, c| {
            counts.insert(k, c);
        })
        .map_err(|what| self.malformed(what))
    }

    /// The old per-count entries, then the old whole-store snapshot, then
    /// every delta below `below`, in order, into `counts`.
    fn fold_changes(
        &self,
        below: u64,
        counts: &mut FxHashMap<CountKey, u64>,
    ) -> Result<Changes, StoreError> {
        let mut c = Changes::default();
        for item in self.tree.scan_prefix([LEGACY_COUNT]) {
            let (k, v) = item.map_err(self.err())?;
            if k.len() < 13 || v.len() != 8 {
                return Err(self.malformed("count entry"));
            }
            let partition = i32::from_be_bytes(k[1..5].try_into().expect("4 bytes"));
            let bucket = u64::from_be_bytes(k[5..13].try_into().expect("8 bytes"));
            let word =
                std::str::from_utf8(&k[13..]).map_err(|_| self.malformed("word is not UTF-8"))?;
            let count = u64::from_le_bytes(v.as_ref().try_into().expect("8 bytes"));
            let key = CountKey {
                bucket: BucketKey { partition, bucket },
                word: word.into(),
            };
            counts.insert(key, count);
            c.legacy_bytes += v.len() as u64;
            c.folded_keys.push(k);
        }
        for item in self.tree.scan_prefix([SNAPSHOT]) {
            let (k, v) = item.map_err(self.err())?;
            self.decode_into(&v, counts)?;
            c.legacy_bytes += v.len() as u64;
            c.folded_keys.push(k);
        }
        let mut last = None;
        for item in self.tree.range(delta_key(0, 0)..delta_key(below, 0)) {
            let (k, v) = item.map_err(self.err())?;
            let seq = delta_seq(&k).ok_or_else(|| self.malformed("delta key"))?;
            self.decode_into(&v, counts)?;
            c.deltas += u64::from(last != Some(seq));
            last = Some(seq);
            c.delta_bytes += v.len() as u64;
            c.folded_keys.push(k);
        }
        Ok(c)
    }

    /// What changed since the last compaction (see [`Changes`]).
    pub(crate) fn changes(&self, below: u64) -> Result<Changes, StoreError> {
        let mut counts = FxHashMap::default();
        let mut changes = self.fold_changes(below, &mut counts)?;
        changes.counts = counts;
        Ok(changes)
    }

    /// One bucket's snapshot: its counts and the keys and bytes of its chunks.
    pub(crate) fn bucket_snapshot(
        &self,
        prefix: &[u8],
        counts: &mut FxHashMap<CountKey, u64>,
    ) -> Result<(Vec<sled::IVec>, u64), StoreError> {
        let (mut keys, mut bytes) = (Vec::new(), 0);
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(self.err())?;
            self.decode_into(&v, counts)?;
            bytes += v.len() as u64;
            keys.push(k);
        }
        Ok((keys, bytes))
    }

    /// Every live count: the snapshot, then what changed since, less what
    /// lies below the floor.
    pub(crate) fn read_all(&self, below: u64) -> Result<FxHashMap<CountKey, u64>, StoreError> {
        let mut counts = FxHashMap::default();
        self.bucket_snapshot(&[BUCKETED], &mut counts)?;
        self.fold_changes(below, &mut counts)?;
        let floor: Floor = self.meta(META_FLOOR, "floor")?;
        counts.retain(|k, _| k.bucket.bucket >= floor_of(&floor, k.bucket.partition));
        Ok(counts)
    }
}

/// The first live bucket of `partition`.
pub(crate) fn floor_of(floor: &Floor, partition: lambda_core::Partition) -> u64 {
    floor.get(&partition).copied().unwrap_or(0)
}
