//! The serving layer: exact answers merged per query from a batch view and
//! realtime counts, over HTTP.
//!
//! It answers from local state only: a verified copy of the newest batch view
//! (pulled from the batch layer) and a replica of the speed layer's realtime
//! counts (followed from the realtime topic into sled). So it keeps answering
//! when either layer is down, and every answer says how fresh it is.
//!
//! # Layout
//!
//! - [`replica`]: the merged state, per-word merge and exact top-K; a view
//!   swap a shard of realtime counts at a time (`replica::swap`).
//! - [`gate`]: releases realtime upserts a whole checkpoint at a time.
//! - [`follow`]: the realtime-topic follower (into the realtime store, with
//!   its topic positions).
//! - [`views`]: pulling, verifying, keeping and swapping batch views.
//! - [`ends`], [`health`]: topic ends, freshness, which layer is stale.
//! - [`api`]: the axum router and limits, route groups, answer schemas;
//!   [`dashboard`]: `GET /`.
//! - [`config`], [`metrics`]: flags and Prometheus metrics.
//!
//! [`start`] wires them into the running role (`lambda serve`).

pub mod api;
pub mod config;
pub mod dashboard;
pub mod ends;
pub mod follow;
pub mod gate;
pub mod health;
pub mod metrics;
pub mod reconcile;
pub mod replica;
pub mod views;

use crate::api::{AppState, Limits};
use crate::config::ServeArgs;
use crate::health::Health;
use crate::metrics::ServingMetrics;
use crate::replica::Replica;
use common::config::ConfigError;
use common::kafka::{ensure_layer_topics, KafkaSetupError};
use common::shutdown::{supervise, CancellationToken, FailureSlot};
use common::sync::FairRwLock;
use common::views::{ViewSource, ViewStore};
use lambda_core::view::ViewError;
use realtime_store::{RealtimeStore, StoreError, StoreOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("the serving layer stopped: {0}")]
    Failed(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("batch views: {0}")]
    SharedStore(#[source] common::store::StoreError),
    #[error("local batch view copy: {0}")]
    View(#[from] ViewError),
    #[error(transparent)]
    Follow(#[from] follow::FollowError),
    #[error(transparent)]
    Kafka(Box<KafkaSetupError>),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the topic-ends thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("a startup task panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<KafkaSetupError> for ServeError {
    fn from(e: KafkaSetupError) -> Self {
        Self::Kafka(Box::new(e))
    }
}

/// A running serving layer.
#[derive(Debug)]
pub struct RunningServing {
    pub http_addr: SocketAddr,
    handle: JoinHandle<()>,
    failure: FailureSlot,
}

impl RunningServing {
    /// Waits until the layer has stopped; an error says which component
    /// failed and why (the role then exits non-zero).
    pub async fn wait(self) -> Result<(), ServeError> {
        let _ = self.handle.await;
        match self.failure.get() {
            Some(reason) => Err(ServeError::Failed(reason.to_owned())),
            None => Ok(()),
        }
    }
}

/// Starts the serving layer: loads the local view copy and realtime store,
/// then runs the view puller, the realtime follower, the topic-ends watcher
/// and the HTTP server until `token` is cancelled.
pub async fn start(
    args: ServeArgs,
    token: CancellationToken,
) -> Result<RunningServing, ServeError> {
    args.validate()?;
    let dir = args.node.data_dir.clone();
    let size = args.stream.bucket_size;
    let windows = args.stream.windows();
    let store_options = StoreOptions {
        compact_min_bytes: args.store.realtime_compact_bytes,
    };
    let (cache, store, replica) = tokio::task::spawn_blocking(move || {
        let cache = ViewStore::open(&dir, 2)?;
        let store = RealtimeStore::open_with(&dir.join("realtime"), store_options)?;
        let replica = FairRwLock::new(Replica::new(size).with_windows(windows));
        if let Some(view) = views::load_local(&cache)? {
            tracing::info!(
                version = view.version(),
                "Loaded the local batch view copy."
            );
            replica
                .write_or_stop("the replica")
                .swap_view(Arc::new(view));
        }
        let as_of = follow::restore(&store, &replica)?;
        tracing::info!(%as_of, "Restored realtime counts.");
        Ok::<_, ServeError>((Arc::new(cache), Arc::new(store), Arc::new(replica)))
    })
    .await??;

    let kafka = &args.kafka;
    ensure_layer_topics(kafka).await?;

    let (listener, http_addr) = common::server::bind(args.http_addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: args.http_addr,
            source,
        })?;
    let health = Arc::new(Health::new(args.stale_after));
    let metrics = Arc::new(ServingMetrics::default());
    let pull_now = Arc::new(Notify::new());

    let mut tasks = JoinSet::new();
    let batch = args.batch_bases()?.map(Arc::new);
    let source = ViewSource::from_flags(
        batch.clone(),
        args.store_url.as_deref(),
        tokio::runtime::Handle::current(),
    )
    .map_err(ServeError::SharedStore)?;
    if let Some(source) = &source {
        let puller = views::Puller {
            source: source.clone(),
            cache,
            replica: Arc::clone(&replica),
            store: Arc::clone(&store),
            health: Arc::clone(&health),
        };
        tasks.spawn(views::run(
            puller,
            args.view_poll_interval,
            Arc::clone(&pull_now),
            token.clone(),
        ));
    }
    let follower = follow::Follower {
        kafka: kafka.connection(),
        topic: kafka.realtime_topic.clone(),
        replica: Arc::clone(&replica),
        store,
        health: Arc::clone(&health),
        metrics: Arc::clone(&metrics),
        slice_counts: args.apply_slice_counts,
    };
    let failure = FailureSlot::default();
    {
        let (token, failure) = (token.clone(), failure.clone());
        tasks.spawn(async move {
            if let Err(error) = follower.run(token).await {
                // The task's end stops the whole layer (`supervise`): a
                // replica that no longer follows must not keep answering as
                // if it were current.
                tracing::error!(%error, "Realtime follower failed; the serving layer stops.");
                failure.record(error);
            }
        });
    }
    let watcher = ends::EndsWatcher {
        kafka: kafka.connection(),
        events_topic: kafka.topic.clone(),
        realtime_topic: kafka.realtime_topic.clone(),
        dead_letter_topic: kafka.dead_letter_topic.clone(),
        replica: Arc::clone(&replica),
        health: Arc::clone(&health),
        interval: Duration::from_millis(250),
    };
    {
        // A plain thread: librdkafka's metadata calls block, and a thread
        // stuck on an unreachable broker must not hold up shutdown.
        let token = token.clone();
        std::thread::Builder::new()
            .name("topic-ends".into())
            .spawn(move || watcher.run_blocking(token))
            .map_err(ServeError::Thread)?;
    }

    let state = AppState::new(
        replica,
        health,
        metrics,
        args.admin_token.as_deref().map(Arc::from),
        batch,
        source,
        pull_now,
        Limits {
            concurrency: Arc::new(Semaphore::new(args.max_concurrency)),
            timeout: args.request_timeout,
            admin_timeout: api::ADMIN_TIMEOUT,
            max_body_bytes: args.max_body_bytes,
        },
    );
    tasks.spawn(common::server::serve(
        listener,
        api::router(state),
        token.clone(),
        "serving",
    ));
    tracing::info!(%http_addr, "Serving layer running.");
    let grace = args.node.shutdown_grace;
    let slot = failure.clone();
    let handle = tokio::spawn(async move {
        supervise(tasks, token, grace, &slot).await;
        tracing::info!("Serving layer stopped.");
    });
    Ok(RunningServing {
        http_addr,
        handle,
        failure,
    })
}
