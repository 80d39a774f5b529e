//! The JSON shapes of the API's answers, with their OpenAPI schemas.

use crate::reconcile::ReconciliationStatus;
use lambda_core::{Cut, Positions};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A position per partition: `{"<partition>": <offset>}`.
pub(crate) type PositionSchema = BTreeMap<String, i64>;

/// The batch half of an answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPart {
    /// This word's count in the batch view (word answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The batch view's version; null before the first view.
    pub version: Option<u64>,
    /// The view counts exactly the events below this position.
    #[schema(value_type = PositionSchema)]
    pub cut: Cut,
    /// When the view was computed (RFC 3339).
    pub computed_at: Option<String>,
    pub age_ms: Option<u64>,
    /// True when the batch layer has not answered lately: the view may be
    /// older than the newest one.
    pub stale: bool,
}

/// The realtime half of an answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RealtimePart {
    /// This word's count in realtime buckets at or above the cut (word
    /// answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The speed layer's checkpoint the realtime counts are exact at.
    #[schema(value_type = PositionSchema)]
    pub as_of: Cut,
    /// True when answers lag Kafka by more than the staleness limit.
    pub stale: bool,
}

/// `GET /v1/words/{word}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WordAnswer {
    /// The word as normalised by the tokenizer.
    pub word: String,
    /// batch.count + realtime.count: the occurrences in exactly the events
    /// below `as_of`.
    pub count: u64,
    pub batch: BatchPart,
    pub realtime: RealtimePart,
    /// The position this answer is exact at, per events partition.
    #[schema(value_type = PositionSchema)]
    pub as_of: Cut,
    /// Milliseconds since answers last covered every event in Kafka.
    pub freshness_ms: u64,
    /// The layers this answer is stale for (`batch`, `realtime`).
    pub stale: Vec<String>,
    /// With `from`/`to`: the event-time range counted (then `count` is the
    /// count over it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeInfo>,
}

/// The event-time range a ranged answer covers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RangeInfo {
    /// The effective start (RFC 3339): `from` rounded down to a window
    /// boundary, and not before the retention's horizon.
    pub from: String,
    /// The effective end, exclusive: `to` rounded down to a window boundary.
    pub to: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub window_ms: u64,
    /// Whether every partition's event-time watermark (its newest timestamp
    /// minus the allowed lateness) has passed `to`: no event of the range is
    /// expected any more. Events that still come are counted, as late ones.
    pub complete: bool,
    /// How many of the range's events arrived after their window was
    /// complete (all of them are counted).
    pub late_events: u64,
}

/// One window of a series.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesPoint {
    /// The window's start (RFC 3339).
    pub start: String,
    pub start_ms: i64,
    pub count: u64,
}

/// `GET /v1/words/{word}/series`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesAnswer {
    pub word: String,
    pub range: RangeInfo,
    /// The word's count per window of the range, windows without it left
    /// out, oldest first.
    pub windows: Vec<SeriesPoint>,
    #[schema(value_type = PositionSchema)]
    pub as_of: Cut,
    pub freshness_ms: u64,
    pub stale: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RankedWord {
    pub word: String,
    pub count: u64,
}

/// `GET /v1/top`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopAnswer {
    pub k: u32,
    /// The exact merged top k, count descending then word ascending.
    pub words: Vec<RankedWord>,
    pub batch: BatchPart,
    pub realtime: RealtimePart,
    #[schema(value_type = PositionSchema)]
    pub as_of: Cut,
    pub freshness_ms: u64,
    pub stale: Vec<String>,
    /// With `from`/`to`: the event-time range ranked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchStatus {
    #[serde(flatten)]
    pub view: BatchPart,
    /// Events in Kafka not in the batch view (0 without a batch layer, as
    /// in the Kappa architecture: nothing is waiting for one).
    pub lag: u64,
    /// The last error talking to the batch layer, if the last attempt failed.
    pub error: Option<String>,
    /// How the view served was computed; null before the first view.
    pub recompute: Option<RecomputeStatus>,
    /// The batch instances sharing the store, as the batch layer lists
    /// them: one normally, several when they share the partitions.
    pub instances: Vec<BatchInstanceStatus>,
}

/// A batch instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchInstanceStatus {
    /// Its id (names its parts of the views in the store).
    pub id: String,
    pub url: String,
    /// The partitions it owns.
    pub owned: Vec<i32>,
    /// Its master log's end per partition it owns.
    #[schema(value_type = PositionSchema)]
    pub ends: Positions,
    /// Events of its partitions not in its master log yet.
    pub lag: u64,
    /// Since it last announced itself.
    pub last_seen_ms: u64,
}

