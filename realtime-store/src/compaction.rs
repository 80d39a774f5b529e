//! Compaction: folding the deltas into a new snapshot, on a background
//! thread once the deltas outgrow the snapshot and after every expiry, or on
//! the caller's thread when asked.

use crate::keys::snapshot_key;
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
    /// Folds every delta written so far into a new snapshot, leaving out
    /// expired counts, and removes what it replaced, atomically.
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
        let folded = self.read(below)?;
        let mut writer = ChunkWriter::default();
        for (k, c) in &folded.counts {
            writer.push(k, *c);
        }
        let snapshot_bytes = writer.bytes();
        let chunks = writer.finish();
        let kept = chunks.len();
        let mut batch = sled::Batch::default();
        for (i, chunk) in chunks.into_iter().enumerate() {
            batch.insert(&snapshot_key(i as u32), chunk);
        }
        let stale = folded.snapshot_keys.into_iter().filter(|k| {
            k.len() != 5
                || u32::from_be_bytes(k[1..5].try_into().expect("4 bytes")) as usize >= kept
        });
        for k in stale.chain(folded.legacy_keys).chain(folded.delta_keys) {
            batch.remove(k);
        }
        if stopping() {
            return Ok(None);
        }
        self.tree.apply_batch(batch).map_err(self.err())?;
        self.db.flush().map_err(self.err())?;
        let mut log = self.log();
        log.snapshot_bytes = snapshot_bytes;
        log.delta_bytes = log.delta_bytes.saturating_sub(folded.delta_bytes);
        log.deltas = log.deltas.saturating_sub(folded.deltas);
        log.compactions += 1;
        Ok(Some(Compaction {
            deltas: folded.deltas,
            counts: folded.counts.len() as u64,
            expired: folded.expired,
            snapshot_bytes,
        }))
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
