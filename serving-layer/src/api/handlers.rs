//! The handlers and their JSON shapes. Each handler reads the replica under
//! its lock once, so one answer never mixes two states.

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::health::Snapshot;
use crate::replica::Replica;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::sync::ReadWriteOrStop;
use lambda_core::Cut;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use utoipa::{OpenApi, ToSchema};

/// A position per partition: `{"<partition>": <offset>}`.
type PositionSchema = BTreeMap<String, i64>;

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
}

#[derive(Debug, Deserialize)]
pub struct TopParams {
    k: Option<i64>,
}

pub const MAX_K: i64 = 1000;

/// What every answer says about freshness, read once per request.
struct Freshness {
    /// The health facts it was derived from.
    health: Snapshot,
    batch: BatchPart,
    realtime: RealtimePart,
    as_of: Cut,
    freshness_ms: u64,
    stale: Vec<String>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn freshness(state: &AppState, replica: &Replica) -> Freshness {
    let health = state.health.snapshot();
    let view = replica.view();
    let computed = view.map(|v| v.manifest.header.computed_at_ms);
    let mut stale = Vec::new();
    let batch_stale = state.batch_url.is_some() && health.batch_stale;
    if batch_stale {
        stale.push("batch".to_owned());
    }
    if health.realtime_stale {
        stale.push("realtime".to_owned());
    }
    Freshness {
        batch: BatchPart {
            count: None,
            version: view.map(|v| v.version()),
            cut: view.map(|v| v.cut().clone()).unwrap_or_default(),
            computed_at: computed.map(rfc3339),
            age_ms: computed.map(|t| (now_ms() - t).max(0) as u64),
            stale: batch_stale,
        },
        realtime: RealtimePart {
            count: None,
            as_of: replica.realtime_as_of().clone(),
            stale: health.realtime_stale,
        },
        as_of: replica.as_of(),
        freshness_ms: health.freshness.as_millis() as u64,
        stale,
        health,
    }
}

/// The longest word `/v1/words/{word}` looks up (characters). Longer words
/// are still counted, and listed by `/v1/top`.
pub const MAX_WORD_CHARS: usize = 600;

/// The merged count of one word.
#[utoipa::path(
    get,
    path = "/v1/words/{word}",
    params(("word" = String, Path,
        description = "One word: letters and digits only (`char::is_alphanumeric`), at most 600 characters; looked up lowercased",
        min_length = 1, max_length = 600)),
    responses(
        (status = 200, description = "The merged count and how fresh it is", body = WordAnswer),
        (status = 400, description = "Not UTF-8, or longer than 600 characters", body = ErrorBody),
        (status = 404, description = "Not a word (it contains a character that separates words), so there is no count", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    )
)]
pub async fn word(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<WordAnswer>, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if raw.chars().count() > MAX_WORD_CHARS {
        return Err(ApiError::BadRequest(format!(
            "a word is at most {MAX_WORD_CHARS} characters"
        )));
    }
    // Strict: the segment must be a word as it stands, not text that
    // contains one (`%20word` is not the word `word`).
    let word = raw
        .chars()
        .all(char::is_alphanumeric)
        .then(|| lambda_core::tokenizer::single_word(&raw))
        .flatten()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "`{}` is not a word (letters and digits only), so it has no count",
                raw.chars().take(100).collect::<String>()
            ))
        })?;
    let replica = state.replica.read_or_stop("the replica");
    let merged = replica.word(&word);
    let mut f = freshness(&state, &replica);
    drop(replica);
    f.batch.count = Some(merged.batch);
    f.realtime.count = Some(merged.realtime);
    Ok(Json(WordAnswer {
        word,
        count: merged.total(),
        batch: f.batch,
        realtime: f.realtime,
        as_of: f.as_of,
        freshness_ms: f.freshness_ms,
        stale: f.stale,
    }))
}

