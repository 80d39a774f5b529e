//! The batch instances sharing a store, as each announces itself there:
//! `instances/batch/<id>.json` ([`lambda_core::instance::BatchInstance`]),
//! rewritten every couple of seconds, removed on a clean stop. An entry not
//! rewritten for [`ALIVE_MS`] names an instance taken for dead (a killed
//! one cannot remove its entry). Batch instances forward recomputes to the
//! others they find here; serving layers list them in `/v1/status`.

use crate::store::{Store, StoreError};
use lambda_core::instance::BatchInstance;

const DIR: &str = "instances/batch";

/// An entry older than this names an instance taken for dead.
pub const ALIVE_MS: i64 = 10_000;

fn key(id: &str) -> String {
    format!("{DIR}/{id}.json")
}

/// Writes (or rewrites) an instance's entry.
pub async fn announce(store: &Store, instance: &BatchInstance) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(instance).expect("an instance serialises");
    store.put(&key(&instance.id), bytes).await
}

/// Removes an instance's entry (a clean stop).
pub async fn remove(store: &Store, id: &str) -> Result<(), StoreError> {
    store.delete(&key(id)).await
}

/// The instances whose entries were rewritten within [`ALIVE_MS`] of
/// `now_ms`, by id.
pub async fn alive(store: &Store, now_ms: i64) -> Result<Vec<BatchInstance>, StoreError> {
    let mut out = Vec::new();
    for k in store.list(DIR).await? {
        let Some(bytes) = store.get(&k).await? else {
            continue; // removed between the list and the read
        };
        match serde_json::from_slice::<BatchInstance>(&bytes) {
            Ok(i) if now_ms - i.updated_ms <= ALIVE_MS => out.push(i),
            Ok(_) => {}
            Err(error) => tracing::warn!(key = k, %error, "Ignoring a malformed instance entry."),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_instance_is_alive_until_its_entry_is_old_or_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Store::file_url(dir.path()).expect("url")).expect("store");
        let me = |id: &str, updated_ms| BatchInstance {
            id: id.to_owned(),
            url: "http://batch:7071".to_owned(),
            owned: vec![0, 2],
            ends: [(0, 10), (2, 7)].into_iter().collect(),
            updated_ms,
        };
        announce(&store, &me("a", 100_000)).await.expect("announce");
        announce(&store, &me("b", 100_000 - ALIVE_MS - 1))
            .await
            .expect("announce");
        assert_eq!(
            alive(&store, 100_000).await.expect("list"),
            vec![me("a", 100_000)]
        );
        remove(&store, "a").await.expect("remove");
        assert!(alive(&store, 100_000).await.expect("list").is_empty());
    }
}
