//! The HTTP API (axum + tower).
//!
//! [`router`] builds the whole app from an [`AppState`], so tests call it with
//! `oneshot` and no socket. Around every route, outermost first:
//!
//! 1. `track`: counts the request and its latency under its route template;
//! 2. `limit_request`: a request target over [`MAX_URI_BYTES`] is refused
//!    (414), and a declared body over `--max-body-bytes` (413), before
//!    anything reads them;
//! 3. load shedding over **one semaphore shared by every route**: a tower
//!    concurrency limit added per route would be one limit per route (and
//!    axum clones services), not a global one; saturated means 503 at once
//!    rather than a queue that grows;
//! 4. a request timeout (503).
//!
//! Every error, including extractor rejections, unknown routes and wrong
//! methods, answers with the same JSON body ([`error::ErrorBody`]).
//!
//! # Layout
//!
//! - this file: the router, its shared state and the layers around routes;
//! - [`query`]: `/v1/words/{word}` and `/v1/top`, and freshness;
//! - [`ops`]: `/v1/status`, `/v1/admin/recompute`, `/healthz`, `/readyz`,
//!   `/metrics`;
//! - [`schema`]: the JSON shapes of the answers;
//! - [`error`]: errors and their JSON body; [`openapi`]: the document.

pub mod error;
pub mod openapi;
pub mod ops;
pub mod query;
pub mod schema;

use crate::health::Health;
use crate::metrics::ServingMetrics;
use crate::replica::Replica;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Router};
use common::http::Bases;
use common::sync::FairRwLock;
use common::sync::LockOrStop;
use common::views::ViewSource;
use error::ApiError;
use lambda_core::view::Manifest;
use lambda_core::window::Range;
use schema::RankedWord;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests in flight at once, over all routes.
    pub concurrency: Arc<Semaphore>,
    /// The longest a query (any route but the admin recompute) may take.
    pub timeout: Duration,
    /// The longest `POST /v1/admin/recompute` may take: a recompute takes
    /// as long as the history it recounts (seconds to minutes, at
    /// background priority while the layers are busy), not a query's time
    /// ([`ADMIN_TIMEOUT`] in the server).
    pub admin_timeout: Duration,
    pub max_body_bytes: usize,
}

/// [`Limits::admin_timeout`] in the server: past the forwarding client's
/// 60 s wait for the batch layer's answer and the 5 s wait for the new view.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub replica: Arc<FairRwLock<Replica>>,
    pub health: Arc<Health>,
    pub metrics: Arc<ServingMetrics>,
    pub admin_token: Option<Arc<str>>,
    /// `--batch-url`: where recomputes are forwarded (any instance takes
    /// them), if given.
    pub batch_url: Option<Arc<Bases>>,
    /// Where batch views come from, if there is a batch layer.
    pub views: Option<ViewSource>,
    /// Wakes the view puller (after a forwarded recompute).
    pub pull_now: Arc<Notify>,
    pub limits: Limits,
    top_cache: TopCache,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        replica: Arc<FairRwLock<Replica>>,
        health: Arc<Health>,
        metrics: Arc<ServingMetrics>,
        admin_token: Option<Arc<str>>,
        batch_url: Option<Arc<Bases>>,
        views: Option<ViewSource>,
        pull_now: Arc<Notify>,
        limits: Limits,
    ) -> Self {
        Self(Arc::new(Shared {
            replica,
            health,
            metrics,
            admin_token,
            batch_url,
            views,
            pull_now,
            limits,
            top_cache: TopCache::default(),
        }))
    }
}

/// The merged top-K of one replica generation, per range: `/v1/top`
/// computes it only when the replica changed or a larger k is asked, and
/// answers every smaller k from it (the order is total, so the first k of a
/// top-K' are the top-K). The few most recently asked ranges are kept.
#[derive(Default)]
struct TopCache(Mutex<Vec<TopEntry>>);

struct TopEntry {
    generation: u64,
    range: Option<Range>,
    /// The k it was computed for (it holds fewer words only if there are
    /// no more).
    k: usize,
    top: Arc<Vec<RankedWord>>,
}

/// How many ranges (all time included) the cache keeps answers for.
const TOP_CACHE_RANGES: usize = 8;