/// The exact merged top k.
#[utoipa::path(
    get,
    path = "/v1/top",
    params(("k" = Option<i64>, Query, description = "How many words, 1 to 1000 (default 10)", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "The k most frequent words", body = TopAnswer),
        (status = 400, description = "k is not a whole number from 1 to 1000", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    )
)]
pub async fn top(
    State(state): State<AppState>,
    query: Result<Query<TopParams>, QueryRejection>,
) -> Result<Json<TopAnswer>, ApiError> {
    let bad_k = || ApiError::BadRequest(format!("k must be a whole number from 1 to {MAX_K}"));
    let Query(params) = query.map_err(|_| bad_k())?;
    let k = params.k.unwrap_or(10);
    if !(1..=MAX_K).contains(&k) {
        return Err(bad_k());
    }
    let replica = state.replica.read_or_stop("the replica");
    let ranked = state.top_cache.get(&replica, MAX_K as usize);
    let f = freshness(&state, &replica);
    drop(replica);
    Ok(Json(TopAnswer {
        k: k as u32,
        words: ranked.iter().take(k as usize).cloned().collect(),
        batch: f.batch,
        realtime: f.realtime,
        as_of: f.as_of,
        freshness_ms: f.freshness_ms,
        stale: f.stale,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchStatus {
    #[serde(flatten)]
    pub view: BatchPart,
    /// Events in Kafka not in the batch view.
    pub lag: u64,
    /// The last error talking to the batch layer, if the last attempt failed.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RealtimeStatus {
    #[schema(value_type = PositionSchema)]
    pub as_of: Cut,
    /// Events in Kafka not yet covered by the realtime counts.
    pub lag: u64,
    /// The follower's position in the realtime topic.
    #[schema(value_type = PositionSchema)]
    pub topic_position: Cut,
    pub topic_lag: u64,
    /// Upserts received but waiting for their micro-batch's watermark.
    pub held_upserts: u64,
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
    pub events_end: Cut,
    /// Events in Kafka not yet covered by answers.
    pub lag: u64,
    pub batch: BatchStatus,
    pub realtime: RealtimeStatus,
    /// Records in the dead-letter topic.
    pub dead_letters: u64,
    /// How long events took to become visible in answers lately.
    pub visibility: VisibilityStatus,
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

/// Each layer's position, lag, and the batch view's version and age.
#[utoipa::path(
    get,
    path = "/v1/status",
    responses((status = 200, description = "Positions, lags and staleness", body = StatusAnswer))
)]
pub async fn status(State(state): State<AppState>) -> Json<StatusAnswer> {
    let replica = state.replica.read_or_stop("the replica");
    let f = freshness(&state, &replica);
    let (ready, entries) = (replica.is_ready(), replica.realtime_entries());
    drop(replica);
    let h = f.health;
    let end = &h.ends.events;
    Json(StatusAnswer {
        ready,
        uptime_ms: h.uptime.as_millis() as u64,
        lag: f.as_of.behind(end),
        batch: BatchStatus {
            lag: f.batch.cut.behind(end),
            view: f.batch,
            error: h.batch_error,
        },
        realtime: RealtimeStatus {
            lag: f.realtime.as_of.behind(end),
            as_of: f.realtime.as_of,
            topic_lag: h.follower_positions.behind(&h.ends.realtime),
            topic_position: h.follower_positions,
            held_upserts: h.follower_held as u64,
            entries: entries as u64,
            stale: f.realtime.stale,
            error: h.kafka_error,
        },
        as_of: f.as_of,
        freshness_ms: f.freshness_ms,
        stale: f.stale,
        events_end: h.ends.events,
        dead_letters: h.ends.dead_letters,
        visibility: {
            let v = state.health.recent_visibility();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            VisibilityStatus {
                samples: v.samples as u64,
                p50_ms: ms(v.p50),
                p99_ms: ms(v.p99),
                max_ms: ms(v.max),
            }
        },
    })
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

/// Recomputes the batch view now and waits until this layer serves it.
#[utoipa::path(
    post,
    path = "/v1/admin/recompute",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new batch view", body = RecomputeAnswer),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured: the endpoint is disabled", body = ErrorBody),
        (status = 502, description = "The batch layer failed the recompute", body = ErrorBody),
        (status = 503, description = "No batch layer configured or reachable", body = ErrorBody),
    )
)]
pub async fn recompute(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RecomputeAnswer>, ApiError> {
    let Some(token) = state.admin_token.clone() else {
        return Err(ApiError::Forbidden(
            "admin endpoints are disabled: start the serving layer with LAMBDA_ADMIN_TOKEN set"
                .into(),
        ));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !common::auth::bearer_matches(&token, presented) {
        return Err(ApiError::Unauthorized);
    }
    let Some(url) = state.batch_url.clone() else {
        return Err(ApiError::Unavailable(
            "no batch layer configured (set LAMBDA_BATCH_URL)".into(),
        ));
    };
    let manifest = super::forward_recompute(url, token).await?;
    state.pull_now.notify_one();
    let version = manifest.version;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let loaded = loop {
        let current = state
            .replica
            .read_or_stop("the replica")
            .view()
            .map(|v| v.version());
        if current.is_some_and(|v| v >= version) {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Json(RecomputeAnswer {
        version,
        computed_at: rfc3339(manifest.header.computed_at_ms),
        cut: manifest.header.cut,
        loaded,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusOk {
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = StatusOk)))]
pub async fn healthz() -> Json<StatusOk> {
    Json(StatusOk {
        status: "ok".into(),
    })
}

/// Readiness: a batch view or realtime counts are loaded.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, body = StatusOk),
        (status = 503, description = "Nothing loaded yet", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<StatusOk>, ApiError> {
    if state.replica.read_or_stop("the replica").is_ready() {
        Ok(Json(StatusOk {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::Unavailable(
            "not ready: no batch view or realtime counts loaded yet".into(),
        ))
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let facts = {
        let r = state.replica.read_or_stop("the replica");
        crate::metrics::ReplicaFacts {
            batch_version: r.view().map(|v| v.version()),
            batch_computed_at_ms: r.view().map(|v| v.manifest.header.computed_at_ms),
            as_of: r.as_of(),
            realtime_entries: r.realtime_entries(),
        }
    };
    let text = state
        .metrics
        .render(&facts, &state.health.snapshot(), now_ms());
    common::server::prometheus(text)
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lambda serving layer",
        description = "Exact word counts merged from a batch view and realtime counts."
    ),
    paths(word, top, status, recompute, healthz, readyz, metrics, openapi),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
