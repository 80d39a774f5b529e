//! The batch layer's HTTP server: publishes views for serving layers to pull.
//!
//! - `GET /views/latest`: the manifest of the newest view (404 before the first).
//! - `GET /views/{version}`: that view's file, verified by the manifest's CRC32C.
//! - `POST /recompute`: recompute now; answers with the resulting manifest
//!   (403 without an admin token configured, 401 without the right one).
//! - `GET /readyz`: 503 with the reason while a partition is held (a
//!   record in it cannot be read) or a durable write keeps failing.
//! - `GET /metrics`, `GET /healthz`.

use crate::master_log::MasterLog;
use crate::metrics::BatchMetrics;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::now_ms;
use common::sync::LockOrStop;
use common::views::ViewStore;
use lambda_core::lineage::RecomputeMode;
use lambda_core::view::Manifest;
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// A request for an on-demand recompute, answered with the manifest.
/// A recompute asked for over HTTP: in the mode given (`?mode=full`), or the
/// schedule's; answered with the manifest of the view it left newest.
pub struct RecomputeRequest {
    pub mode: Option<RecomputeMode>,
    pub reply: oneshot::Sender<Result<Manifest, String>>,
}

#[derive(Debug, Deserialize)]
struct RecomputeQuery {
    mode: Option<String>,
}

#[derive(Clone)]
pub struct BatchState {
    pub store: Arc<ViewStore>,
    pub log: Arc<Mutex<MasterLog>>,
    pub metrics: Arc<BatchMetrics>,
    pub recompute: mpsc::Sender<RecomputeRequest>,
    pub admin_token: Option<Arc<str>>,
    pub held: common::unreadable::HeldPartitions,
    /// Durable writes failing right now (readiness).
    pub stalls: common::retry::Stalls,
}

pub fn router(state: BatchState) -> Router {
    Router::new()
        .route("/views/latest", get(latest))
        .route("/views/{version}", get(view_file))
        .route("/recompute", post(recompute))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    common::server::json_error(status, message)
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "Batch HTTP request failed.");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

async fn latest(State(state): State<BatchState>) -> Response {
    let store = Arc::clone(&state.store);
    match tokio::task::spawn_blocking(move || store.latest()).await {
        Ok(Ok(Some(manifest))) => Json(manifest).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "no batch view yet"),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn view_file(State(state): State<BatchState>, Path(version): Path<String>) -> Response {
    let Ok(version) = version.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the version must be a whole number",
        );
    };
    let store = Arc::clone(&state.store);
    match tokio::task::spawn_blocking(move || store.read(version)).await {
        Ok(Ok(Some(bytes))) => (
            [(
                header::CONTENT_TYPE,
                "text/tab-separated-values; charset=utf-8",
            )],
            bytes,
        )
            .into_response(),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("batch view {version} is not kept"),
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn recompute(
    State(state): State<BatchState>,
    headers: HeaderMap,
    Query(query): Query<RecomputeQuery>,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(refusal) = common::auth::authorize_admin(state.admin_token.as_deref(), presented) {
        let status = StatusCode::from_u16(refusal.status()).expect("a valid status");
        return error(status, refusal.message());
    }
    let mode = match query.mode.as_deref().map(str::parse::<RecomputeMode>) {
        None => None,
        Some(Ok(mode)) => Some(mode),
        Some(Err(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (reply, rx) = oneshot::channel();
    if state
        .recompute
        .send(RecomputeRequest { mode, reply })
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the batch layer is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(manifest)) => Json(manifest).into_response(),
        Ok(Err(message)) => internal(message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the batch layer is shutting down",
        ),
    }
}

async fn metrics(State(state): State<BatchState>) -> Response {
    let (ends, sealed) = {
        let log = state.log.lock_or_stop("the batch status");
        (log.end_offsets(), log.sealed_ends())
    };
    common::server::prometheus(state.metrics.render(&ends, &sealed, now_ms()))
}

async fn healthz(State(state): State<BatchState>) -> Response {
    common::server::healthz(&state.stalls)
}

async fn readyz(State(state): State<BatchState>) -> Response {
    match state
        .held
        .not_ready_reason()
        .or_else(|| state.stalls.reason())
    {
        Some(reason) => common::server::json_error(StatusCode::SERVICE_UNAVAILABLE, reason),
        None => Json(json!({"status": "ready", "held": state.held.snapshot()})).into_response(),
    }
}
