//! The realtime view in sled: counts per (partition, bucket, word) and the
//! next offset of every partition, always written together.
//!
//! One tree, three key spaces, so a micro-batch is one atomic `apply_batch`:
//!
//! ```text
//! c | partition: i32 BE | bucket: u64 BE | word   →  count: u64 LE
//! o | partition: i32 BE                           →  next offset: i64 LE
//! m | "cut"                                       →  JSON of the last batch cut applied
//! m | "asof"                                      →  JSON of the events position the counts are exact at
//! ```
//!
//! The speed layer writes its events offsets under `o`. A serving layer's
//! replica reuses the store for the counts it follows: its `o` entries are
//! realtime-topic positions, and `asof` is the last complete watermark.
//!
//! Counts are keyed partition-then-bucket, so expiring everything below a cut
//! is one range per partition.

use common::{BucketKey, Cut, Offset, Partition};
use rustc_hash::FxHashMap;
use std::path::Path;
use thiserror::Error;

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
}

/// A realtime count's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub bucket: BucketKey,
    pub word: Box<str>,
}

const COUNT: u8 = b'c';
const OFFSET: u8 = b'o';
const META_CUT: &[u8] = b"mcut";
const META_AS_OF: &[u8] = b"masof";
const CACHE_BYTES: u64 = 64 << 20;

fn count_key(key: &CountKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(13 + key.word.len());
    k.push(COUNT);
    k.extend_from_slice(&key.bucket.partition.to_be_bytes());
    k.extend_from_slice(&key.bucket.bucket.to_be_bytes());
    k.extend_from_slice(key.word.as_bytes());
    k
}

fn offset_key(partition: Partition) -> [u8; 5] {
    let mut k = [OFFSET; 5];
    k[1..].copy_from_slice(&partition.to_be_bytes());
    k
}

/// The durable realtime view.
#[derive(Debug)]
pub struct RealtimeStore {
    db: sled::Db,
    tree: sled::Tree,
    path: String,
}

/// What a micro-batch changes: absolute counts and next offsets.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub counts: Vec<(CountKey, u64)>,
    pub next_offsets: Vec<(Partition, Offset)>,
    /// The events position the counts are now exact at, if it is not the
    /// offsets themselves (serving replicas).
    pub as_of: Option<Cut>,
}

