//! Batch view replicas: pull each new view from the batch layer, verify it,
//! keep a local copy, and swap it in atomically.
//!
//! Order matters for the merge invariant across a crash: the pulled file is
//! made durable locally *before* the swap, and realtime buckets below its cut
//! are expired only *after* it, so a restart never pairs an old view with
//! realtime counts that were already dropped for a newer one.

use crate::health::Health;
use crate::reconcile;
use crate::replica::{LoadedView, Replica, SHARDS};
use common::shutdown::CancellationToken;
use common::sync::FairRwLock;
use common::views::{ViewSource, ViewStore};
use lambda_core::view::{verify_and_decode, ViewError};
use lambda_core::BucketSize;
use realtime_store::RealtimeStore;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Notify;

#[derive(Debug, Error)]
pub enum PullError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(transparent)]
    Source(#[from] common::views::source::SourceError),
    #[error(transparent)]
    View(#[from] ViewError),
    #[error(
        "batch view {version} uses bucket size {theirs}, this serving layer {ours}; \
         every layer must use the same --bucket-size"
    )]
    BucketSize {
        version: u64,
        theirs: BucketSize,
        ours: BucketSize,
    },
    #[error("realtime store: {0}")]
    Store(#[from] realtime_store::StoreError),
}

/// What the puller works with.
#[derive(Clone)]
pub struct Puller {
    /// Any batch instance, or the shared store.
    pub source: ViewSource,
    pub cache: Arc<ViewStore>,
    pub replica: Arc<FairRwLock<Replica>>,
    pub store: Arc<RealtimeStore>,
    pub health: Arc<Health>,
}

impl Puller {
    /// Pulls the newest view if it is newer than the loaded one; returns the
    /// version now loaded.
    pub async fn pull_once(&self) -> Result<Option<u64>, PullError> {
        let this = self.clone();
        // Fetching, verifying and indexing a view is CPU work no answer
        // waits for: at background priority, so the follower and the
        // queries get the cores first.
        let loaded = common::background::run("view-pull", move || this.pull_blocking())
            .await
            .map_err(|e| PullError::Unreachable {
                url: self.source.name(),
                reason: e.to_string(),
            })??;
        if let Some(view) = loaded {
            self.install(Arc::new(view)).await?;
        }
        Ok(self.current())
    }

    fn current(&self) -> Option<u64> {
        let r = self.replica.read_or_stop("the replica");
        r.view().map(|v| v.version())
    }

    /// Fetches, verifies and stores a newer view; `None` if there is none.
    /// Also takes the batch instances the source lists.
    fn pull_blocking(&self) -> Result<Option<LoadedView>, PullError> {
        let source = &self.source;
        match source.instances() {
            Ok(instances) => self.health.batch_instances(instances),
            Err(error) => tracing::debug!(%error, "Cannot list the batch instances."),
        }
        let Some(manifest) = source.latest()? else {
            self.health.batch_ok();
            return Ok(None);
        };
        self.health.batch_ok();
        if self.current().is_some_and(|v| v >= manifest.version) {
            return Ok(None);
        }
        let Some(bytes) = source.read(manifest.version)? else {
            // Pruned between the two requests: the next poll sees a newer one.
            return Ok(None);
        };
        let view = verify_and_decode(&manifest, &bytes)?;
        let ours = self.replica.read_or_stop("the replica").bucket_size();
        if view.header.bucket_size != ours {
            return Err(PullError::BucketSize {
                version: manifest.version,
                theirs: view.header.bucket_size,
                ours,
            });
        }
        self.cache.store_verified(&manifest, &bytes)?;
        Ok(Some(LoadedView::new(manifest, view)))
    }

