//! The speed layer: exact, incremental counts of what the newest batch view
//! has not absorbed yet.
//!
//! It streams the same events as the batch layer, counts words per
//! (partition, bucket), checkpoints each micro-batch in sled together with the
//! offsets it came from, and publishes absolute-count upserts for serving
//! layers. When the batch layer publishes a view with a new cut, every bucket
//! wholly below it is deleted: the batch view has those events now.
//!
//! # Layout
//!
//! - [`stream`]: the consume → count → checkpoint → publish loop and expiry.
//! - the realtime store (counts and offsets in one atomic, durable batch) is
//!   the `lambda-realtime-store` crate, shared with the serving replica.
//! - [`cuts`]: following the batch layer's manifest.
//! - [`config`], [`metrics`]: flags and Prometheus counters.
//!
//! [`start`] wires them into the running role (`lambda speed`).

pub mod config;
pub mod cuts;
pub mod metrics;
pub mod stream;

use crate::config::SpeedArgs;
use crate::metrics::SpeedMetrics;
use crate::stream::{SpeedStatus, StreamConfig};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::config::ConfigError;
use common::dead_letter::DeadLetterSink;
use common::kafka::{ensure_layer_topics, KafkaSetupError};
use common::server::{json_error, prometheus};
use common::shutdown::{supervise, CancellationToken, FailureSlot};
use common::sync::LockOrStop;
use common::views::ViewSource;
use realtime_store::{RealtimeStore, StoreError, StoreOptions};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Error)]
pub enum SpeedError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("cannot create the dead-letter producer: {0}")]
    DeadLetter(#[source] rdkafka::error::KafkaError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the speed layer stopped: {0}")]
    Failed(String),
}

/// A running speed layer.
#[derive(Debug)]
pub struct RunningSpeed {
    pub http_addr: SocketAddr,
    handle: JoinHandle<()>,
    failure: FailureSlot,
}

impl RunningSpeed {
    /// Waits until the layer has stopped; an error says which component
    /// failed and why (the role then exits non-zero).
    pub async fn wait(self) -> Result<(), SpeedError> {
        let _ = self.handle.await;
        match self.failure.get() {
            Some(reason) => Err(SpeedError::Failed(reason.to_owned())),
            None => Ok(()),
        }
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<SpeedMetrics>,
    status: Arc<Mutex<SpeedStatus>>,
}

/// Starts the speed layer and runs it until `token` is cancelled. On
/// cancellation the current micro-batch is finished and checkpointed first.
pub async fn start(args: SpeedArgs, token: CancellationToken) -> Result<RunningSpeed, SpeedError> {
    args.validate()?;
    let store = RealtimeStore::open_with(
        &args.node.data_dir.join("realtime"),
        StoreOptions {
            compact_min_bytes: args.store.realtime_compact_bytes,
        },
    )?;
    let kafka = &args.kafka;
    ensure_layer_topics(kafka).await?;
    let status = Arc::new(Mutex::new(SpeedStatus::default()));
    let stalls = status.lock_or_stop("the speed status").stalls.clone();
    let dead_letters = DeadLetterSink::new(
        &kafka.connection(),
        &kafka.dead_letter_topic,
        "speed",
        stalls,
    )
    .map_err(SpeedError::DeadLetter)?;

    let (listener, http_addr) = common::server::bind(args.http_addr)
        .await
        .map_err(|source| SpeedError::Listen {
            addr: args.http_addr,
            source,
        })?;

    let metrics = Arc::new(SpeedMetrics::default());
    let config = StreamConfig {
        kafka: kafka.connection(),
        topic: kafka.topic.clone(),
        realtime_topic: kafka.realtime_topic.clone(),
        bucket_size: args.stream.bucket_size,
        max_event_bytes: args.stream.max_event_bytes,
        batch_url: ViewSource::from_flags(
            args.batch_bases()?.map(Arc::new),
            args.store_url.as_deref(),
            tokio::runtime::Handle::current(),
        )
        .map_err(|e| SpeedError::Failed(format!("batch views: {e}")))?,
        cut_poll_interval: args.cut_poll_interval,
        micro_batch_records: args.micro_batch_records,
        micro_batch_wait: args.micro_batch_wait,
        group: args.group.clone(),
        share_partitions: args.share_partitions,
        windows: args.stream.windows(),
    };

    let mut tasks = JoinSet::new();
    let failure = FailureSlot::default();
    {
        let (metrics, status, token) = (Arc::clone(&metrics), Arc::clone(&status), token.clone());
        let failure = failure.clone();
        tasks.spawn(async move {
            if let Err(error) =
                stream::run(config, store, dead_letters, metrics, status, token).await
            {
                tracing::error!(%error, "Speed layer stream failed.");
                failure.record(error);
            }
        });
    }
    tasks.spawn(common::server::serve(
        listener,
        router(HttpState { metrics, status }),
        token.clone(),
        "speed",
    ));
    tracing::info!(%http_addr, topic = %kafka.topic, "Speed layer running.");
    let grace = args.node.shutdown_grace;
    let slot = failure.clone();
    let handle = tokio::spawn(async move {
        supervise(tasks, token, grace, &slot).await;
        tracing::info!("Speed layer stopped.");
    });
    Ok(RunningSpeed {
        http_addr,
        handle,
        failure,
    })
}

fn router(state: HttpState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

async fn status(State(state): State<HttpState>) -> Response {
    let s = state.status.lock_or_stop("the speed status").clone();
    let ready = s.ready && s.held.is_empty();
    Json(json!({"positions": s.positions, "batch_cut": s.cut, "ready": ready, "held": s.held.snapshot()}))
        .into_response()
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let stalls = state.status.lock_or_stop("the speed status").stalls.clone();
    common::server::healthz(&stalls)
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let s = state.status.lock_or_stop("the speed status");
    match (
        s.held.not_ready_reason().or_else(|| s.stalls.reason()),
        s.ready,
    ) {
        (Some(reason), _) => json_error(StatusCode::SERVICE_UNAVAILABLE, reason),
        (None, true) => Json(json!({"status": "ready"})).into_response(),
        (None, false) => json_error(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let s = state.status.lock_or_stop("the speed status").clone();
    prometheus(state.metrics.render(&s.positions, &s.cut, &s.store))
}
