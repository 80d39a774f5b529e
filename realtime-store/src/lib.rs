//! The realtime store: the realtime counts in sled, per (partition, bucket, word), and the
//! next offset of every partition, always written together.
//!
//! Both users of the store (the speed layer and a serving layer's replica)
//! hold every live count in memory and need the store only to get it back
//! after a restart. So counts are not kept one sled key per count — sled
//! spends microseconds per key, which at 20,000 changed counts per
//! micro-batch was the speed layer's whole budget — but as a log of packed
//! chunks (see `lambda_core::chunk`): each checkpoint appends its changed counts as one
//! delta, and a compaction folds the deltas into a snapshot.
//!
//! ```text
//! b | partition: i32 BE | bucket: u64 BE | chunk: u32 BE
//!                                    →  snapshot of one bucket: absolute counts (codec chunk)
//! d | seq: u64 BE | chunk: u32 BE    →  one checkpoint's changed counts, absolute
//! o | partition: i32 BE              →  next offset: i64 LE
//! m | "cut"                          →  JSON of the last batch cut applied
//! m | "floor"                        →  JSON of the first live bucket per partition
//! m | "asof"                         →  JSON of the events position the counts are exact at
//! m | "starts"                       →  JSON of where the counts start past a checkpoint
//! m | "writer"                       →  the speed layer's writer id: u64 LE, never 0
//! c | partition | bucket | word      →  count (the format before 0.1: read, then compacted away)
//! s | chunk: u32 BE                  →  the whole-store snapshot before it was kept per
//!                                       bucket (read, then compacted away)
//! ```
//!
//! A checkpoint's delta and offsets are one atomic sled batch, flushed before
//! [`RealtimeStore::commit`] returns. Counts are absolute, so replaying the
//! snapshot and then the deltas in order rebuilds the view, whatever a crash
//! interrupted. Expiry records the cut and its bucket floor: counts below the
//! floor are dropped from everything the store returns at once, and from the
//! disk at the purge it starts 3 s later (the snapshot's buckets below the
//! floor and the deltas that hold nothing above it go; nothing is
//! rewritten). Compaction proper runs in the background once the deltas
//! hold `--realtime-compact-bytes`: it rewrites the snapshot of every
//! bucket the deltas changed and removes the buckets below the floor, in
//! atomic batches of about 1 MiB, then the deltas it folded in, while
//! checkpoints go on appending (a compaction cut short between batches
//! reads as before: see `compaction`). It prepares at
//! background priority and writes at normal priority, in short batches,
//! because every sled batch in the process takes one lock. The snapshot is kept per bucket because
//! buckets are offset ranges: new events change only the newest buckets, and
//! expiry drops whole old ones, so a compaction reads and writes what changed
//! rather than every live count (which, re-read after every view swap, had
//! cost the demo a quarter of its CPU at 20,000 events/s).
//!
//! The speed layer writes its events offsets under `o`. A serving layer's
//! replica reuses the store for the counts it follows: its `o` entries are
//! realtime-topic positions, and `asof` is the last complete watermark.
//!
//! # Layout
//!
//! - this file: [`RealtimeStore`] (open, commit a [`Checkpoint`], expire, read
//!   offsets and cuts) and its shared state;
//! - `keys`: the key layout above;
//! - `replay`: reading the snapshot and deltas back into counts;
//! - `compaction`: folding deltas into a snapshot, on a background thread.

mod compaction;
mod keys;
mod replay;

use common::sync::LockOrStop;
use compaction::Compactor;
use keys::{
    delta_key, delta_seq, event_time_key, offset_key, Floor, BUCKETED, CACHE_BYTES, DELTA,
    EVENT_TIME, LEGACY_COUNT, LOCK_WAIT, META_AS_OF, META_CUT, META_FLOOR, META_STARTS,
    META_WRITER, OFFSET, SNAPSHOT,
};
use lambda_core::chunk::ChunkWriter;
use lambda_core::window::Millis;
use lambda_core::{BucketSize, Cut, Offset, Partition, Positions};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use thiserror::Error;

