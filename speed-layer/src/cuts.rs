//! Following the batch layer's cut: the manifest at `GET /views/latest`.

use common::http::{get, Bases};
use lambda_core::view::Manifest;
use lambda_core::window::Millis;
use lambda_core::{Cut, Partition};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the speed layer takes from the newest batch view.
#[derive(Debug, Clone, Default)]
pub struct BatchCut {
    pub cut: Cut,
    /// Per partition, the newest timestamp that moved the watermark below
    /// the cut (empty for views from before windows).
    pub newest: BTreeMap<Partition, Millis>,
}

/// The newest batch view's cut, from any of the batch layer's instances.
/// `Ok(None)` when the batch layer has no view yet (404); an error when it
/// cannot be reached or answers nonsense.
pub async fn fetch_batch_cut(batch: Arc<Bases>) -> Result<Option<BatchCut>, String> {
    tokio::task::spawn_blocking(move || {
        let (url, response) = batch
            .request(|addr| get(addr, "/views/latest"))
            .map_err(|e| format!("cannot reach the batch layer: {e}"))?;
        match response.status {
            200 => {
                let m: Manifest = serde_json::from_slice(&response.body)
                    .map_err(|e| format!("malformed manifest from {url}: {e}"))?;
                Ok(Some(BatchCut {
                    newest: m.header.windows.map(|w| w.newest).unwrap_or_default(),
                    cut: m.header.cut,
                }))
            }
            404 => Ok(None),
            status => Err(format!("the batch layer at {url} answered {status}")),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}
