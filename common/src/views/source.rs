//! Where a speed or serving layer reads batch views: from any batch
//! instance over HTTP (`--batch-url`, one or several), or from the shared
//! store itself (`--store-url`), where batch instances publish them. Both
//! give the same manifests and files for a version.

use super::SharedViews;
use crate::http::{get, Bases};
use lambda_core::instance::BatchInstance;
use lambda_core::view::Manifest;
use std::sync::Arc;

/// A batch view source.
#[derive(Debug, Clone)]
pub enum ViewSource {
    /// Any of these batch instances.
    Batch(Arc<Bases>),
    /// The shared store.
    Store(Arc<SharedViews>),
}

/// Why a source could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// No batch instance answered (the reason names every URL tried).
    #[error("cannot reach the batch layer: {reason}")]
    Unreachable { reason: String },
    /// The source answered, or was read, but not with a view.
    #[error("{source_name}: {reason}")]
    Failed { source_name: String, reason: String },
}

impl ViewSource {
    /// The source the flags name: the store when `--store-url` is given,
    /// else the batch instances of `--batch-url`, else none. Blocking calls
    /// on the store run on `runtime`.
    pub fn from_flags(
        batch: Option<Arc<Bases>>,
        store_url: Option<&str>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Option<Self>, crate::store::StoreError> {
        Ok(match (store_url, batch) {
            (Some(url), _) => {
                let store = crate::store::Store::open(url)?;
                Some(Self::Store(Arc::new(SharedViews::open(store, runtime, 1))))
            }
            (None, Some(bases)) => Some(Self::Batch(bases)),
            (None, None) => None,
        })
    }

    /// What the source is, for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Batch(bases) => format!("the batch layer at {bases}"),
            Self::Store(views) => format!("the store at {}", views.store().url()),
        }
    }

    fn error(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Failed {
            source_name: self.name(),
            reason: reason.to_string(),
        }
    }

    /// `GET path` from any batch instance: the body, `None` on 404.
    fn fetch(&self, bases: &Bases, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let (_, response) =
            bases
                .request(|addr| get(addr, path))
                .map_err(|e| SourceError::Unreachable {
                    reason: e.to_string(),
                })?;
        match response.status {
            200 => Ok(Some(response.body)),
            404 => Ok(None),
            status => Err(self.error(format!("answered {status} for {path}"))),
        }
    }

    /// The newest view's manifest, `None` before the first. Blocking.
    pub fn latest(&self) -> Result<Option<Manifest>, SourceError> {
        match self {
            Self::Batch(bases) => self
                .fetch(bases, "/views/latest")?
                .map(|body| serde_json::from_slice(&body))
                .transpose()
                .map_err(|e| self.error(format!("malformed manifest: {e}"))),
            Self::Store(views) => views.latest().map_err(|e| self.error(e)),
        }
    }

    /// The file of a view version, `None` if it is not (or no longer)
    /// kept. Blocking.
    pub fn read(&self, version: u64) -> Result<Option<Vec<u8>>, SourceError> {
        match self {
            Self::Batch(bases) => self.fetch(bases, &format!("/views/{version}")),
            Self::Store(views) => views.read(version).map_err(|e| self.error(e)),
        }
    }

    /// Where recomputes go: the batch instances of `--batch-url`, or the
    /// live ones the store lists. Blocking.
    pub fn recompute_targets(&self) -> Result<Bases, SourceError> {
        match self {
            Self::Batch(bases) => Bases::parse(&bases.to_string()).map_err(|e| self.error(e)),
            Self::Store(_) => {
                let urls: Vec<String> = self.instances()?.into_iter().map(|i| i.url).collect();
                Bases::parse(&urls.join(","))
                    .map_err(|e| self.error(format!("no live batch instance to recompute: {e}")))
            }
        }
    }

    /// The live batch instances. Blocking.
    pub fn instances(&self) -> Result<Vec<BatchInstance>, SourceError> {
        match self {
            Self::Batch(bases) => {
                #[derive(serde::Deserialize)]
                struct Listed {
                    #[serde(default)]
                    instances: Vec<BatchInstance>,
                }
                let Some(body) = self.fetch(bases, "/status")? else {
                    return Ok(Vec::new());
                };
                serde_json::from_slice::<Listed>(&body)
                    .map(|l| l.instances)
                    .map_err(|e| self.error(format!("malformed status: {e}")))
            }
            Self::Store(views) => views
                .block_on_store(crate::instances::alive(views.store(), crate::now_ms()))
                .map_err(|e| self.error(e)),
        }
    }
}