pub use lambda_core::CountKey;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("realtime store at {path}: {source}")]
    Sled {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("realtime store at {path} holds a malformed entry: {what}")]
    Malformed { path: String, what: String },
    #[error("realtime store at {path}: cannot start its compaction thread: {source}")]
    Thread {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("realtime store at {path}: its compaction writer thread ended (a bug: see the panic logged before)")]
    WriterGone { path: String },
}

/// What a micro-batch changes: absolute counts and next offsets.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub counts: Vec<(CountKey, u64)>,
    pub next_offsets: Vec<(Partition, Offset)>,
    /// The events position the counts are now exact at, if it is not the
    /// offsets themselves (serving replicas).
    pub as_of: Option<Cut>,
    /// Per partition, the newest event timestamp that moved its watermark
    /// (the speed layer's event-time state; see `lambda_core::window`).
    pub event_times: Vec<(Partition, Millis)>,
}

/// What a compaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionKind {
    /// Folds every delta into the snapshot of the buckets it changed and
    /// removes what lies below the floor: what the size trigger and
    /// [`RealtimeStore::compact`] run.
    Fold,
    /// Removes only what lies below the floor: the expired buckets of the
    /// snapshot and the deltas that hold nothing else. What an expiry
    /// starts (see `compaction`).
    Purge,
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub kind: CompactionKind,
    /// Deltas folded into the snapshot, or (a purge) removed.
    pub deltas: u64,
    /// Buckets of the snapshot rewritten (those the deltas changed).
    pub buckets: u64,
    /// Counts in the rewritten buckets.
    pub counts: u64,
    /// Buckets below the floor removed from the snapshot.
    pub expired: u64,
    /// The snapshot's size after it.
    pub snapshot_bytes: u64,
    /// Milliseconds spent writing it (at normal priority, sled's lock taken
    /// batch by batch); the rest of its time went to preparing it, at
    /// background priority.
    pub write_ms: u64,
}

/// The log's bookkeeping, guarded so a compaction sees every delta below
/// the sequence number it reads.
#[derive(Debug, Default)]
struct LogState {
    next_seq: u64,
    deltas: u64,
    delta_bytes: u64,
    snapshot_bytes: u64,
    compact_min_bytes: u64,
    compactions: u64,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    path: String,
    log: Mutex<LogState>,
    /// Serialises compactions (the background one and explicit calls).
    compacting: Mutex<()>,
}

/// The realtime counts, durable.
#[derive(Debug)]
pub struct RealtimeStore {
    inner: Arc<Inner>,
    compactor: Option<Compactor>,
}

/// Tuning for [`RealtimeStore::open_with`].
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Deltas are compacted once they hold more than this many bytes.
    pub compact_min_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            compact_min_bytes: common::config::DEFAULT_REALTIME_COMPACT_BYTES,
        }
    }
}

/// Sizes of what is on disk, for tests and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Deltas held: checkpoints appended and not yet folded in or purged.
    pub deltas: u64,
    pub delta_bytes: u64,
    pub snapshot_bytes: u64,
    /// Compactions since the store was opened.
    pub compactions: u64,
}

