//! A batch instance as it announces itself in the shared store, and as
//! the batch layer's `GET /status` and serving layers' `/v1/status` list
//! it.

use crate::cut::{Partition, Positions};
use serde::{Deserialize, Serialize};

/// One batch instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchInstance {
    /// Its id in the store (the writer id of its views).
    pub id: String,
    /// Where the other instances reach its HTTP server.
    pub url: String,
    /// The partitions it owns (empty until its consumer group assigned it
    /// some).
    pub owned: Vec<Partition>,
    /// Its master log's end for each partition it owns.
    pub ends: Positions,
    /// When it wrote this (ms since the epoch).
    pub updated_ms: i64,
}