    /// Swaps `view` in, then expires the realtime buckets it covers. First,
    /// while the replica still holds the realtime buckets between the two
    /// cuts, reconciles the swap (see [`crate::reconcile`]). The work over
    /// the realtime counts takes the replica's lock a shard at a time, on a
    /// blocking thread, so the follower applies releases in between (see
    /// `replica::swap`).
    pub async fn install(&self, view: Arc<LoadedView>) -> Result<(), PullError> {
        let started = std::time::Instant::now();
        self.reconcile(&view).await;
        let (version, cut) = (view.version(), view.cut().clone());
        let replica = Arc::clone(&self.replica);
        let swapped = tokio::task::spawn_blocking(move || {
            let lock = || replica.write_or_stop("the replica");
            if !lock().begin_swap(view) {
                return None;
            }
            while !in_slice(&replica, Replica::rerank_slice) {}
            let (swapped, size) = {
                let mut r = lock();
                (r.finish_swap(), r.bucket_size())
            };
            let removed: usize = (0..SHARDS)
                .map(|s| in_slice(&replica, |r| r.expire_shard(s)))
                .sum();
            swapped.then_some((size, removed))
        })
        .await
        .expect("a swap does not panic");
        let Some((size, removed)) = swapped else {
            return Ok(());
        };
        self.store.expire_below(&cut, size).await?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(version, %cut, expired = removed, ms, "Batch view swapped in.");
        Ok(())
    }
}

/// One slice of a swap's work under the replica's write lock, which it then
/// hands to a follower waiting for it (see `FairRwLock`), so that releases
/// go in between the slices.
fn in_slice<T>(replica: &FairRwLock<Replica>, work: impl FnOnce(&mut Replica) -> T) -> T {
    let mut r = replica.write_or_stop("the replica");
    let out = work(&mut r);
    r.unlock_fair();
    out
}

impl Puller {
    async fn reconcile(&self, new: &Arc<LoadedView>) {
        let taken = {
            let r = self.replica.read_or_stop("the replica");
            r.view()
                .filter(|old| old.version() < new.version())
                .map(|old| {
                    let skipped = reconcile::uncovered(old.cut(), new.cut(), r.realtime_as_of());
                    (Arc::clone(old), skipped)
                })
        };
        let Some((old, skipped)) = taken else {
            return;
        };
        let new = Arc::clone(new);
        let checked = if skipped.is_empty() {
            // The buckets between the cuts (final once `skipped` is empty,
            // see `replica::swap`), a shard at a time and at normal
            // priority: it holds the replica's read lock.
            let (cuts, replica) = (
                (old.cut().clone(), new.cut().clone()),
                Arc::clone(&self.replica),
            );
            let between = tokio::task::spawn_blocking(move || {
                let mut between = Default::default();
                for shard in 0..SHARDS {
                    replica.read_or_stop("the replica").realtime_between_shard(
                        &cuts.0,
                        &cuts.1,
                        shard,
                        &mut between,
                    );
                }
                between
            })
            .await
            .expect("collecting counts does not panic");
            // A merge join over both views, which holds no lock: at
            // background priority.
            let checked = common::background::run("reconcile", move || {
                reconcile::check(old.batch_view(), new.batch_view(), between)
            })
            .await;
            match checked {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::warn!(%error, "Cannot reconcile the view swap.");
                    return;
                }
            }
        } else {
            reconcile::SwapCheck {
                skipped_partitions: skipped,
                ..reconcile::SwapCheck::new(old.version(), new.version())
            }
        };
        self.health.reconciliation.record(checked);
    }
}

/// Loads the locally kept view at start, so answers survive a restart while
/// the batch layer is down.
pub fn load_local(cache: &ViewStore) -> Result<Option<LoadedView>, ViewError> {
    Ok(cache
        .load_latest()?
        .map(|(manifest, view)| LoadedView::new(manifest, view)))
}

/// Polls the batch layer every `interval`, or at once when `wake` is
/// notified, until cancelled.
pub async fn run(puller: Puller, interval: Duration, wake: Arc<Notify>, token: CancellationToken) {
    loop {
        match puller.pull_once().await {
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "Cannot pull the batch view; answers continue from the current one.");
                puller.health.batch_failed(error.to_string());
            }
        }
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
    }
}
