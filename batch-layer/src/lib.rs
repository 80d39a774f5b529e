//! The batch layer: the source of truth.
//!
//! It keeps every event that ever arrived in an immutable master log and
//! recomputes word-count views from it — incrementally, and from scratch at
//! least daily — so a bug in a view is fixed by recomputing. It must never
//! lose or duplicate an event and must survive a crash at any point.
//!
//! # Layout
//!
//! - [`master_log`]: per-partition segment files of CRC-checked records;
//!   recovery truncates a torn tail and refuses mid-log corruption.
//! - [`ingest`]: the `lambda-batch` consumer; exactly-once appends, resuming
//!   from the log's own end.
//! - [`mapreduce`]: map → shuffle → reduce → sort on rayon, over any splits;
//!   [`word_table`] is its map-side combiner table.
//! - [`recompute`]: chooses the bucket-aligned cut and runs the job over the
//!   master log: in full, or over the new segments only, added to the
//!   previous view (incremental); a full one checks the incremental chain.
//! - views: every partition's part and the view they compose, in the
//!   shared store (`common::views::shared`, `lambda_core::compose`),
//!   published under versions that batch instances claim one at a time.
//! - [`server`]: publishes views over HTTP for serving layers to pull.
//! - [`instances`]: this instance announcing itself in the shared store
//!   (`common::instances`: status, recomputes that reach every instance).
//! - [`config`], [`metrics`]: flags and Prometheus counters.
//!
//! [`start`] wires them into the running role (`lambda batch`).

pub mod config;
pub mod ingest;
pub mod instances;
pub mod mapreduce;
pub mod master_log;
pub mod metrics;
pub mod recompute;
pub mod server;

pub mod word_table;