impl RealtimeStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let err = |source| StoreError::Sled {
            path: path.clone(),
            source,
        };
        // sled's default page cache is 1 GiB per database; the realtime view
        // is a small working set (only the tail above the batch cut), so a
        // much smaller cache keeps memory flat without costing throughput.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(err)?;
        let tree = db.open_tree("realtime").map_err(err)?;
        Ok(Self { db, tree, path })
    }

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

    /// Every count, to rebuild the in-memory mirror at start.
    pub fn load_counts(&self) -> Result<FxHashMap<CountKey, u64>, StoreError> {
        let mut out = FxHashMap::default();
        for item in self.tree.scan_prefix([COUNT]) {
            let (k, v) = item.map_err(self.err())?;
            if k.len() < 13 || v.len() != 8 {
                return Err(self.malformed("count entry"));
            }
            let partition = i32::from_be_bytes(k[1..5].try_into().expect("4 bytes"));
            let bucket = u64::from_be_bytes(k[5..13].try_into().expect("8 bytes"));
            let word =
                std::str::from_utf8(&k[13..]).map_err(|_| self.malformed("word is not UTF-8"))?;
            let count = u64::from_le_bytes(v.as_ref().try_into().expect("8 bytes"));
            out.insert(
                CountKey {
                    bucket: BucketKey { partition, bucket },
                    word: word.into(),
                },
                count,
            );
        }
        Ok(out)
    }

    /// The checkpointed next offset of every partition seen so far.
    pub fn offsets(&self) -> Result<Cut, StoreError> {
        let mut cut = Cut::new();
        for item in self.tree.scan_prefix([OFFSET]) {
            let (k, v) = item.map_err(self.err())?;
            if k.len() != 5 || v.len() != 8 {
                return Err(self.malformed("offset entry"));
            }
            let p = i32::from_be_bytes(k[1..5].try_into().expect("4 bytes"));
            cut.set(
                p,
                i64::from_le_bytes(v.as_ref().try_into().expect("8 bytes")),
            );
        }
        Ok(cut)
    }

    /// The last batch cut whose buckets were expired.
    pub fn applied_cut(&self) -> Result<Cut, StoreError> {
        match self.tree.get(META_CUT).map_err(self.err())? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| self.malformed(format!("cut: {e}"))),
            None => Ok(Cut::new()),
        }
    }

    /// The `as_of` of the last checkpoint that had one.
    pub fn as_of(&self) -> Result<Cut, StoreError> {
        match self.tree.get(META_AS_OF).map_err(self.err())? {
            Some(v) => {
                serde_json::from_slice(&v).map_err(|e| self.malformed(format!("as-of: {e}")))
            }
            None => Ok(Cut::new()),
        }
    }

    /// Writes a micro-batch's counts and offsets atomically and durably.
    pub async fn commit(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, count) in &checkpoint.counts {
            batch.insert(count_key(key), &count.to_le_bytes());
        }
        for (p, o) in &checkpoint.next_offsets {
            batch.insert(&offset_key(*p), &o.to_le_bytes());
        }
        if let Some(as_of) = &checkpoint.as_of {
            batch.insert(
                META_AS_OF,
                serde_json::to_vec(as_of).expect("a cut always serialises"),
            );
        }
        self.tree.apply_batch(batch).map_err(self.err())?;
        self.db.flush_async().await.map_err(self.err())?;
        Ok(())
    }

    /// Deletes every bucket wholly below `cut` and records the cut, atomically.
    /// Returns how many counts were removed.
    pub async fn expire_below(
        &self,
        cut: &Cut,
        size: common::BucketSize,
    ) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for (p, offset) in cut.iter() {
            let first_kept = size.bucket_of(offset);
            let mut start = vec![COUNT];
            start.extend_from_slice(&p.to_be_bytes());
            let mut end = start.clone();
            start.extend_from_slice(&0u64.to_be_bytes());
            end.extend_from_slice(&first_kept.to_be_bytes());
            for item in self.tree.range(start..end) {
                let (k, _) = item.map_err(self.err())?;
                batch.remove(k);
                removed += 1;
            }
        }
        let json = serde_json::to_vec(cut).expect("a cut always serialises");
        batch.insert(META_CUT, json);
        self.tree.apply_batch(batch).map_err(self.err())?;
        self.db.flush_async().await.map_err(self.err())?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::BucketSize;

    fn key(p: i32, b: u64, w: &str) -> CountKey {
        CountKey {
            bucket: BucketKey {
                partition: p,
                bucket: b,
            },
            word: w.into(),
        }
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
                })
                .await
                .expect("commit");
        }
        let store = RealtimeStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.offsets().expect("offsets"),
            [(0, 25), (1, 3)].into_iter().collect()
        );
        assert_eq!(store.load_counts().expect("counts").len(), 4);
        assert_eq!(
            store.as_of().expect("as-of"),
            [(0, 30)].into_iter().collect()
        );

        let size = BucketSize::new(10).expect("10");
        let cut: Cut = [(0, 20), (1, 0)].into_iter().collect();
        assert_eq!(store.expire_below(&cut, size).await.expect("expire"), 2);
        let counts = store.load_counts().expect("counts");
        let mut keys: Vec<&CountKey> = counts.keys().collect();
        keys.sort();
        assert_eq!(keys, [&key(0, 2, "é"), &key(1, 0, "b")]);
        assert_eq!(store.applied_cut().expect("cut"), cut);
    }
}