/// The smallest k computed: the default, so the first request of a
/// generation serves the usual ones.
const TOP_CACHE_MIN_K: usize = 10;

impl TopCache {
    fn get(&self, replica: &Replica, range: Option<Range>, k: usize) -> Arc<Vec<RankedWord>> {
        let generation = replica.generation();
        let mut entries = self.0.lock_or_stop("the top-K cache");
        entries.retain(|e| e.generation == generation);
        let covers = |e: &TopEntry| e.range == range && (e.k >= k || e.top.len() < e.k);
        if let Some(e) = entries.iter().find(|e| covers(e)) {
            return Arc::clone(&e.top);
        }
        let k = k.max(TOP_CACHE_MIN_K);
        let ranked = match range {
            None => replica.top(k),
            Some(range) => replica.top_in(range, k),
        };
        let top: Arc<Vec<RankedWord>> = Arc::new(
            ranked
                .into_iter()
                .map(|(word, count)| RankedWord { word, count })
                .collect(),
        );
        entries.retain(|e| e.range != range);
        if entries.len() >= TOP_CACHE_RANGES {
            entries.remove(0);
        }
        entries.push(TopEntry {
            generation,
            range,
            k,
            top: Arc::clone(&top),
        });
        top
    }
}

pub fn router(state: AppState) -> Router {
    // The same shedding and concurrency for every route; the admin
    // recompute has a timeout of its own.
    let limits = |timeout: Duration| {
        let shed_metrics = Arc::clone(&state.metrics);
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |error: BoxError| {
                let metrics = Arc::clone(&shed_metrics);
                async move { overloaded(&metrics, error) }
            }))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(Arc::clone(
                &state.limits.concurrency,
            )))
            .timeout(timeout)
    };
    let admin = post(ops::recompute).layer(limits(state.limits.admin_timeout));
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/v1/words/{word}", get(query::word))
        .route("/v1/words/{word}/series", get(query::series))
        .route("/v1/top", get(query::top))
        .route("/v1/status", get(ops::status))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(|| async { ApiError::NotFound("no such route (see /openapi.json)".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(limits(state.limits.timeout))
        // Added after the queries' limits, with its own (see `Limits`).
        .route("/v1/admin/recompute", admin)
        .layer(middleware::from_fn_with_state(state.clone(), limit_request))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

fn overloaded(metrics: &ServingMetrics, error: BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        metrics.shed.inc();
        ApiError::Unavailable("overloaded: too many requests in flight, retry shortly".into())
            .into_response()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        metrics.timeouts.inc();
        ApiError::Unavailable("the request timed out".into()).into_response()
    } else {
        ApiError::Internal(error.to_string()).into_response()
    }
}

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // `observe` maps a template it does not know to "unmatched".
    let route = request.extensions().get::<MatchedPath>().cloned();
    state.metrics.arrivals.inc();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The longest request target (path and query) accepted, as most HTTP
/// servers' defaults: a word longer than this cannot be looked up.
pub const MAX_URI_BYTES: usize = 8 << 10;

async fn limit_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::UriTooLong(MAX_URI_BYTES).into_response();
    }
    let max = state.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::PayloadTooLarge(max).into_response();
    }
    next.run(request).await
}

/// Forwards a recompute to the batch layer with the admin token.
async fn forward_recompute(
    bases: Arc<Bases>,
    token: Arc<str>,
    mode: Option<lambda_core::lineage::RecomputeMode>,
) -> Result<Manifest, ApiError> {
    tokio::task::spawn_blocking(move || {
        let auth = format!("Bearer {token}");
        let path = match mode {
            Some(mode) => format!("/recompute?mode={mode}"),
            None => "/recompute".to_owned(),
        };
        let (_, response) = bases
            .request(|addr| {
                common::http::http(addr, "POST", &path, &[("Authorization", &auth)], b"")
            })
            .map_err(|e| ApiError::Unavailable(format!("batch layer unreachable: {e}")))?;
        if response.status != 200 {
            return Err(ApiError::BadGateway(format!(
                "the batch layer answered {}: {}",
                response.status,
                response.text().chars().take(300).collect::<String>()
            )));
        }
        serde_json::from_slice::<Manifest>(&response.body).map_err(|e| {
            ApiError::BadGateway(format!("malformed manifest from the batch layer: {e}"))
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}
