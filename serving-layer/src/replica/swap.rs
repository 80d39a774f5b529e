//! A view swap in slices: the realtime counts are held in shards, and the
//! work a swap does over all of them — handing the buckets between the two
//! cuts to the reconciliation, ranking the realtime counts for the new cut,
//! expiring the buckets it covers — takes the replica's lock one shard at a
//! time.
//!
//! Done in one piece, that work held the lock for as long as the realtime
//! counts are large: at 5,000 events/s with the demo's 10 s recomputes
//! (~650,000 bucket counts per swap) 110–130 ms under the read lock to
//! collect the buckets between the cuts, 65–75 ms under the write lock to
//! rank and 45–55 ms more to expire, every 10 s — and every realtime release
//! the follower had ready waited behind it, so every swap showed up as a
//! 150–330 ms stall in produce-to-visible latency (`bench/freshness.py`).
//! A slice is 1/[`SHARDS`] of it; the follower applies in between.
//!
//! Answers stay exact throughout:
//! - the new view's rankings are built beside the current ones
//!   ([`PendingSwap`]); an upsert applied meanwhile to a shard already ranked
//!   is ranked for both cuts, one to a shard not yet ranked is picked up
//!   when its shard is, and the view and its rankings are installed together
//!   under one lock ([`Replica::finish_swap`]);
//! - buckets below the installed view's cut are ignored by the merge rule
//!   whether or not they are expired yet, so expiring shard by shard only
//!   frees memory;
//! - the buckets between the two cuts are final once the realtime counts
//!   are exact at or past the new cut (what the reconciliation checks before
//!   it reads them): every event below the cut is in a checkpoint the
//!   replica holds, and a later upsert of such a bucket cannot raise it.

use super::*;
use compact_str::CompactString;
use std::hash::{Hash, Hasher};

/// How many shards the realtime counts are held in.
pub const SHARDS: usize = 64;

/// The realtime counts by key (a word, or a windowed key of
/// [`lambda_core::window::Key`]), then bucket (see `find_bucket`), in
/// [`SHARDS`] maps by the key's hash.
#[derive(Debug)]
pub(super) struct Realtime {
    shards: Vec<Shard>,
}

/// One shard: per key, its buckets' counts. A key of up to 24 bytes (most
/// windowed keys: `#<window>@` and a word) is held in the map's own slot,
/// not behind a pointer: each lookup compares it without a cache miss of
/// its own, and a new key allocates nothing.
pub(super) type Shard = FxHashMap<CompactString, Vec<(BucketKey, u64)>>;

impl Default for Realtime {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| FxHashMap::default()).collect(),
        }
    }
}

impl Realtime {
    /// The shard `key` is in.
    pub(super) fn shard_of(key: &str) -> usize {
        let mut hasher = rustc_hash::FxHasher::default();
        key.hash(&mut hasher);
        // Middle bits: a shard's map (hashbrown) tells its keys apart by the
        // hash's top 7 bits first and places them by its low bits. Chosen
        // by the top bits, the keys of a shard shared 6 of those 7, so about
        // half of every lookup's candidates were compared byte by byte
        // (`memcmp` was 18 % of following the speed layer, `benches/apply`).
        (hasher.finish() >> 32) as usize % SHARDS
    }

    pub(super) fn get(&self, key: &str) -> Option<&Vec<(BucketKey, u64)>> {
        self.shards[Self::shard_of(key)].get(key)
    }

    pub(super) fn shard(&self, shard: usize) -> &Shard {
        &self.shards[shard]
    }

    pub(super) fn shard_mut(&mut self, shard: usize) -> &mut Shard {
        &mut self.shards[shard]
    }

    /// How many (key, bucket) counts are held.
    pub(super) fn entries(&self) -> usize {
        self.shards
            .iter()
            .flat_map(FxHashMap::values)
            .map(Vec::len)
            .sum()
    }
}

/// A view on its way in: its rankings of the realtime counts above its cut,
/// built shard by shard.
#[derive(Debug)]
pub(super) struct PendingSwap {
    pub(super) view: Arc<LoadedView>,
    /// Shards below this one are ranked: upserts applied to them since are
    /// ranked here too as they come.
    pub(super) ranked_shards: usize,
    pub(super) ranked: Ranking,
    pub(super) ranked_windows: BTreeMap<Window, Ranking>,
}

