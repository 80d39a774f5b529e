//! Compaction, on a background thread or on the caller's when asked:
//! folding the deltas into the snapshot, bucket by bucket, once they hold
//! `--realtime-compact-bytes`; and a few seconds after every expiry,
//! removing what lies below the new floor (see [`CompactionKind::Purge`]).
//!
//! # Layout
//!
//! - this file: the background threads and their triggers, the fold, and
//!   writing what either prepared;
//! - `purge`: what a purge removes;
//! - `batches`: a compaction's writes, cut into short batches.

mod batches;
mod purge;

use crate::keys::{bucket_chunk, bucket_key, bucket_prefix, Floor, META_FLOOR};
use crate::replay::Buckets;
use crate::{Compaction, CompactionKind, Inner, RealtimeStore, StoreError};
use batches::Batches;
use common::sync::LockOrStop;
use lambda_core::chunk::ChunkWriter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// The background compaction threads and how to wake and stop them: one
/// at background priority that reads, merges and encodes, and one at the
/// opener's priority that writes what it prepared. sled's batches take a
/// lock of the whole process, which every checkpoint and every serving
/// release also takes; written at background priority, a compaction made
/// them wait behind it (up to 150 ms at 20,000 events/s). Both threads live
/// as long as the store, so each keeps reusing its own memory.
#[derive(Debug)]
pub(crate) struct Compactor {
    /// A compaction of this kind, not before the given time.
    trigger: SyncSender<(Instant, CompactionKind)>,
    closing: Arc<AtomicBool>,
    handle: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// A prepared compaction on its way to the writer thread, and where its
/// outcome goes.
type WriteRequest = (Prepared, SyncSender<Result<Compaction, StoreError>>);

/// The writer thread, as the compactor sees it.
struct Writer(SyncSender<WriteRequest>);

impl Writer {
    fn write(&self, inner: &Inner, prepared: Prepared) -> Result<Compaction, StoreError> {
        let (tell, outcome) = sync_channel(1);
        let gone = || StoreError::WriterGone {
            path: inner.path.clone(),
        };
        self.0.send((prepared, tell)).map_err(|_| gone())?;
        outcome.recv().map_err(|_| gone())?
    }
}

impl Compactor {
    /// Starts the threads that compact `inner` when triggered.
    pub(crate) fn start(inner: &Arc<Inner>) -> Result<Self, StoreError> {
        let thread_error = |source| StoreError::Thread {
            path: inner.path.clone(),
            source,
        };
        let (to_writer, requests) = sync_channel::<WriteRequest>(1);
        let target = Arc::clone(inner);
        // Spawned from here, it runs at the opener's priority.
        let writer = std::thread::Builder::new()
            .name("realtime-writer".into())
            .spawn(move || {
                for (prepared, tell) in requests {
                    let _ = tell.send(target.write(prepared));
                }
            })
            .map_err(thread_error)?;
        let closing = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<(Instant, CompactionKind)>(1);
        let (worker, stop) = (Arc::clone(inner), Arc::clone(&closing));
        let handle = std::thread::Builder::new()
            .name("realtime-compactor".into())
            .spawn(move || {
                // Background work: see `common::background`.
                common::background::lower_this_threads_priority();
                let writer = Writer(to_writer);
                while let Ok((not_before, kind)) = rx.recv() {
                    if !wait_until(not_before, &stop) {
                        break;
                    }
                    let started = Instant::now();
                    match worker.compact(kind, Some(&stop), Some(&writer)) {
                        Ok(Some(c)) => tracing::info!(
                            store = %worker.path,
                            kind = ?c.kind,
                            deltas = c.deltas,
                            buckets = c.buckets,
                            counts = c.counts,
                            expired = c.expired,
                            snapshot_bytes = c.snapshot_bytes,
                            ms = started.elapsed().as_millis() as u64,
                            write_ms = c.write_ms,
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
            .map_err(thread_error)?;
        Ok(Self {
            trigger: tx,
            closing,
            handle,
            writer,
        })
    }
}

/// A compaction's write, prepared.
///
/// It goes in several atomic batches, not one: each batch holds sled's lock
/// of the whole process while it is applied (about 2.5 ms per MiB here),
/// and at 20,000 events/s a compaction after a view swap rewrites some
/// 30 MB, which held every checkpoint and release behind it for 75 ms and
/// more. Split, they wait for one batch at most. Each batch is flushed
/// before the next: a checkpoint's own flush waits for everything written
/// before it, and with one flush at the end it waited for the whole
/// rewrite (the slowest probes of `bench/freshness.py` at 20,000 events/s,
/// 130-170 ms, all fell on compactions). Reading between batches
/// stays exact: a batch rewrites whole buckets, each to its snapshot with
/// the deltas folded in, and the deltas stay until `last`, after every
/// rewritten bucket is durable; folding a delta again over a snapshot that
/// already holds it changes nothing (a delta sets absolute counts, applied
/// in order). The folded deltas go oldest first, so those left by a cut
/// between batches are the newest, whose counts the snapshot ends with.
/// Expired buckets lie below the durable floor, which every read skips, so
/// their removal may go in any batch.
struct Prepared {
    /// The rewritten buckets and the expired ones' removal, about
    /// [`WRITE_BATCH_BYTES`] each.
    batches: Vec<sled::Batch>,
    /// The removal of the folded deltas, oldest first, once the rest is
    /// durable.
    last: Vec<sled::Batch>,
    done: Compaction,
    /// Snapshot bytes written and replaced, delta bytes folded.
    written: u64,
    replaced: u64,
    delta_bytes: u64,
}

impl Inner {
    /// Folds every delta written so far into the snapshot, one bucket at a
    /// time: only the buckets the deltas changed are read and rewritten,
    /// and the buckets below the floor are removed unread, so a compaction
    /// costs what changed since the last one, not the whole store. The
    /// rewritten buckets and the removals go in batches, the removal of the
    /// folded deltas after them (see [`Prepared`]).
    ///
    /// A purge is what [`Self::purge`] prepares, unless the deltas have
    /// outgrown `--realtime-compact-bytes` meanwhile: then it folds them
    /// (the size trigger's request is dropped while a purge waits).
    ///
    /// In the background the batch is written by the writer thread (see
    /// [`Compactor`]); asked directly, on the caller's thread.
    fn compact(
        &self,
        kind: CompactionKind,
        closing: Option<&AtomicBool>,
        writer: Option<&Writer>,
    ) -> Result<Option<Compaction>, StoreError> {
        let _one = self.compacting.lock_or_stop("the compaction slot");
        let stopping = || closing.is_some_and(|c| c.load(Ordering::Relaxed));
        if stopping() {
            return Ok(None);
        }
        let outgrown = {
            let log = self.log();
            log.delta_bytes > log.compact_min_bytes
        };
        let prepared = match kind {
            CompactionKind::Purge if !outgrown => self.purge(&stopping)?,
            CompactionKind::Fold | CompactionKind::Purge => self.prepare(&stopping)?,
        };
        let Some(prepared) = prepared else {
            return Ok(None);
        };
        match writer {
            Some(writer) => writer.write(self, prepared),
            None => self.write(prepared),
        }
        .map(Some)
    }

    /// Writes a prepared compaction, durably.
    fn write(&self, prepared: Prepared) -> Result<Compaction, StoreError> {
        let Prepared {
            batches,
            last,
            mut done,
            written,
            replaced,
            delta_bytes,
        } = prepared;
        let started = Instant::now();
        for batch in batches.into_iter().chain(last) {
            self.tree.apply_batch(batch).map_err(self.err())?;
            self.db.flush().map_err(self.err())?;
        }
        let mut log = self.log();
        log.snapshot_bytes = (log.snapshot_bytes + written).saturating_sub(replaced);
        log.delta_bytes = log.delta_bytes.saturating_sub(delta_bytes);
        log.deltas = log.deltas.saturating_sub(done.deltas);
        log.compactions += 1;
        done.snapshot_bytes = log.snapshot_bytes;
        done.write_ms = started.elapsed().as_millis() as u64;
        Ok(done)
    }

    /// Reads what changed since the last compaction and builds the batch
    /// that folds it in (`None` if `stopping` turned true meanwhile).
    fn prepare(&self, stopping: &dyn Fn() -> bool) -> Result<Option<Prepared>, StoreError> {
        let below = self.log().next_seq;
        let floor: Floor = self.meta(META_FLOOR, "floor")?;
        // Below the floor nothing is kept: not read into memory either.
        let changes = self.changes(below, &floor)?;
        let mut done = Compaction::none(CompactionKind::Fold);
        done.deltas = changes.deltas;
        let mut batches = Batches::default();
        let mut written = 0;
        let mut replaced =
            changes.legacy_bytes + self.remove_expired(&floor, &mut batches, &mut done)?;
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
                batches.insert(
                    &bucket_key(bucket.partition, bucket.bucket, i as u32),
                    chunk,
                );
            }
            for k in old_keys {
                if bucket_chunk(&k).is_none_or(|i| i as usize >= kept) {
                    batches.remove(k);
                }
            }
            // A bucket never spans two batches.
            batches.cut_if_full();
            done.buckets += 1;
        }
        let mut last = Batches::default();
        for k in changes.folded_keys {
            last.remove(k);
            last.cut_if_full();
        }
        if stopping() {
            return Ok(None);
        }
        Ok(Some(Prepared {
            batches: batches.finish(),
            last: last.finish(),
            done,
            written,
            replaced,
            delta_bytes: changes.delta_bytes,
        }))
    }

    /// Removes the snapshot's buckets below the floor, unread; returns
    /// their bytes.
    fn remove_expired(
        &self,
        floor: &Floor,
        batches: &mut Batches,
        done: &mut Compaction,
    ) -> Result<u64, StoreError> {
        let mut bytes = 0;
        for (&partition, &first_live) in floor {
            let expired = bucket_prefix(partition, 0)..bucket_prefix(partition, first_live);
            let mut last = None;
            for item in self.tree.range(expired) {
                let (k, v) = item.map_err(self.err())?;
                bytes += v.len() as u64;
                let bucket = k.get(..13).map(<[u8]>::to_vec);
                done.expired += u64::from(bucket != last);
                last = bucket;
                batches.remove(k);
                batches.cut_if_full();
            }
        }
        Ok(bytes)
    }
}

impl Compaction {
    /// A compaction of `kind` that has done nothing yet.
    fn none(kind: CompactionKind) -> Self {
        Self {
            kind,
            deltas: 0,
            buckets: 0,
            counts: 0,
            expired: 0,
            snapshot_bytes: 0,
            write_ms: 0,
        }
    }
}

/// How long the purge after an expiry waits. A layer expires when a new
/// batch view arrives, which is when everything else happens too: the
/// recompute has just used the cores, the serving layer swaps its view in
/// and reconciles it, and the speed layer and every serving replica expire
/// at about the same moment. Their compactions at once (their writes at
/// normal priority, taking sled's lock between checkpoints) were where the
/// slowest probes of `bench/freshness.py` at 20,000 events/s fell; a few
/// seconds later the cores are free. Expired buckets are below the floor,
/// which every read skips, so the wait changes no answer.
const AFTER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits until `when`, or until `closing` turns true (then false).
fn wait_until(when: Instant, closing: &AtomicBool) -> bool {
    loop {
        if closing.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= when {
            return true;
        }
        std::thread::sleep((when - now).min(std::time::Duration::from_millis(50)));
    }
}

impl RealtimeStore {
    /// Asks the background thread for a compaction now (at most one waits).
    pub(crate) fn request_compaction(&self) {
        self.request(Instant::now(), CompactionKind::Fold);
    }

    /// Asks for the purge that follows an expiry (see [`AFTER_EXPIRY`]).
    pub(crate) fn request_purge_after_expiry(&self) {
        self.request(Instant::now() + AFTER_EXPIRY, CompactionKind::Purge);
    }

    fn request(&self, not_before: Instant, kind: CompactionKind) {
        if let Some(c) = &self.compactor {
            match c.trigger.try_send((not_before, kind)) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Folds every delta into the snapshot now, on the caller's thread.
    pub fn compact(&self) -> Result<Compaction, StoreError> {
        self.compact_now(CompactionKind::Fold)
    }

    /// Removes what lies below the floor now, on the caller's thread (a
    /// fold instead if the deltas hold more than `--realtime-compact-bytes`).
    pub fn purge(&self) -> Result<Compaction, StoreError> {
        self.compact_now(CompactionKind::Purge)
    }

    fn compact_now(&self, kind: CompactionKind) -> Result<Compaction, StoreError> {
        Ok(self
            .inner
            .compact(kind, None, None)?
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
            // Its requests ended with the compactor thread.
            let _ = c.writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Checkpoint, StoreOptions};
    use lambda_core::CountKey;

    /// A store with a compacted snapshot, later deltas over some of its
    /// buckets and new ones, and an expiry: what a compaction after a view
    /// swap finds.
    async fn store_to_compact(dir: &std::path::Path) -> RealtimeStore {
        // No background compactions: the test makes its own.
        let options = StoreOptions {
            compact_min_bytes: u64::MAX,
        };
        let store = RealtimeStore::open_with(dir, options).expect("open");
        let commit = |counts: Vec<(CountKey, u64)>| {
            let checkpoint = Checkpoint {
                counts,
                ..Checkpoint::default()
            };
            let store = &store;
            async move { store.commit(&checkpoint).await.expect("commit") }
        };
        for round in 1..=3u64 {
            let counts = (0..2)
                .flat_map(|p| (0..6u64).map(move |b| (p, b)))
                .flat_map(|(p, b)| {
                    (0..12).map(move |w| {
                        (
                            CountKey::new(p, b + round, &format!("w{w}")),
                            round * 10 + w,
                        )
                    })
                })
                .collect();
            commit(counts).await;
            if round == 1 {
                store.compact().expect("first compaction");
            }
        }
        // The expiry's durable floor, as `expire_below` writes it, without
        // the background compaction it would start.
        let floor: Floor = [(0, 3), (1, 2)].into_iter().collect();
        let floor = serde_json::to_vec(&floor).expect("json");
        store.inner.tree.insert(META_FLOOR, floor).expect("floor");
        store
    }

    #[tokio::test]
    async fn a_compaction_cut_short_after_any_of_its_batches_reads_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (want, batches) = {
            let store = store_to_compact(&dir.path().join("whole")).await;
            let want = store.load_counts().expect("counts");
            let prepared = store
                .inner
                .prepare(&|| false)
                .expect("prepare")
                .expect("ran");
            assert!(
                prepared.last.len() > 1,
                "the test needs the folded deltas removed in several batches"
            );
            (want, prepared.batches.len() + prepared.last.len())
        };
        assert!(
            batches > 2,
            "the test needs a compaction of several batches, got {batches}"
        );
        // A crash after `written` batches (the process ends, sled has
        // flushed what was applied), then a reopen.
        for written in 0..=batches {
            let path = dir.path().join(format!("cut-{written}"));
            {
                let store = store_to_compact(&path).await;
                let inner = &store.inner;
                let prepared = inner.prepare(&|| false).expect("prepare").expect("ran");
                let all = prepared.batches.into_iter().chain(prepared.last);
                for batch in all.take(written) {
                    inner.tree.apply_batch(batch).expect("apply");
                }
                inner.db.flush().expect("flush");
                assert_eq!(
                    store.load_counts().expect("counts"),
                    want,
                    "after {written} batches"
                );
            }
            let store = RealtimeStore::open(&path).expect("reopen");
            assert_eq!(
                store.load_counts().expect("counts"),
                want,
                "reopened after {written} batches"
            );
            // And the next compaction finishes the job.
            store.compact().expect("compact");
            assert_eq!(
                store.load_counts().expect("counts"),
                want,
                "compacted after {written} batches"
            );
        }
    }
}
