//! Announcing this batch instance in the shared store (see
//! `common::instances`), every couple of seconds, with the partitions it
//! owns and its log's end for each.

use crate::master_log::MasterLog;
use common::shutdown::CancellationToken;
use common::store::Store;
use common::sync::LockOrStop;
use lambda_core::instance::BatchInstance;
use lambda_core::Partition;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often an instance rewrites its entry.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// Announces this instance every [`ANNOUNCE_EVERY`] until `token` is
/// cancelled, then removes its entry. A store that fails is tried again at
/// the next round, loudly.
pub async fn announce(
    store: Store,
    log: Arc<Mutex<MasterLog>>,
    id: String,
    url: String,
    token: CancellationToken,
) {
    loop {
        let (owned, ends) = {
            let log = log.lock_or_stop("the master log");
            let owned: Vec<Partition> = log.owned().into_iter().flatten().copied().collect();
            (owned, log.owned_ends())
        };
        let me = BatchInstance {
            id: id.clone(),
            url: url.clone(),
            owned,
            ends,
            updated_ms: common::now_ms(),
        };
        if let Err(error) = common::instances::announce(&store, &me).await {
            tracing::warn!(%error, "Cannot announce this batch instance in the store; trying again.");
        }
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
    }
    if let Err(error) = common::instances::remove(&store, &id).await {
        tracing::warn!(%error, "Cannot remove this batch instance's entry from the store.");
    }
}
