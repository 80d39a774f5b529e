//! Following the batch layer's cut: the newest view's manifest.

use common::views::ViewSource;
use lambda_core::window::Millis;
use lambda_core::{Cut, Partition};
use std::collections::BTreeMap;

/// What the speed layer takes from the newest batch view.
#[derive(Debug, Clone, Default)]
pub struct BatchCut {
    pub cut: Cut,
    /// Per partition, the newest timestamp that moved the watermark below
    /// the cut (empty for views from before windows).
    pub newest: BTreeMap<Partition, Millis>,
}

/// The newest batch view's cut, from any of the batch layer's instances or
/// the store. `Ok(None)` when the batch layer has no view yet; an error
/// when it cannot be reached or answers nonsense.
pub async fn fetch_batch_cut(source: ViewSource) -> Result<Option<BatchCut>, String> {
    tokio::task::spawn_blocking(move || {
        let latest = source.latest().map_err(|e| e.to_string())?;
        Ok(latest.map(|m| BatchCut {
            newest: m.header.windows.map(|w| w.newest).unwrap_or_default(),
            cut: m.header.cut,
        }))
    })
    .await
    .map_err(|e| e.to_string())?
}