impl Replica {
    /// Starts installing `view` if it is newer than the current one (and
    /// than one already on its way, which it replaces); returns whether it
    /// did. Until [`Self::finish_swap`] answers come from the current view.
    pub fn begin_swap(&mut self, view: Arc<LoadedView>) -> bool {
        let newest = match &self.pending {
            Some(p) => Some(p.view.version()),
            None => self.view.as_ref().map(|v| v.version()),
        };
        if newest.is_some_and(|v| v >= view.version()) {
            return false;
        }
        self.pending = Some(PendingSwap {
            view,
            ranked_shards: 0,
            ranked: Ranking::default(),
            ranked_windows: BTreeMap::new(),
        });
        true
    }

    /// Ranks one more shard's realtime counts for the view on its way;
    /// true once every shard is (or no view is on its way).
    pub fn rerank_slice(&mut self) -> bool {
        let Some(p) = &mut self.pending else {
            return true;
        };
        if p.ranked_shards == SHARDS {
            return true;
        }
        let (cut, size) = (p.view.cut(), self.size);
        for (key, buckets) in self.realtime.shard(p.ranked_shards) {
            let above = realtime_count(cut, size, buckets.iter().copied());
            if above > 0 {
                rank(&mut p.ranked, &mut p.ranked_windows, key, above);
            }
        }
        p.ranked_shards += 1;
        p.ranked_shards == SHARDS
    }

    /// Installs the view on its way with its rankings (ranking what is
    /// left first); returns whether there was one. Realtime buckets below
    /// its cut stay until they are expired, and the merge rule ignores them
    /// meanwhile.
    pub fn finish_swap(&mut self) -> bool {
        while !self.rerank_slice() {}
        let Some(p) = self.pending.take() else {
            return false;
        };
        self.view = Some(p.view);
        self.ranked = p.ranked;
        self.ranked_windows = p.ranked_windows;
        // Gains above the old cut: the new rankings hold every count.
        self.unranked.clear();
        self.generation += 1;
        true
    }

    /// Installs `view` if it is newer than the current one, in one piece;
    /// returns whether it did (see [`Self::begin_swap`]).
    pub fn swap_view(&mut self, view: Arc<LoadedView>) -> bool {
        self.begin_swap(view) && self.finish_swap()
    }

    /// Drops one shard's realtime buckets the current view covers; returns
    /// how many.
    pub fn expire_shard(&mut self, shard: usize) -> usize {
        let (cut, size) = (self.cut().clone(), self.size);
        let mut removed = 0;
        self.realtime.shard_mut(shard).retain(|_, buckets| {
            let before = buckets.len();
            buckets.retain(|(k, _)| cut.is_realtime_bucket(size, k.partition, k.bucket));
            removed += before - buckets.len();
            !buckets.is_empty()
        });
        // The rankings hold only counts above the cut already.
        if removed > 0 {
            self.generation += 1;
        }
        removed
    }

    /// Drops the realtime buckets the current view covers; returns how many.
    pub fn expire(&mut self) -> usize {
        (0..SHARDS).map(|shard| self.expire_shard(shard)).sum()
    }

    /// Adds one shard's realtime counts of the buckets between two cuts
    /// (`old ≤ bucket start < new`) to `into`, per word: what a view swap
    /// from `old` to `new` hands over (see `reconcile`).
    pub fn realtime_between_shard(
        &self,
        old: &Cut,
        new: &Cut,
        shard: usize,
        into: &mut FxHashMap<Box<str>, u64>,
    ) {
        let size = self.size;
        for (word, buckets) in self.realtime.shard(shard) {
            let sum: u64 = buckets
                .iter()
                .filter(|(k, _)| {
                    old.is_realtime_bucket(size, k.partition, k.bucket)
                        && !new.is_realtime_bucket(size, k.partition, k.bucket)
                })
                .map(|(_, c)| c)
                .sum();
            if sum > 0 {
                into.insert(word.as_str().into(), sum);
            }
        }
    }
}