use crate::config::BatchArgs;
use crate::mapreduce::Engine;
use crate::master_log::{LogError, MasterLog};
use crate::metrics::BatchMetrics;
use crate::recompute::{recompute, Outcome};
use crate::server::{BatchState, RecomputeRequest};
use common::background::BackgroundFailure;
use common::config::ConfigError;
use common::dead_letter::DeadLetterSink;
use common::kafka::{ensure_layer_topics, KafkaSetupError};
use common::retry::Stalls;
use common::shutdown::{supervise, CancellationToken, FailureSlot};
use common::sync::LockOrStop;
use common::telemetry::events::RecomputeFailed;
use common::unreadable::HeldPartitions;
use common::views::SharedViews;
use lambda_core::lineage::RecomputeMode;
use lambda_core::view::{Manifest, ViewError};
use lambda_core::window::WindowSettings;
use lambda_core::BucketSize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("the batch layer stopped: {0}")]
    Failed(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] common::store::StoreError),
    #[error(transparent)]
    View(#[from] ViewError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("cannot create the dead-letter producer: {0}")]
    DeadLetter(#[source] rdkafka::error::KafkaError),
    #[error("cannot start {threads} MapReduce threads: {source}")]
    Threads {
        threads: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("a startup task panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running batch layer.
#[derive(Debug)]
pub struct RunningBatch {
    /// Where its HTTP server listens (useful with port 0).
    pub http_addr: SocketAddr,
    handle: JoinHandle<()>,
    failure: FailureSlot,
}

impl RunningBatch {
    /// Waits until the layer has stopped (after its token is cancelled, or a
    /// component failed); an error says which component failed and why (the
    /// role then exits non-zero).
    pub async fn wait(self) -> Result<(), BatchError> {
        let _ = self.handle.await;
        match self.failure.get() {
            Some(reason) => Err(BatchError::Failed(reason.to_owned())),
            None => Ok(()),
        }
    }
}

/// Starts the batch layer: recovers the master log, creates the topics if
/// needed, and runs ingestion, periodic recompute and the HTTP server until
/// `token` is cancelled.
pub async fn start(args: BatchArgs, token: CancellationToken) -> Result<RunningBatch, BatchError> {
    args.validate()?;
    let data_dir = args.node.data_dir.clone();
    let options = args.log_options();
    let mut log =
        tokio::task::spawn_blocking(move || MasterLog::open(&data_dir, options)).await??;
    let url = args.store_url()?;
    let shared = common::store::Store::open(&url)?;
    let sealed = master_log::chunks::list(&shared).await?;
    tracing::info!(
        store = url,
        partitions = sealed.len(),
        "Sealed chunks listed."
    );
    let runtime = tokio::runtime::Handle::current();
    log.attach_store(shared.clone(), runtime.clone(), args.chunk_offsets, sealed)?;
    tracing::info!(ends = %log.end_offsets(), "Master log recovered.");
    let log = Arc::new(Mutex::new(log));
    let store = Arc::new(SharedViews::open(shared.clone(), runtime, args.keep_views));
    let engine =
        Arc::new(
            Engine::background(args.threads).map_err(|source| BatchError::Threads {
                threads: args.threads,
                source,
            })?,
        );

    let kafka = &args.kafka;
    ensure_layer_topics(kafka).await?;
    let stalls = Stalls::default();
    let dead_letters = DeadLetterSink::new(
        &kafka.connection(),
        &kafka.dead_letter_topic,
        "batch",
        stalls.clone(),
    )
    .map_err(BatchError::DeadLetter)?;

    let metrics = Arc::new(BatchMetrics::default());
    let views = Arc::clone(&store);
    if let Some(m) = tokio::task::spawn_blocking(move || views.latest()).await?? {
        metrics.view_version.set(m.version as i64);
        metrics.view_computed_at_ms.set(m.header.computed_at_ms);
    }

    let (listener, http_addr) = common::server::bind(args.http_addr)
        .await
        .map_err(|source| BatchError::Listen {
            addr: args.http_addr,
            source,
        })?;

    let (recompute_tx, recompute_rx) = mpsc::channel::<RecomputeRequest>(16);
    let state = BatchState {
        store: Arc::clone(&store),
        log: Arc::clone(&log),
        metrics: Arc::clone(&metrics),
        recompute: recompute_tx,
        admin_token: args.admin_token.as_deref().map(Arc::from),
        held: HeldPartitions::default(),
        stalls: stalls.clone(),
    };

    let mut tasks = JoinSet::new();
    let (shared_for_instances, log_for_instances) = (shared.clone(), Arc::clone(&log));
    let instance_id = store.writer().to_owned();
    let ingest_config = ingest::IngestConfig {
        kafka: kafka.connection(),
        topic: kafka.topic.clone(),
        max_event_bytes: args.stream.max_event_bytes,
        batch_records: 10_000,
        batch_wait: Duration::from_millis(20),
        windows: args.stream.windows(),
        store: Some(shared),
        share_partitions: args.share_partitions,
    };
    let failure = FailureSlot::default();
    {
        let (log, metrics, token) = (Arc::clone(&log), Arc::clone(&metrics), token.clone());
        let (failure, held) = (failure.clone(), state.held.clone());
        tasks.spawn(async move {
            if let Err(error) = ingest::run(
                ingest_config,
                log,
                dead_letters,
                metrics,
                held,
                stalls,
                token,
            )
            .await
            {
                tracing::error!(%error, "Ingestion failed.");
                failure.record(error);
            }
        });
    }
    {
        let token = token.clone();
        let schedule = Schedule {
            bucket_size: args.stream.bucket_size,
            windows: args.stream.windows(),
            interval: args.recompute_interval,
            mode: args.recompute_mode,
            full_every: (!args.full_recompute_every.is_zero()).then_some(args.full_recompute_every),
            fault_pause: args.fault_recompute_pause,
        };
        tasks.spawn(recompute_loop(
            log,
            store,
            engine,
            metrics,
            schedule,
            recompute_rx,
            token,
        ));
    }
    tasks.spawn(instances::announce(
        shared_for_instances,
        Arc::clone(&log_for_instances),
        instance_id,
        args.advertised_url(http_addr),
        token.clone(),
    ));
    tasks.spawn(common::server::serve(
        listener,
        server::router(state),
        token.clone(),
        "batch",
    ));
    tracing::info!(%http_addr, topic = %kafka.topic, "Batch layer running.");

    let grace = args.node.shutdown_grace;
    let slot = failure.clone();
    let handle = tokio::spawn(async move {
        supervise(tasks, token, grace, &slot).await;
        tracing::info!("Batch layer stopped.");
    });
    Ok(RunningBatch {
        http_addr,
        handle,
        failure,
    })
}

/// When and how the recompute loop runs.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    bucket_size: BucketSize,
    windows: WindowSettings,
    interval: Duration,
    /// The mode of a recompute nobody asked a mode for.
    mode: RecomputeMode,
    /// A full recompute at least this often.
    full_every: Option<Duration>,
    /// See `BatchArgs::fault_recompute_pause`.
    fault_pause: Option<Duration>,
}

impl Schedule {
    /// The mode of the next recompute: the one asked for, else full if the
    /// parts of the partitions this instance owns (of the newest view) had
    /// no full recompute for `full_every`, else the configured one. (Other
    /// instances' parts are theirs to recompute.)
    fn mode(
        &self,
        asked: Option<RecomputeMode>,
        latest: Option<&Manifest>,
        owned: Option<&std::collections::BTreeSet<lambda_core::Partition>>,
    ) -> RecomputeMode {
        let full_due = |every: Duration| {
            latest.is_some_and(|m| {
                let last_full = owned
                    .map(|owned| {
                        m.parts
                            .iter()
                            .filter(|(p, _)| owned.contains(p))
                            .map(|(_, part)| part.last_full_ms)
                            .min()
                            .unwrap_or(i64::MAX)
                    })
                    .unwrap_or(m.header.lineage.last_full_ms);
                let since_full = common::now_ms().saturating_sub(last_full);
                since_full >= every.as_millis() as i64
            })
        };
        match asked {
            Some(mode) => mode,
            None if self.full_every.is_some_and(full_due) => RecomputeMode::Full,
            None => self.mode,
        }
    }
}

async fn recompute_loop(
    log: Arc<Mutex<MasterLog>>,
    store: Arc<SharedViews>,
    engine: Arc<Engine>,
    metrics: Arc<BatchMetrics>,
    schedule: Schedule,
    mut requests: mpsc::Receiver<RecomputeRequest>,
    token: CancellationToken,
) {
    let mut ticker = tokio::time::interval(schedule.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let request = tokio::select! {
            _ = token.cancelled() => break,
            _ = ticker.tick() => None,
            Some(request) = requests.recv() => Some(request),
        };
        let asked = request.as_ref().and_then(|r| r.mode);
        let (log, store, engine) = (Arc::clone(&log), Arc::clone(&store), Arc::clone(&engine));
        // At background priority, all of it (not only the MapReduce's
        // pool): composing, encoding and publishing the view took a core
        // at normal priority for a few hundred milliseconds per recompute,
        // when the serving layer swaps views in too, and the speed and
        // serving layers' freshness suffered (`bench/freshness.py`). The
        // locks it takes (the master log's, the view store's) are not on
        // the path of an event to answers.
        let result = common::background::run_catching("recompute", move || {
            let owned = log.lock_or_stop("the master log").owned().cloned();
            let mode = schedule.mode(asked, store.latest()?.as_ref(), owned.as_ref());
            let request = recompute::Request {
                // A full recompute asked for is done even if the cut has not
                // moved: it is how an operator fixes a view.
                force: asked == Some(RecomputeMode::Full),
                fault_pause: schedule.fault_pause,
                ..recompute::Request::new(mode)
            };
            recompute(
                &log,
                &store,
                &engine,
                schedule.bucket_size,
                &schedule.windows,
                request,
            )
        })
        .await;
        let answer = match result {
            Ok(Ok(outcome)) => {
                if let Outcome::Published { manifest, seconds } = &outcome {
                    metrics.published(manifest);
                    metrics.last_recompute_ms.set((seconds * 1000.0) as i64);
                }
                Ok(outcome.manifest().clone())
            }
            Ok(Err(error)) => {
                let (error, panicked) = (&error, false);
                RecomputeFailed { error, panicked }.emit(&metrics.recompute_failures);
                Err(error.to_string())
            }
            Err(error) => {
                let panicked = matches!(error, BackgroundFailure::Panicked { .. });
                let error = &error;
                RecomputeFailed { error, panicked }.emit(&metrics.recompute_failures);
                Err(error.to_string())
            }
        };
        if let Some(request) = request {
            let _ = request.reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_core::compose::PartRef;
    use lambda_core::view::{BatchView, ViewOrigin};

    #[test]
    fn a_full_recompute_is_due_by_the_parts_this_instance_owns() {
        let hour = Duration::from_secs(3600);
        let schedule = Schedule {
            bucket_size: BucketSize::DEFAULT,
            windows: WindowSettings::default(),
            interval: Duration::from_secs(30),
            mode: RecomputeMode::Incremental,
            full_every: Some(hour),
            fault_pause: None,
        };
        let now = common::now_ms();
        let part = |last_full_ms| PartRef {
            key: String::new(),
            checksum: 0,
            bytes: 0,
            cut: 16,
            version: 1,
            last_full_ms,
        };
        let view = BatchView::build(
            ViewOrigin::new(
                2,
                [(0, 16), (1, 16)].into_iter().collect(),
                BucketSize::DEFAULT,
            ),
            Vec::new(),
        );
        let mut manifest = view.manifest(&view.encode());
        // Partition 0's chain had its full recompute two hours ago, 1's just now.
        manifest.parts = [(0, part(now - 7_200_000)), (1, part(now))]
            .into_iter()
            .collect();
        manifest.header.lineage.last_full_ms = now - 7_200_000;
        let owns = |ps: &[i32]| Some(ps.iter().copied().collect());
        let mode = |owned: Option<std::collections::BTreeSet<i32>>| {
            schedule.mode(None, Some(&manifest), owned.as_ref())
        };
        assert_eq!(
            mode(owns(&[1])),
            RecomputeMode::Incremental,
            "its own are recent"
        );
        assert_eq!(mode(owns(&[0, 1])), RecomputeMode::Full);
        assert_eq!(
            mode(None),
            RecomputeMode::Full,
            "no ownership known: the view's"
        );
        assert_eq!(
            mode(owns(&[])),
            RecomputeMode::Incremental,
            "nothing of its own"
        );
        assert_eq!(
            schedule.mode(
                Some(RecomputeMode::Full),
                Some(&manifest),
                owns(&[1]).as_ref()
            ),
            RecomputeMode::Full,
            "asked for"
        );
    }
}
