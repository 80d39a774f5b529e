//! The purge after an expiry: what lies below the floor goes, nothing is
//! rewritten.

use super::batches::Batches;
use super::Prepared;
use crate::keys::{delta_key, delta_seq, Floor, META_FLOOR};
use crate::{Compaction, CompactionKind, Inner, StoreError};

/// One delta's chunks, and whether any of them holds a live count.
#[derive(Default)]
struct Delta {
    seq: u64,
    keys: Vec<sled::IVec>,
    bytes: u64,
    live: bool,
}

impl Inner {
    /// Builds the batch of a purge: the snapshot's buckets below the floor
    /// and every delta all of whose counts lie below it go; nothing is
    /// rewritten (`None` if `stopping` turned true meanwhile).
    ///
    /// An expiry comes with a new batch view, which covers the events of
    /// most deltas written since the last one. Folding those deltas into
    /// the snapshot, as a compaction after every expiry did, rewrote
    /// counts the *next* view expires anyway: at 20,000 events/s some
    /// 1.5 M counts per swap (600 ms of preparing, 200 ms of writes), where
    /// the slowest probes of `bench/freshness.py` fell. A delta with any
    /// live count stays, for a later purge or the size trigger. Every read
    /// skips what lies below the floor (which never goes down), so what a
    /// purge removes was invisible already, and a purge cut short reads as
    /// before.
    pub(super) fn purge(
        &self,
        stopping: &dyn Fn() -> bool,
    ) -> Result<Option<Prepared>, StoreError> {
        let below = self.log().next_seq;
        let floor: Floor = self.meta(META_FLOOR, "floor")?;
        let mut done = Compaction::none(CompactionKind::Purge);
        let mut batches = Batches::default();
        let replaced = self.remove_expired(&floor, &mut batches, &mut done)?;
        let mut deltas: Vec<Delta> = Vec::new();
        for item in self.tree.range(delta_key(0, 0)..delta_key(below, 0)) {
            let (k, v) = item.map_err(self.err())?;
            let seq = delta_seq(&k).ok_or_else(|| self.malformed("delta key"))?;
            if deltas.last().is_none_or(|d| d.seq != seq) {
                if stopping() {
                    return Ok(None);
                }
                deltas.push(Delta {
                    seq,
                    ..Delta::default()
                });
            }
            let d = deltas.last_mut().expect("pushed above");
            d.live = d.live || self.holds_live(&v, &floor)?;
            d.bytes += v.len() as u64;
            d.keys.push(k);
        }
        let mut delta_bytes = 0;
        for d in deltas.into_iter().filter(|d| !d.live) {
            for k in d.keys {
                batches.remove(k);
                batches.cut_if_full();
            }
            done.deltas += 1;
            delta_bytes += d.bytes;
        }
        if stopping() {
            return Ok(None);
        }
        Ok(Some(Prepared {
            batches: batches.finish(),
            last: Vec::new(),
            done,
            written: 0,
            replaced,
            delta_bytes,
        }))
    }
}
