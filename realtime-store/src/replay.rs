//! Reading the store back: the snapshot, then every delta in order, less
//! what lies below the expiry floor. Counts are absolute, so the last value
//! read for a key is its count, whatever a crash interrupted.

use crate::keys::{delta_key, delta_seq, Floor, LEGACY_COUNT, META_FLOOR, SNAPSHOT};
use crate::{Inner, StoreError};
use lambda_core::{chunk, BucketKey, CountKey};
use rustc_hash::FxHashMap;

/// The counts read back from the store, with the keys they came from.
#[derive(Default)]
pub(crate) struct Folded {
    pub(crate) counts: FxHashMap<CountKey, u64>,
    pub(crate) expired: u64,
    pub(crate) legacy_keys: Vec<sled::IVec>,
    pub(crate) snapshot_keys: Vec<sled::IVec>,
    pub(crate) delta_keys: Vec<sled::IVec>,
    pub(crate) deltas: u64,
    pub(crate) delta_bytes: u64,
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

    /// Replays the old per-count entries, the snapshot, then every delta
    /// below `below` in order, and drops what lies below the floor.
    pub(crate) fn read(&self, below: u64) -> Result<Folded, StoreError> {
        let mut f = Folded::default();
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
            f.counts.insert(key, count);
            f.legacy_keys.push(k);
        }
        for item in self.tree.scan_prefix([SNAPSHOT]) {
            let (k, v) = item.map_err(self.err())?;
            self.decode_into(&v, &mut f.counts)?;
            f.snapshot_keys.push(k);
        }
        let mut last = None;
        for item in self.tree.range(delta_key(0, 0)..delta_key(below, 0)) {
            let (k, v) = item.map_err(self.err())?;
            let seq = delta_seq(&k).ok_or_else(|| self.malformed("delta key"))?;
            self.decode_into(&v, &mut f.counts)?;
            f.deltas += u64::from(last != Some(seq));
            last = Some(seq);
            f.delta_bytes += v.len() as u64;
            f.delta_keys.push(k);
        }
        let floor: Floor = self.meta(META_FLOOR, "floor")?;
        let before = f.counts.len();
        f.counts
            .retain(|k, _| k.bucket.bucket >= floor.get(&k.bucket.partition).copied().unwrap_or(0));
        f.expired = (before - f.counts.len()) as u64;
        Ok(f)
    }
}