impl Inner {
    fn err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn malformed(&self, what: impl Into<String>) -> StoreError {
        StoreError::Malformed {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn log(&self) -> MutexGuard<'_, LogState> {
        self.log.lock_or_stop("the store log state")
    }

    fn meta<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<T, StoreError> {
        match self.tree.get(key).map_err(self.err())? {
            Some(v) => {
                serde_json::from_slice(&v).map_err(|e| self.malformed(format!("{what}: {e}")))
            }
            None => Ok(T::default()),
        }
    }
}

impl RealtimeStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let err = |source| StoreError::Sled {
            path: path.clone(),
            source,
        };
        // sled's default page cache is 1 GiB per database; the realtime counts
        // is a small working set (only the tail above the batch cut), so a
        // much smaller cache keeps memory flat without costing throughput.
        let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES);
        // A store closed in this process may still be locked for a moment:
        // sled finishes writing its last buffers on its own threads.
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.map_err(err)?,
            }
        };
        let tree = db.open_tree("realtime").map_err(err)?;
        let mut log = LogState {
            compact_min_bytes: options.compact_min_bytes,
            ..LogState::default()
        };
        for prefix in [BUCKETED, LEGACY_COUNT, SNAPSHOT] {
            for item in tree.scan_prefix([prefix]) {
                log.snapshot_bytes += item.map_err(err)?.1.len() as u64;
            }
        }
        for item in tree.scan_prefix([DELTA]) {
            let (k, v) = item.map_err(err)?;
            log.delta_bytes += v.len() as u64;
            if let Some(seq) = delta_seq(&k) {
                log.deltas += u64::from(seq >= log.next_seq);
                log.next_seq = log.next_seq.max(seq + 1);
            }
        }
        let inner = Arc::new(Inner {
            db,
            tree,
            path: path.clone(),
            log: Mutex::new(log),
            compacting: Mutex::new(()),
        });
        let compactor = Compactor::start(&inner)?;
        Ok(Self {
            inner,
            compactor: Some(compactor),
        })
    }

    pub fn stats(&self) -> StoreStats {
        let log = self.inner.log();
        StoreStats {
            deltas: log.deltas,
            delta_bytes: log.delta_bytes,
            snapshot_bytes: log.snapshot_bytes,
            compactions: log.compactions,
        }
    }

    /// Every live count, to rebuild the in-memory mirror at start.
    pub fn load_counts(&self) -> Result<FxHashMap<CountKey, u64>, StoreError> {
        // Not while a compaction swaps the snapshot and drops the deltas
        // under the reader's feet.
        let _no_compaction = self.inner.compacting.lock_or_stop("the compaction slot");
        let below = self.inner.log().next_seq;
        self.inner.read_all(below)
    }

    /// The checkpointed next offset of every partition seen so far.
    pub fn offsets(&self) -> Result<Positions, StoreError> {
        Ok(self
            .per_partition(OFFSET, "offset entry")?
            .into_iter()
            .collect())
    }

    /// The checkpointed newest event timestamp of every partition that has
    /// one.
    pub fn event_times(&self) -> Result<BTreeMap<Partition, Millis>, StoreError> {
        self.per_partition(EVENT_TIME, "event-time entry")
    }

    /// The entries under `prefix`: one 64-bit value per partition.
    fn per_partition(
        &self,
        prefix: u8,
        what: &str,
    ) -> Result<BTreeMap<Partition, i64>, StoreError> {
        let inner = &self.inner;
        let mut out = BTreeMap::new();
        for item in inner.tree.scan_prefix([prefix]) {
            let (k, v) = item.map_err(inner.err())?;
            if k.len() != 5 || v.len() != 8 {
                return Err(inner.malformed(what));
            }
            let p = i32::from_be_bytes(k[1..5].try_into().expect("4 bytes"));
            out.insert(
                p,
                i64::from_le_bytes(v.as_ref().try_into().expect("8 bytes")),
            );
        }
        Ok(out)
    }

    /// The last batch cut whose buckets were expired.
    pub fn applied_cut(&self) -> Result<Cut, StoreError> {
        self.inner.meta(META_CUT, "cut")
    }

    /// The `as_of` of the last checkpoint that had one.
    pub fn as_of(&self) -> Result<Cut, StoreError> {
        self.inner.meta(META_AS_OF, "as-of")
    }

    /// Per partition where the speed layer last started past its checkpoint,
    /// the offset it started at (see `lambda_core::realtime::Watermark`).
    pub fn starts(&self) -> Result<Cut, StoreError> {
        self.inner.meta(META_STARTS, "starts")
    }

    /// Records [`starts`](Self::starts), durably: before any count past
    /// them is checkpointed, so no watermark past them goes out without.
    pub async fn set_starts(&self, starts: &Cut) -> Result<(), StoreError> {
        let inner = &self.inner;
        let json = serde_json::to_vec(starts).expect("a cut always serialises");
        inner.tree.insert(META_STARTS, json).map_err(inner.err())?;
        inner.db.flush_async().await.map_err(inner.err())?;
        Ok(())
    }

    /// The id this store's speed layer writes the realtime topic under (see
    /// `lambda_core::realtime::WriterId`): made once, at random, and kept,
    /// so a restarted instance is the same writer and two instances (two
    /// data directories) are different ones.
    pub async fn writer_id(&self) -> Result<u64, StoreError> {
        let inner = &self.inner;
        if let Some(v) = inner.tree.get(META_WRITER).map_err(inner.err())? {
            let bytes: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| inner.malformed("writer id"))?;
            return Ok(u64::from_le_bytes(bytes));
        }
        let id = common::random_id();
        inner
            .tree
            .insert(META_WRITER, &id.to_le_bytes())
            .map_err(inner.err())?;
        inner.db.flush_async().await.map_err(inner.err())?;
        Ok(id)
    }

    /// Writes a micro-batch's counts and offsets atomically and durably.
    pub async fn commit(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut writer = ChunkWriter::default();
        for (key, count) in &checkpoint.counts {
            writer.push(key, *count);
        }
        let bytes = writer.bytes();
        let chunks = writer.finish();
        let mut batch = sled::Batch::default();
        for (p, o) in &checkpoint.next_offsets {
            batch.insert(&offset_key(*p), &o.to_le_bytes());
        }
        for (p, t) in &checkpoint.event_times {
            batch.insert(&event_time_key(*p), &t.to_le_bytes());
        }
        if let Some(as_of) = &checkpoint.as_of {
            batch.insert(
                META_AS_OF,
                serde_json::to_vec(as_of).expect("a cut always serialises"),
            );
        }
        let compact = {
            // Held while the batch is applied, so a compaction that reads
            // `next_seq` finds every delta below it in the tree.
            let mut log = inner.log();
            let has_delta = !chunks.is_empty();
            for (i, chunk) in chunks.into_iter().enumerate() {
                batch.insert(&delta_key(log.next_seq, i as u32), chunk);
            }
            inner.tree.apply_batch(batch).map_err(inner.err())?;
            if has_delta {
                log.next_seq += 1;
                log.deltas += 1;
                log.delta_bytes += bytes;
            }
            // A compaction costs what changed (see `compaction`), not the
            // whole snapshot, so it need not wait for the deltas to
            // outgrow the snapshot.
            log.delta_bytes > log.compact_min_bytes
        };
        inner.db.flush_async().await.map_err(inner.err())?;
        if compact {
            self.request_compaction();
        }
        Ok(())
    }

    /// Expires every bucket wholly below `cut`: records the cut and its
    /// bucket floor (never lowering it), durably. Expired counts are gone
    /// from [`load_counts`](Self::load_counts) at once and from the disk at
    /// the purge this starts a few seconds later (see `compaction`).
    pub async fn expire_below(&self, cut: &Cut, size: BucketSize) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut floor: Floor = inner.meta(META_FLOOR, "floor")?;
        for (p, offset) in cut.iter() {
            // The first bucket that starts at or above the cut.
            let first_live = (offset.max(0) as u64).div_ceil(size.get());
            let f = floor.entry(p).or_default();
            *f = (*f).max(first_live);
        }
        let mut batch = sled::Batch::default();
        batch.insert(
            META_CUT,
            serde_json::to_vec(cut).expect("a cut always serialises"),
        );
        batch.insert(
            META_FLOOR,
            serde_json::to_vec(&floor).expect("a floor always serialises"),
        );
        inner.tree.apply_batch(batch).map_err(inner.err())?;
        inner.db.flush_async().await.map_err(inner.err())?;
        self.request_purge_after_expiry();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(p: i32, b: u64, w: &str) -> CountKey {
        CountKey::new(p, b, w)
    }

    fn sorted(counts: FxHashMap<CountKey, u64>) -> Vec<(CountKey, u64)> {
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort();
        v
    }

    fn counts(store: &RealtimeStore) -> Vec<(CountKey, u64)> {
        sorted(store.load_counts().expect("counts"))
    }

    /// The (partition, bucket)s the snapshot holds on disk.
    fn snapshot_buckets(store: &RealtimeStore) -> Vec<(i32, u64)> {
        let mut buckets: Vec<_> = store
            .inner
            .tree
            .scan_prefix([BUCKETED])
            .map(|item| {
                let (k, _) = item.expect("scan");
                let p = i32::from_be_bytes(k[1..5].try_into().expect("4 bytes"));
                (p, u64::from_be_bytes(k[5..13].try_into().expect("8 bytes")))
            })
            .collect();
        buckets.dedup();
        buckets
    }

    /// No compaction by size: a test makes its own (expiries still purge).
    const NO_SIZE_TRIGGER: StoreOptions = StoreOptions {
        compact_min_bytes: u64::MAX,
    };

    /// Waits (up to 30 s, then fails) for the background compaction.
    fn wait_for_a_compaction(store: &RealtimeStore) {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while store.stats().compactions == 0 {
            assert!(
                Instant::now() < deadline,
                "no compaction: {:?}",
                store.stats()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    async fn commit(store: &RealtimeStore, counts: Vec<(CountKey, u64)>) {
        let checkpoint = Checkpoint {
            counts,
            ..Checkpoint::default()
        };
        store.commit(&checkpoint).await.expect("commit");
    }

    #[tokio::test]
    async fn checkpoints_round_trip_and_expiry_removes_whole_buckets() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RealtimeStore::open(dir.path()).expect("open");
            store
                .commit(&Checkpoint {
                    counts: vec![
                        (key(0, 0, "a"), 3),
                        (key(0, 1, "a"), 2),
                        (key(0, 2, "é"), 1),
                        (key(1, 0, "b"), 4),
                    ],
                    next_offsets: vec![(0, 25), (1, 3)],
                    as_of: Some([(0, 30)].into_iter().collect()),
                    event_times: vec![(0, 1_764_669_600_000), (1, 7)],
                })
                .await
                .expect("commit");
        }
        let store = RealtimeStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.offsets().expect("offsets"),
            [(0, 25), (1, 3)].into_iter().collect()
        );
        assert!(store.starts().expect("starts").is_empty(), "none yet");
        let starts: Cut = [(1, 16)].into_iter().collect();
        store.set_starts(&starts).await.expect("starts");
        assert_eq!(
            store.event_times().expect("event times"),
            [(0, 1_764_669_600_000), (1, 7)].into_iter().collect()
        );
        assert_eq!(store.load_counts().expect("counts").len(), 4);
        assert_eq!(
            store.as_of().expect("as-of"),
            [(0, 30)].into_iter().collect()
        );

        let size = BucketSize::new(10).expect("10");
        let cut: Cut = [(0, 20), (1, 0)].into_iter().collect();
        store.expire_below(&cut, size).await.expect("expire");
        let live = vec![(key(0, 2, "é"), 1), (key(1, 0, "b"), 4)];
        assert_eq!(counts(&store), live, "expired at once");
        assert_eq!(store.applied_cut().expect("cut"), cut);
        // An older cut never brings expired buckets back.
        let older: Cut = [(0, 10)].into_iter().collect();
        store.expire_below(&older, size).await.expect("expire");
        assert_eq!(counts(&store), live);

        // The expiry started a compaction in the background; this one may
        // find it done already, but leaves the same live buckets on disk.
        store.compact().expect("compact");
        assert_eq!(snapshot_buckets(&store), vec![(0, 2), (1, 0)]);
        assert_eq!(store.stats().deltas, 0);
        drop(store);
        let store = RealtimeStore::open(dir.path()).expect("reopen");
        assert_eq!(counts(&store), live, "and gone from the disk");
        assert_eq!(store.starts().expect("starts"), starts);
        let writer = store.writer_id().await.expect("writer");
        assert_ne!(writer, 0);
        assert_eq!(store.writer_id().await.expect("writer"), writer, "kept");
        let other = tempfile::tempdir().expect("tempdir");
        let other = RealtimeStore::open(other.path()).expect("open");
        assert_ne!(other.writer_id().await.expect("writer"), writer);
        assert_eq!(store.stats().deltas, 0);
        assert_eq!(store.offsets().expect("offsets").get(0), 25);
    }

    #[tokio::test]
    async fn later_deltas_win_over_the_snapshot_and_compaction_keeps_every_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RealtimeStore::open(dir.path()).expect("open");
        commit(&store, vec![(key(0, 0, "a"), 1), (key(0, 0, "b"), 1)]).await;
        commit(&store, vec![(key(0, 0, "a"), 2)]).await;
        assert_eq!(store.stats().deltas, 2);
        store.compact().expect("compact");
        assert_eq!(store.stats().deltas, 0);
        assert!(store.stats().snapshot_bytes > 0);
        commit(&store, vec![(key(0, 0, "b"), 5), (key(3, 9, "c"), 1)]).await;
        let want = vec![
            (key(0, 0, "a"), 2),
            (key(0, 0, "b"), 5),
            (key(3, 9, "c"), 1),
        ];
        assert_eq!(counts(&store), want);
        drop(store);
        let store = RealtimeStore::open(dir.path()).expect("reopen");
        assert_eq!(counts(&store), want);
        assert_eq!(store.stats().deltas, 1);
        store.compact().expect("compact");
        assert_eq!(counts(&store), want);
    }

    #[tokio::test]
    async fn a_compaction_rewrites_only_the_buckets_that_changed_and_drops_expired_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RealtimeStore::open(dir.path()).expect("open");
        let words = |b: u64, n: u64| -> Vec<(CountKey, u64)> {
            (0..3).map(|w| (key(0, b, &format!("w{w}")), n)).collect()
        };
        commit(&store, (0..10).flat_map(|b| words(b, 1)).collect()).await;
        let first = store.compact().expect("compact");
        assert_eq!((first.deltas, first.buckets, first.counts), (1, 10, 30));
        // Only bucket 9 changes (new events land in the newest buckets):
        // one word updated, one new; its other words are kept.
        commit(&store, vec![(key(0, 9, "w0"), 5), (key(0, 9, "new"), 1)]).await;
        let second = store.compact().expect("compact");
        assert_eq!((second.deltas, second.buckets, second.counts), (1, 1, 4));
        assert_eq!(second.expired, 0);
        let mut want: Vec<_> = (0..9).flat_map(|b| words(b, 1)).collect();
        want.extend([
            (key(0, 9, "new"), 1),
            (key(0, 9, "w0"), 5),
            (key(0, 9, "w1"), 1),
            (key(0, 9, "w2"), 1),
        ]);
        want.sort();
        assert_eq!(counts(&store), want);
        // A cut at offset 40 with buckets of 10 expires buckets 0..4.
        let size = BucketSize::new(10).expect("10");
        let cut: Cut = [(0, 40)].into_iter().collect();
        store.expire_below(&cut, size).await.expect("expire");
        store.compact().expect("compact");
        assert_eq!(
            snapshot_buckets(&store),
            (4..10).map(|b| (0, b)).collect::<Vec<_>>()
        );
        want.retain(|(k, _)| k.bucket.bucket >= 4);
        assert_eq!(counts(&store), want);
        drop(store);
        assert_eq!(
            counts(&RealtimeStore::open(dir.path()).expect("reopen")),
            want
        );
    }

    #[tokio::test]
    async fn the_whole_store_snapshot_of_the_old_format_is_read_then_compacted_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RealtimeStore::open(dir.path()).expect("open");
            let mut writer = ChunkWriter::default();
            writer.push(&key(0, 1, "a"), 7);
            writer.push(&key(2, 0, "b"), 2);
            for (i, chunk) in writer.finish().into_iter().enumerate() {
                let k = keys::snapshot_key(i as u32);
                store.inner.tree.insert(k, chunk).expect("insert");
            }
            commit(&store, vec![(key(0, 1, "a"), 8)]).await;
        }
        let store = RealtimeStore::open(dir.path()).expect("reopen");
        let want = vec![(key(0, 1, "a"), 8), (key(2, 0, "b"), 2)];
        assert_eq!(counts(&store), want, "the later delta wins");
        assert!(store.stats().snapshot_bytes > 0, "the old snapshot counts");
        store.compact().expect("compact");
        assert_eq!(store.inner.tree.scan_prefix([SNAPSHOT]).count(), 0);
        assert_eq!(snapshot_buckets(&store), vec![(0, 1), (2, 0)]);
        assert_eq!(counts(&store), want);
    }

    #[tokio::test]
    async fn per_count_entries_of_the_old_format_are_read_then_compacted_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RealtimeStore::open(dir.path()).expect("open");
        let old = |p: i32, b: u64, w: &str| {
            let mut k = vec![LEGACY_COUNT];
            k.extend_from_slice(&p.to_be_bytes());
            k.extend_from_slice(&b.to_be_bytes());
            k.extend_from_slice(w.as_bytes());
            k
        };
        let tree = &store.inner.tree;
        tree.insert(old(0, 1, "a"), &7u64.to_le_bytes())
            .expect("insert");
        tree.insert(old(1, 0, "b"), &2u64.to_le_bytes())
            .expect("insert");
        commit(&store, vec![(key(0, 1, "a"), 8)]).await;
        let want = vec![(key(0, 1, "a"), 8), (key(1, 0, "b"), 2)];
        assert_eq!(counts(&store), want);
        store.compact().expect("compact");
        assert_eq!(store.inner.tree.scan_prefix([LEGACY_COUNT]).count(), 0);
        assert_eq!(counts(&store), want);
    }

    #[tokio::test]
    async fn deltas_that_reach_the_threshold_are_compacted_in_the_background() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            compact_min_bytes: 4 << 10,
        };
        let store = RealtimeStore::open_with(dir.path(), options).expect("open");
        for i in 0..200u64 {
            let batch = (0..20)
                .map(|w| (key(0, i / 50, &format!("word{w}")), i + 1))
                .collect();
            commit(&store, batch).await;
        }
        // Compaction is asynchronous: wait for it (not a timing assertion).
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while store.stats().delta_bytes > 2 * (options.compact_min_bytes + 1024) {
            assert!(
                Instant::now() < deadline,
                "no compaction: {:?}",
                store.stats()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let want: Vec<_> = (0..4u64)
            .flat_map(|b| (0..20).map(move |w| (key(0, b, &format!("word{w}")), b * 50 + 50)))
            .collect();
        let mut want = want;
        want.sort();
        assert_eq!(counts(&store), want);
        drop(store);
        assert_eq!(
            counts(&RealtimeStore::open(dir.path()).expect("reopen")),
            want
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn compactions_prepare_at_background_priority_and_write_at_the_openers() {
        // The write takes sled's process-wide batch lock, which checkpoints
        // and the serving layer's releases take too: at background priority
        // it made them wait behind it.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RealtimeStore::open_with(
            dir.path(),
            StoreOptions {
                compact_min_bytes: 0,
            },
        )
        .expect("open");
        commit(&store, vec![(key(0, 0, "word"), 1)]).await;
        // Once one is written, both threads are past anything they do first.
        wait_for_a_compaction(&store);
        assert_eq!(counts(&store), vec![(key(0, 0, "word"), 1)]);
        let here = common::background::this_threads_nice();
        let lower = (here + common::background::BACKGROUND_NICE).min(19);
        for (thread, want) in [("realtime-compac", lower), ("realtime-writer", here)] {
            let found = common::background::threads_nice(thread);
            assert!(!found.is_empty(), "no thread {thread}");
            assert!(
                found.iter().all(|&n| n == want),
                "{thread} threads at {found:?}, want {want} (the opener at {here})"
            );
        }
    }

    /// An expiry comes with a new batch view, when every layer is busy: the
    /// purge it starts waits a few seconds (see `compaction`), then removes
    /// what lies below the floor and rewrites nothing.
    #[tokio::test]
    async fn the_purge_after_an_expiry_waits_then_removes_only_what_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RealtimeStore::open_with(dir.path(), NO_SIZE_TRIGGER).expect("open");
        commit(&store, vec![(key(0, 0, "old"), 1), (key(0, 4, "old"), 1)]).await;
        store.compact().expect("compact");
        assert_eq!(snapshot_buckets(&store), vec![(0, 0), (0, 4)]);
        // Reopened, it counts its compactions from zero.
        drop(store);
        let store = RealtimeStore::open_with(dir.path(), NO_SIZE_TRIGGER).expect("reopen");
        // A delta wholly below the floor to come, and one with a live count.
        commit(&store, vec![(key(0, 1, "old"), 2)]).await;
        commit(&store, vec![(key(0, 1, "old"), 3), (key(0, 5, "new"), 2)]).await;
        let size = BucketSize::new(4).expect("4");
        let cut: Cut = [(0, 8)].into_iter().collect();
        store.expire_below(&cut, size).await.expect("expire");
        let live = vec![(key(0, 4, "old"), 1), (key(0, 5, "new"), 2)];
        assert_eq!(counts(&store), live, "expired at once");
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert_eq!(store.stats().compactions, 0, "not while the swap runs");
        wait_for_a_compaction(&store);
        assert_eq!(
            snapshot_buckets(&store),
            vec![(0, 4)],
            "the expired bucket goes, the live one is not rewritten"
        );
        assert_eq!(store.stats().deltas, 1, "the delta with a live count stays");
        assert_eq!(counts(&store), live);
        drop(store);
        let store = RealtimeStore::open(dir.path()).expect("reopen");
        assert_eq!(counts(&store), live, "reopened");
    }

    /// A purge asked for while the deltas have outgrown the size trigger
    /// (whose own request a waiting purge drops) folds them instead.
    #[tokio::test]
    async fn a_purge_folds_deltas_that_outgrew_the_size_trigger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RealtimeStore::open_with(dir.path(), NO_SIZE_TRIGGER).expect("open");
        commit(&store, vec![(key(0, 5, "new"), 2)]).await;
        commit(&store, vec![(key(0, 6, "new"), 3)]).await;
        // Past the trigger now, without the background fold it would start.
        store.inner.log().compact_min_bytes = 0;
        let done = store.purge().expect("purge");
        assert_eq!(done.kind, CompactionKind::Fold);
        assert_eq!(store.stats().deltas, 0);
        assert_eq!(
            counts(&store),
            vec![(key(0, 5, "new"), 2), (key(0, 6, "new"), 3)]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Commit(Vec<(i32, u64, u8, u64)>),
        Expire(i32, i64),
        Compact,
        Purge,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec((0..3i32, 0..6u64, 0..8u8, 1..100u64), 0..12).prop_map(Op::Commit),
            1 => (0..3i32, 0..70i64).prop_map(|(p, o)| Op::Expire(p, o)),
            1 => Just(Op::Compact),
            1 => Just(Op::Purge),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any sequence of checkpoints, expiries, compactions, purges and reopens
        /// reads back exactly the model: the last value of every key at or
        /// above its partition's highest floor.
        #[test]
        fn the_store_reads_back_what_a_map_model_holds(ops in prop::collection::vec(op(), 1..30)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let dir = tempfile::tempdir().expect("tempdir");
            let size = BucketSize::new(10).expect("10");
            let mut model: FxHashMap<CountKey, u64> = FxHashMap::default();
            let mut floor: Floor = Floor::new();
            let mut store = Some(RealtimeStore::open(dir.path()).expect("open"));
            for op in ops {
                match op {
                    Op::Commit(entries) => {
                        let mut batch: FxHashMap<CountKey, u64> = FxHashMap::default();
                        for (p, b, w, c) in entries {
                            batch.insert(key(p, b, &format!("w{w}")), c);
                        }
                        let batch: Vec<_> = batch.into_iter().collect();
                        model.extend(batch.iter().cloned());
                        rt.block_on(commit(store.as_ref().expect("open"), batch));
                    }
                    Op::Expire(p, offset) => {
                        let cut: Cut = [(p, offset)].into_iter().collect();
                        let f = floor.entry(p).or_default();
                        *f = (*f).max((offset as u64).div_ceil(10));
                        rt.block_on(store.as_ref().expect("open").expire_below(&cut, size)).expect("expire");
                    }
                    Op::Compact => {
                        store.as_ref().expect("open").compact().expect("compact");
                    }
                    Op::Purge => {
                        store.as_ref().expect("open").purge().expect("purge");
                    }
                    Op::Reopen => {
                        drop(store.take());
                        store = Some(RealtimeStore::open(dir.path()).expect("reopen"));
                    }
                }
                model.retain(|k, _| k.bucket.bucket >= floor.get(&k.bucket.partition).copied().unwrap_or(0));
                prop_assert_eq!(counts(store.as_ref().expect("open")), sorted(model.clone()));
            }
        }
    }
}
