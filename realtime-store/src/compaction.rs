//! Compaction: folding the deltas into the snapshot, bucket by bucket, on a
//! background thread once the deltas hold `--realtime-compact-bytes` and
//! after every expiry, or on the caller's thread when asked.

use crate::keys::{bucket_chunk, bucket_key, bucket_prefix, Floor, META_FLOOR};
use crate::replay::Buckets;
use crate::{Compaction, Inner, RealtimeStore, StoreError};
use common::sync::LockOrStop;
use lambda_core::chunk::ChunkWriter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// The background compaction thread and how to wake and stop it.
#[derive(Debug)]
pub(crate) struct Compactor {
    trigger: SyncSender<()>,
    closing: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Compactor {
    /// Starts the background thread that compacts `inner` when triggered.
    pub(crate) fn start(inner: &Arc<Inner>) -> Result<Self, StoreError> {
        let path = inner.path.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<()>(1);
        let (worker, stop) = (Arc::clone(inner), Arc::clone(&closing));
        let handle = std::thread::Builder::new()
            .name("realtime-compactor".into())
            .spawn(move || {
                // Background work: see `common::background`.
                common::background::lower_this_threads_priority();
                while rx.recv().is_ok() {
                    let started = Instant::now();
                    match worker.compact(Some(&stop)) {
                        Ok(Some(c)) => tracing::info!(
                            store = %worker.path,
                            deltas = c.deltas,
                            buckets = c.buckets,
                            counts = c.counts,
                            expired = c.expired,
                            snapshot_bytes = c.snapshot_bytes,
                            ms = started.elapsed().as_millis() as u64,
                            "Compacted the realtime store."
                        ),
                        Ok(None) => break,
                        Err(error) => tracing::error!(
                            %error,
                            "Cannot compact the realtime store; its deltas stay and the next trigger retries."
                        ),
                    }
                }
            })
            .map_err(|source| StoreError::Thread { path, source })?;
        Ok(Self {
            trigger: tx,
            closing,
            handle,
        })
    }
}

impl Inner {
    /// Folds every delta written so far into the snapshot, one bucket at a
    /// time: only the buckets the deltas changed are read and rewritten,
    /// and the buckets below the floor are removed unread, so a compaction
    /// costs what changed since the last one, not the whole store. The
    /// rewritten buckets, the removals and the folded deltas go in one
    /// atomic batch.
    pub(crate) fn compact(
        &self,
        closing: Option<&AtomicBool>,
    ) -> Result<Option<Compaction>, StoreError> {
        let _one = self.compacting.lock_or_stop("the compaction slot");
        let stopping = || closing.is_some_and(|c| c.load(Ordering::Relaxed));
        if stopping() {
            return Ok(None);
        }
        let below = self.log().next_seq;
        let floor: Floor = self.meta(META_FLOOR, "floor")?;
        // Below the floor nothing is kept: not read into memory either.
        let changes = self.changes(below, &floor)?;
        let mut done = Compaction {
            deltas: changes.deltas,
            buckets: 0,
            counts: 0,
            expired: 0,
            snapshot_bytes: 0,
        };
        let mut batch = sled::Batch::default();
        let (mut written, mut replaced) = (0, changes.legacy_bytes);
        // Whole buckets below the floor go, unread.
        for (&partition, &first_live) in &floor {
            let expired = bucket_prefix(partition, 0)..bucket_prefix(partition, first_live);
            let mut last = None;
            for item in self.tree.range(expired) {
                let (k, v) = item.map_err(self.err())?;
                replaced += v.len() as u64;
                let bucket = k.get(..13).map(<[u8]>::to_vec);
                done.expired += u64::from(bucket != last);
                last = bucket;
                batch.remove(k);
            }
        }
        // Each live bucket that changed: its snapshot, the changes over it.
        for (bucket, changed) in changes.counts {
            if stopping() {
                return Ok(None);
            }
            let prefix = bucket_prefix(bucket.partition, bucket.bucket);
            let mut old = Buckets::default();
            let (old_keys, old_bytes) = self.snapshot_under(&prefix, &floor, &mut old)?;
            replaced += old_bytes;
            // A new bucket (the usual case) has nothing to merge with.
            let mut words = old.remove(&bucket).unwrap_or_default();
            if words.is_empty() {
                words = changed;
            } else {
                words.extend(changed);
            }
            let mut writer = ChunkWriter::default();
            for (word, c) in &words {
                writer.push_parts(bucket, word, *c);
            }
            done.counts += words.len() as u64;
            written += writer.bytes();
            let chunks = writer.finish();
            let kept = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                batch.insert(
                    &bucket_key(bucket.partition, bucket.bucket, i as u32),
                    chunk,
                );
            }
            for k in old_keys {
                if bucket_chunk(&k).is_none_or(|i| i as usize >= kept) {
                    batch.remove(k);
                }
            }
            done.buckets += 1;
        }
        for k in changes.folded_keys {
            batch.remove(k);
        }
        if stopping() {
            return Ok(None);
        }
        self.tree.apply_batch(batch).map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        let mut log = self.log();
        log.snapshot_bytes = (log.snapshot_bytes + written).saturating_sub(replaced);
        log.delta_bytes = log.delta_bytes.saturating_sub(changes.delta_bytes);
        log.deltas = log.deltas.saturating_sub(changes.deltas);
        log.compactions += 1;
        done.snapshot_bytes = log.snapshot_bytes;
        Ok(Some(done))
    }
}

impl RealtimeStore {
    /// Asks the background thread for a compaction (at most one waits).
    pub(crate) fn request_compaction(&self) {
        if let Some(c) = &self.compactor {
            match c.trigger.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }
    }

    /// Compacts now, on the caller's thread.
    pub fn compact(&self) -> Result<Compaction, StoreError> {
        Ok(self
            .inner
            .compact(None)?
            .expect("a compaction without a closing flag always runs"))
    }
}

impl Drop for RealtimeStore {
    /// Stops the compactor (a compaction under way finishes or is dropped
    /// before its write) so the database is closed when this returns.
    fn drop(&mut self) {
        if let Some(c) = self.compactor.take() {
            c.closing.store(true, Ordering::Relaxed);
            drop(c.trigger);
            let _ = c.handle.join();
        }
    }
}
