//! The batch instances sharing a store, as each announces itself there:
//! `instances/batch/<id>.json`, rewritten every couple of seconds with the
//! partitions it owns and its log's end for each, removed on a clean stop.
//! An instance not heard from for [`ALIVE_MS`] is taken for dead (a killed
//! one cannot remove its entry).
//!
//! Any instance can therefore list the others: `GET /status` shows them
//! (serving layers show them in turn), and `POST /recompute` reaches every
//! one of them.

use crate::master_log::MasterLog;
use common::shutdown::CancellationToken;
use common::store::{Store, StoreError};
use common::sync::LockOrStop;
use lambda_core::Partition;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DIR: &str = "instances/batch";

/// How often an instance rewrites its entry.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// An entry older than this names an instance taken for dead.
pub const ALIVE_MS: i64 = 10_000;

pub use lambda_core::instance::BatchInstance as Instance;

fn key(id: &str) -> String {
    format!("{DIR}/{id}.json")
}

/// The instances heard from within [`ALIVE_MS`] of `now_ms`, by id.
pub async fn alive(store: &Store, now_ms: i64) -> Result<Vec<Instance>, StoreError> {
    let mut out = Vec::new();
    for k in store.list(DIR).await? {
        let Some(bytes) = store.get(&k).await? else {
            continue; // removed between the list and the read
        };
        match serde_json::from_slice::<Instance>(&bytes) {
            Ok(i) if now_ms - i.updated_ms <= ALIVE_MS => out.push(i),
            Ok(_) => {}
            Err(error) => tracing::warn!(key = k, %error, "Ignoring a malformed instance entry."),
        }
    }
    Ok(out)
}

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
        let me = Instance {
            id: id.clone(),
            url: url.clone(),
            owned,
            ends,
            updated_ms: common::now_ms(),
        };
        let bytes = serde_json::to_vec(&me).expect("an instance serialises");
        if let Err(error) = store.put(&key(&id), bytes).await {
            tracing::warn!(%error, "Cannot announce this batch instance in the store; trying again.");
        }
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
    }
    if let Err(error) = store.delete(&key(&id)).await {
        tracing::warn!(%error, "Cannot remove this batch instance's entry from the store.");
    }
}
