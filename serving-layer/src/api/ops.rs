//! The operations routes: `/v1/status`, `/v1/admin/recompute`, `/healthz`,
//! `/readyz` and `/metrics`.

use super::error::{ApiError, ErrorBody};
use super::query::{freshness, now_ms, rfc3339};
use super::schema::{
    BatchInstanceStatus, BatchStatus, RealtimeStatus, RecomputeAnswer, RecomputeStatus,
    StatusAnswer, StatusOk, VisibilityStatus, WriterStatus,
};
use super::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use common::auth::AdminRefusal;
use lambda_core::lineage::RecomputeMode;
use std::sync::Arc;
use std::time::Duration;

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
    let recompute = replica
        .view()
        .map(|v| RecomputeStatus::of(&v.manifest.header.lineage));
    drop(replica);
    let h = f.health;
    let end = &h.ends.events;
    Json(StatusAnswer {
        ready,
        uptime_ms: h.uptime.as_millis() as u64,
        lag: f.as_of.behind(end),
        batch: BatchStatus {
            lag: match state.views {
                Some(_) => f.batch.cut.behind(end),
                None => 0,
            },
            view: f.batch,
            error: h.batch_error,
            recompute,
            instances: h
                .batch_instances
                .iter()
                .map(|i| BatchInstanceStatus {
                    id: i.id.clone(),
                    url: i.url.clone(),
                    owned: i.owned.clone(),
                    lag: i
                        .owned
                        .iter()
                        .map(|&p| (end.get(p) - i.ends.get(p)).max(0) as u64)
                        .sum(),
                    ends: i.ends.clone(),
                    last_seen_ms: (now_ms() - i.updated_ms).max(0) as u64,
                })
                .collect(),
        },
        realtime: RealtimeStatus {
            lag: f.realtime.as_of.behind(end),
            as_of: f.realtime.as_of,
            topic_lag: h.follower_positions.behind(&h.ends.realtime),
            topic_position: h.follower_positions,
            held_upserts: h.follower_held as u64,
            waiting_for_view: h.follower_waiting,
            writers: h
                .writers
                .iter()
                .map(|(writer, positions, since)| WriterStatus {
                    writer: format!("{writer:016x}"),
                    lag: positions
                        .iter()
                        .map(|(p, at)| (end.get(p) - at).max(0) as u64)
                        .sum(),
                    positions: positions.clone(),
                    last_seen_ms: since.as_millis() as u64,
                })
                .collect(),
            entries: entries as u64,
            stale: f.realtime.stale,
            error: h.kafka_error,
        },
        as_of: f.as_of,
        freshness_ms: f.freshness_ms,
        stale: f.stale,
        events_end: h.ends.events,
        dead_letters: h.ends.dead_letters,
        reconciliation: state.health.reconciliation.status(),
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

/// `?mode=` of `POST /v1/admin/recompute`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct RecomputeQuery {
    /// `full` (every event again, checked against the incremental chain) or
    /// `incremental`; default: the batch layer's schedule.
    mode: Option<String>,
}

/// Recomputes the batch view now and waits until this layer serves it.
#[utoipa::path(
    post,
    path = "/v1/admin/recompute",
    security(("bearer" = [])),
    params(RecomputeQuery),
    responses(
        (status = 200, description = "The new batch view", body = RecomputeAnswer),
        (status = 400, description = "An unknown mode", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured: the endpoint is disabled", body = ErrorBody),
        (status = 502, description = "The batch layer failed the recompute", body = ErrorBody),
        (status = 503, description = "No batch layer configured or reachable", body = ErrorBody),
    )
)]
pub async fn recompute(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RecomputeQuery>, QueryRejection>,
) -> Result<Json<RecomputeAnswer>, ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    common::auth::authorize_admin(state.admin_token.as_deref(), presented).map_err(|refusal| {
        match refusal {
            AdminRefusal::Disabled => ApiError::Forbidden(refusal.message().into()),
            AdminRefusal::Unauthorized => ApiError::Unauthorized,
        }
    })?;
    let token = state
        .admin_token
        .clone()
        .expect("authorized, so a token is set");
    let url = match (&state.batch_url, &state.views) {
        (Some(bases), _) => Arc::clone(bases),
        (None, Some(views)) => {
            let views = views.clone();
            tokio::task::spawn_blocking(move || views.recompute_targets())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map(Arc::new)
                .map_err(|e| ApiError::Unavailable(e.to_string()))?
        }
        (None, None) => {
            return Err(ApiError::Unavailable(
                "no batch layer configured (set LAMBDA_BATCH_URL)".into(),
            ))
        }
    };
    let bad_mode = || ApiError::BadRequest("mode must be `full` or `incremental`".into());
    let Query(query) = query.map_err(|_| bad_mode())?;
    let mode = query
        .mode
        .as_deref()
        .map(str::parse::<RecomputeMode>)
        .transpose()
        .map_err(|_| bad_mode())?;
    let manifest = super::forward_recompute(url, token, mode).await?;
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

/// Liveness: the process answers; `degraded`, with the reason, while a
/// durable write keeps failing.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = StatusOk)))]
pub async fn healthz(State(state): State<AppState>) -> Json<StatusOk> {
    let reason = state.health.stalls.reason();
    Json(StatusOk {
        status: if reason.is_some() { "degraded" } else { "ok" }.into(),
        reason,
    })
}

/// Readiness: a batch view or realtime counts are loaded, and no durable
/// write is failing.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, body = StatusOk),
        (status = 503, description = "Nothing loaded yet, or the replica's store cannot be written", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<StatusOk>, ApiError> {
    if let Some(reason) = state.health.stalls.reason() {
        return Err(ApiError::Unavailable(format!("not ready: {reason}")));
    }
    if state.replica.read_or_stop("the replica").is_ready() {
        Ok(Json(StatusOk {
            status: "ready".into(),
            reason: None,
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
            reconciliation: state.health.reconciliation.status(),
        }
    };
    let text = state
        .metrics
        .render(&facts, &state.health.snapshot(), now_ms());
    common::server::prometheus(text)
}
