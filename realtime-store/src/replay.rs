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
use lambda_core::{chunk, BucketKey, CountKey, Partition};
use rustc_hash::FxHashMap;

/// Counts per bucket, then word: what reading folds into. Entries are
/// looked up by the word borrowed from the chunk, so a key read again (most
/// deltas update keys already read) costs no allocation, and a compaction
/// finds each bucket's changes together.
pub(crate) type Buckets = FxHashMap<BucketKey, FxHashMap<Box<str>, u64>>;

/// What changed since the last compaction: the deltas below a sequence
/// number folded (last value wins) over any entries of the older formats,
/// less what lies below the floor.
#[derive(Default)]
pub(crate) struct Changes {
    pub(crate) counts: Buckets,
    /// The keys folded in (deltas and old-format entries), to remove.
    pub(crate) folded_keys: Vec<sled::IVec>,
    pub(crate) deltas: u64,
    pub(crate) delta_bytes: u64,
    /// Bytes of old-format entries folded in (they counted as snapshot).
    pub(crate) legacy_bytes: u64,
}

/// Sets one count, unless its bucket lies below the floor.
fn set(counts: &mut Buckets, floor: &Floor, bucket: BucketKey, word: &str, count: u64) {
    if bucket.bucket < floor_of(floor, bucket.partition) {
        return;
    }
    let words = counts.entry(bucket).or_default();
    match words.get_mut(word) {
        Some(c) => *c = count,
        None => {
            words.insert(word.into(), count);
        }
    }
}

impl Inner {
    fn decode_into(
        &self,
        chunk: &[u8],
        floor: &Floor,
        counts: &mut Buckets,
    ) -> Result<(), StoreError> {
        chunk::decode_parts(chunk, |bucket, word, count| {
            set(counts, floor, bucket, word, count)
        })
        .map_err(|what| self.malformed(what))
    }

    /// The old per-count entries, then the old whole-store snapshot, then
    /// every delta below `below`, in order, into `counts`.
    fn fold_changes(
        &self,
        below: u64,
        floor: &Floor,
        counts: &mut Buckets,
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
            set(counts, floor, BucketKey { partition, bucket }, word, count);
            c.legacy_bytes += v.len() as u64;
            c.folded_keys.push(k);
        }
        for item in self.tree.scan_prefix([SNAPSHOT]) {
            let (k, v) = item.map_err(self.err())?;
            self.decode_into(&v, floor, counts)?;
            c.legacy_bytes += v.len() as u64;
            c.folded_keys.push(k);
        }
        let mut last = None;
        for item in self.tree.range(delta_key(0, 0)..delta_key(below, 0)) {
            let (k, v) = item.map_err(self.err())?;
            let seq = delta_seq(&k).ok_or_else(|| self.malformed("delta key"))?;
            self.decode_into(&v, floor, counts)?;
            c.deltas += u64::from(last != Some(seq));
            last = Some(seq);
            c.delta_bytes += v.len() as u64;
            c.folded_keys.push(k);
        }
        Ok(c)
    }

    /// Whether a chunk holds any count at or above the floor.
    pub(crate) fn holds_live(&self, chunk: &[u8], floor: &Floor) -> Result<bool, StoreError> {
        let mut live = false;
        chunk::decode_parts(chunk, |bucket, _, _| {
            live = live || bucket.bucket >= floor_of(floor, bucket.partition);
        })
        .map_err(|what| self.malformed(what))?;
        Ok(live)
    }

    /// What changed since the last compaction (see [`Changes`]).
    pub(crate) fn changes(&self, below: u64, floor: &Floor) -> Result<Changes, StoreError> {
        let mut counts = Buckets::default();
        let mut changes = self.fold_changes(below, floor, &mut counts)?;
        changes.counts = counts;
        Ok(changes)
    }

    /// The snapshot chunks under `prefix` (one bucket's, or all), into
    /// `counts`; returns their keys and bytes.
    pub(crate) fn snapshot_under(
        &self,
        prefix: &[u8],
        floor: &Floor,
        counts: &mut Buckets,
    ) -> Result<(Vec<sled::IVec>, u64), StoreError> {
        let (mut keys, mut bytes) = (Vec::new(), 0);
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(self.err())?;
            self.decode_into(&v, floor, counts)?;
            bytes += v.len() as u64;
            keys.push(k);
        }
        Ok((keys, bytes))
    }

    /// Every live count: the snapshot, then what changed since, less what
    /// lies below the floor.
    pub(crate) fn read_all(&self, below: u64) -> Result<FxHashMap<CountKey, u64>, StoreError> {
        let floor: Floor = self.meta(META_FLOOR, "floor")?;
        let mut counts = Buckets::default();
        self.snapshot_under(&[BUCKETED], &floor, &mut counts)?;
        self.fold_changes(below, &floor, &mut counts)?;
        Ok(counts
            .into_iter()
            .flat_map(|(bucket, words)| {
                words
                    .into_iter()
                    .map(move |(word, c)| (CountKey { bucket, word }, c))
            })
            .collect())
    }
}

/// The first live bucket of `partition`.
pub(crate) fn floor_of(floor: &Floor, partition: Partition) -> u64 {
    floor.get(&partition).copied().unwrap_or(0)
}
