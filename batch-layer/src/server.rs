//! The batch layer's HTTP server: publishes views for serving layers to pull.
//!
//! - `GET /views/latest`: the manifest of the newest view (404 before the first).
//! - `GET /views/{version}`: that view's file, verified by the manifest's CRC32C.
//! - `POST /recompute`: recompute now; answers with the resulting manifest
//!   (403 without an admin token configured, 401 without the right one).
//! - `GET /readyz`: 503 with the reason while a partition is held (a
//!   record in it cannot be read) or a durable write keeps failing.
//! - `GET /status`: this instance (its id in the store), the partitions it
//!   owns with its master log's end for each, and the newest view.
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
use common::views::SharedViews;
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
    /// Set when another instance forwards the request: recompute here only.
    #[serde(default)]
    local: bool,
}

#[derive(Clone)]
pub struct BatchState {
    pub store: Arc<SharedViews>,
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
        .route("/status", get(status))
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
    // The other instances recompute their partitions at the same time.
    let forwarding = (!query.local).then(|| {
        let (state, mode) = (state.clone(), query.mode.clone());
        let authorization = presented.unwrap_or_default().to_owned();
        tokio::spawn(async move { forward_recompute(&state, authorization, mode).await })
    });
    let manifest = match rx.await {
        Ok(Ok(manifest)) => manifest,
        Ok(Err(message)) => return internal(message),
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the batch layer is shutting down",
            )
        }
    };
    let Some(forwarding) = forwarding else {
        return Json(manifest).into_response();
    };
    match forwarding.await.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(false) => Json(manifest).into_response(),
        // The newest view once every instance recomputed.
        Ok(true) => {
            let views = Arc::clone(&state.store);
            match tokio::task::spawn_blocking(move || views.latest()).await {
                Ok(Ok(Some(newest))) if newest.version > manifest.version => {
                    Json(newest).into_response()
                }
                Ok(Ok(_)) => Json(manifest).into_response(),
                Ok(Err(e)) => internal(e),
                Err(e) => internal(e),
            }
        }
        Err(reason) => error(StatusCode::BAD_GATEWAY, reason),
    }
}

async fn status(State(state): State<BatchState>) -> Response {
    let (owned, ends) = {
        let log = state.log.lock_or_stop("the batch status");
        (log.owned().cloned(), log.owned_ends())
    };
    let instances = match common::instances::alive(state.store.store(), now_ms()).await {
        Ok(instances) => instances,
        Err(e) => return internal(e),
    };
    Json(json!({
        "instance": state.store.writer(),
        "owned": owned,
        "ends": ends,
        "view_version": state.metrics.view_version.get(),
        "instances": instances,
    }))
    .into_response()
}

/// Asks every other live instance to recompute its partitions too (with
/// the caller's credentials), all at once; true if there were any. An
/// instance that does not recompute fails the request, naming it.
async fn forward_recompute(
    state: &BatchState,
    authorization: String,
    mode: Option<String>,
) -> Result<bool, String> {
    let others: Vec<lambda_core::instance::BatchInstance> =
        common::instances::alive(state.store.store(), now_ms())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|i| i.id != state.store.writer())
            .collect();
    if others.is_empty() {
        return Ok(false);
    }
    let path = match &mode {
        Some(mode) => format!("/recompute?local=true&mode={mode}"),
        None => "/recompute?local=true".to_owned(),
    };
    let ask = move |other: &lambda_core::instance::BatchInstance| -> Result<(), String> {
        let failed = |reason: String| {
            format!(
                "the batch instance {} at {} did not recompute: {reason}",
                other.id, other.url
            )
        };
        let addr = common::http::resolve(&other.url).map_err(|e| failed(e.to_string()))?;
        let response = common::http::http(
            addr,
            "POST",
            &path,
            &[("Authorization", &authorization)],
            b"",
        )
        .map_err(|e| failed(e.to_string()))?;
        if response.status != 200 {
            return Err(failed(format!(
                "{}: {}",
                response.status,
                response.text().chars().take(300).collect::<String>()
            )));
        }
        Ok(())
    };
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let asked: Vec<_> = others.iter().map(|o| scope.spawn(|| ask(o))).collect();
            asked
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a forward panicked".into()))
                })
                .collect::<Result<Vec<()>, String>>()
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(true)
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