/// How a batch view was computed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecomputeStatus {
    /// `full` (every event below the cut) or `incremental` (the previous
    /// view plus the events since its cut).
    pub mode: String,
    /// The view an incremental recompute added to.
    pub base_version: Option<u64>,
    /// When the newest full recompute of the view's chain ran (RFC 3339).
    pub last_full_at: Option<String>,
    /// For a full view: its comparison with the incremental chain at the
    /// same cut (a difference is an error; the full view wins).
    pub check: Option<FullCheckStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FullCheckStatus {
    /// The incremental chain's view, extended to the full view's cut.
    pub chain_version: u64,
    pub agreed: bool,
    pub differing_words: u64,
    /// A few differing words, `word: full N, incremental M`.
    pub examples: Vec<String>,
}

impl RecomputeStatus {
    pub fn of(lineage: &lambda_core::lineage::Lineage) -> Self {
        Self {
            mode: lineage.mode.to_string(),
            base_version: lineage.base_version,
            last_full_at: (lineage.last_full_ms > 0)
                .then(|| super::query::rfc3339(lineage.last_full_ms)),
            check: lineage.check.as_ref().map(|c| FullCheckStatus {
                chain_version: c.chain_version,
                agreed: c.agreed,
                differing_words: c.differing_words,
                examples: c.examples.clone(),
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RealtimeStatus {
    #[schema(value_type = PositionSchema)]
    pub as_of: Cut,
    /// Events in Kafka not yet covered by the realtime counts.
    pub lag: u64,
    /// The follower's position in the realtime topic.
    #[schema(value_type = PositionSchema)]
    pub topic_position: Positions,
    pub topic_lag: u64,
    /// Upserts received but waiting for their micro-batch's watermark.
    pub held_upserts: u64,
    /// Per events partition where the speed layer started past its
    /// checkpoint (at a batch cut) beyond this replica's batch view: its
    /// counts wait until a view whose cut reaches there is served, and
    /// answers stay exact at `as_of` meanwhile. Empty normally.
    #[schema(value_type = PositionSchema)]
    pub waiting_for_view: Cut,
    /// The speed layers whose watermarks were read in the last minute: one
    /// normally, several when they share the partitions.
    pub writers: Vec<WriterStatus>,
    /// Realtime (word, bucket) counts held.
    pub entries: u64,
    pub stale: bool,
    /// The last error talking to Kafka, if the last attempt failed.
    pub error: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusAnswer {
    pub ready: bool,
    pub uptime_ms: u64,
    /// Where answers are exact at, per events partition.
    #[schema(value_type = PositionSchema)]
    pub as_of: Cut,
    pub freshness_ms: u64,
    pub stale: Vec<String>,
    /// End offsets of the events topic.
    #[schema(value_type = PositionSchema)]
    pub events_end: Positions,
    /// Events in Kafka not yet covered by answers.
    pub lag: u64,
    pub batch: BatchStatus,
    pub realtime: RealtimeStatus,
    /// Records in the dead-letter topic.
    pub dead_letters: u64,
    /// How long events took to become visible in answers lately.
    pub visibility: VisibilityStatus,
    /// Every batch view swap checked against the realtime counts between
    /// the two cuts: the batch and speed layers agree while `mismatches`
    /// is 0.
    pub reconciliation: ReconciliationStatus,
}

/// Produce-to-visible latency over the last minute, as this serving layer
/// observed it: from each release's oldest event's record timestamp (the
/// producer's clock) to the moment its count was in answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct VisibilityStatus {
    /// Releases measured (each checkpointed micro-batch or several).
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One speed layer writing the realtime topic, as its watermarks tell.
#[derive(Debug, Serialize, ToSchema)]
pub struct WriterStatus {
    /// Its writer id (16 hex digits; kept in its data directory).
    pub writer: String,
    /// The events partitions its latest watermark named (the ones it owns),
    /// each with the position its counts are exact at.
    #[schema(value_type = PositionSchema)]
    pub positions: Positions,
    /// Events in Kafka on those partitions it has not counted yet.
    pub lag: u64,
    /// Since its latest watermark was read.
    pub last_seen_ms: u64,
}

/// `POST /v1/admin/recompute`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecomputeAnswer {
    /// The batch view the recompute produced.
    pub version: u64,
    #[schema(value_type = PositionSchema)]
    pub cut: Cut,
    pub computed_at: String,
    /// Whether this serving layer already answers from it.
    pub loaded: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusOk {
    /// `ok` or `degraded` (liveness), `ready` (readiness).
    pub status: String,
    /// Why the role is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
