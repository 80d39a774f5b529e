//! The streaming loop: consume, count, checkpoint, publish.
//!
//! Delivery guarantee: exactly-once counts. Every micro-batch's counts and the
//! next offset of each partition it read are written in one atomic, fsynced
//! sled batch; every partition the layer reads (all of them, or the share
//! the consumer group gives it with `--share-partitions`) starts at its
//! checkpointed offset or at the batch cut when that is ahead, never at a
//! Kafka-committed position (auto-commit and auto offset store are off).
//! Upserts are published only after the checkpoint that contains them, and
//! all live counts are re-published on start, so a publication lost in a crash
//! is repaired and a published count never goes down. Once a micro-batch's
//! upserts are all acknowledged, a watermark with the checkpointed positions
//! goes to every realtime partition (see [`lambda_core::realtime`]), so serving
//! layers know when they hold a whole checkpoint.
//!
//! # Layout
//!
//! - this file: the loop and its configuration and status;
//! - `counts`: the counts, the partitions they cover (assignment,
//!   revocation, where a partition starts) and expiry below a new batch cut;
//! - `checkpoint`: a micro-batch counted into the live counts and made
//!   durable, then handed to the publisher, on a thread of its own while
//!   the next one is read;
//! - `consume`: records read into adaptive micro-batches;
//! - `publish`: checkpointed counts to the realtime topic, coalesced.

mod checkpoint;
mod consume;
mod counts;
mod publish;

use crate::cuts::{fetch_batch_cut, BatchCut};
use crate::metrics::SpeedMetrics;
use checkpoint::{InFlight, Outlets, Progress};
use common::dead_letter::DeadLetterSink;
use common::kafka::{burst_producer_config, consumer_config, wait_for_partitions};
use common::metrics::since_timestamp;
use common::reader::{Assignment, PartitionReader, ReaderError, ResumeAt};
use common::retry::{until_durable, DurableWrite, Stalls};
use common::shutdown::CancellationToken;
use common::sync::LockOrStop;
use common::telemetry::events::RecordsUnreadable;
use common::unreadable::{ConsumeFailure, HeldPartitions};
use consume::{next_batch, Ctx};
use counts::{resume_point, RealtimeCounts};
use lambda_core::window::{Millis, WindowSettings};
use lambda_core::{BucketSize, Cut, Offset, Partition, Positions};
use publish::Publication;
use rdkafka::producer::FutureProducer;
use realtime_store::{Checkpoint, CountKey, RealtimeStore, StoreError, StoreStats};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

/// The consumer group the speed layer reports its position under.
pub const GROUP: &str = "lambda-speed";

#[derive(Debug, Error)]
pub enum StreamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka client for {brokers}: {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic `{topic}` has no partitions visible on {brokers}")]
    NoTopic { topic: String, brokers: String },
    #[error("{0}; no partition could be found to hold, so the speed layer stops")]
    Unreadable(#[from] ConsumeFailure),
    #[error(transparent)]
    Reader(#[from] ReaderError),
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub kafka: common::client::Connection,
    pub topic: String,
    pub realtime_topic: String,
    pub bucket_size: BucketSize,
    pub max_event_bytes: usize,
    /// Where the batch layer's views are read (their cut), if there is one.
    pub batch_url: Option<common::views::ViewSource>,
    pub cut_poll_interval: Duration,
    pub micro_batch_records: usize,
    pub micro_batch_wait: Duration,
    /// The consumer group its positions are committed under, for monitoring,
    /// and that assigns the partitions when they are shared.
    pub group: String,
    /// Whether the group assigns the partitions (several speed layers), or
    /// this instance reads them all (one).
    pub share_partitions: bool,
    pub windows: WindowSettings,
}

/// What the HTTP server reports.
#[derive(Debug, Default, Clone)]
pub struct SpeedStatus {
    /// Checkpointed next offset per partition this instance owns.
    pub positions: Positions,
    /// Checkpointed next offset of every partition ever read here, owned or
    /// not: where a partition the group assigns resumes (with the cut).
    pub checkpointed: Positions,
    /// The batch cut below which buckets have been expired.
    pub cut: Cut,
    pub ready: bool,
    pub store: StoreStats,
    /// Partitions no longer read because a record in them cannot be
    /// (readiness then says no).
    pub held: HeldPartitions,
    /// Durable writes failing right now (readiness then says no).
    pub stalls: Stalls,
}

pub async fn run(
    config: StreamConfig,
    store: RealtimeStore,
    dead_letters: DeadLetterSink,
    metrics: Arc<SpeedMetrics>,
    status: Arc<Mutex<SpeedStatus>>,
    token: CancellationToken,
) -> Result<(), StreamError> {
    let kafka_err = |source| StreamError::Kafka {
        brokers: config.kafka.to_string(),
        source,
    };
    let mut view = RealtimeCounts {
        mirror: counts::Mirror::from_counts(store.load_counts()?),
        positions: store.offsets()?,
        newest: store.event_times()?,
        cut: store.applied_cut()?,
        cut_newest: BTreeMap::new(),
        starts: store.starts()?,
        owned: BTreeSet::new(),
        store: Arc::new(store),
    };
    // Every checkpointed count is re-published on start, repairing
    // publications a crash interrupted. The snapshot is taken before expiry:
    // a serving layer still on an older view needs the final values of
    // buckets the new cut is about to drop here.
    let republish = Publication {
        upserts: view.mirror.iter().collect(),
        positions: view.positions.clone(),
        newest: view.newest.clone(),
        starts: view.starts.clone(),
        oldest_event_ms: None,
        checkpointed_at: Instant::now(),
    };
    let partitions = partition_count(&config.kafka, &config.topic).await?;
    let realtime_partitions = partition_count(&config.kafka, &config.realtime_topic).await?;

    // Learn the batch cut before choosing where to start: a partition without
    // a checkpoint starts at the cut, never at the beginning or the end. The
    // last cut applied here (kept in the store) will do when the batch layer
    // is down: any batch view's cut is a place to start — one older than the
    // newest only means counting events again that a view holds.
    let needs_cut = view.cut.is_empty()
        && (0..partitions as Partition).any(|p| view.positions.iter().all(|(q, _)| q != p));
    if let Some(url) = &config.batch_url {
        loop {
            match fetch_batch_cut(url.clone()).await {
                Ok(cut) => {
                    let cut = cut.unwrap_or_default();
                    view.take_cut(&cut, config.bucket_size, &metrics).await?;
                    break;
                }
                Err(error) if needs_cut => {
                    tracing::warn!(%error, "Waiting for the batch layer's cut before starting.");
                    if common::shutdown::until_cancelled(
                        &token,
                        tokio::time::sleep(Duration::from_secs(1)),
                    )
                    .await
                    .is_none()
                    {
                        return Ok(());
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Batch layer unreachable; resuming from the checkpoint.");
                    break;
                }
            }
        }
    }

    let producer: FutureProducer = burst_producer_config(&config.kafka)
        .create()
        .map_err(kafka_err)?;
    update_status(&status, &view, &metrics);
    let mut consumer = consumer_config(&config.kafka, &config.group);
    consumer.set("queued.max.messages.kbytes", "65536");
    let mut reader = if config.share_partitions {
        // The group shares the partitions among the instances; each resumes
        // where this instance's own state says.
        let resume_at: ResumeAt = {
            let status = Arc::clone(&status);
            Arc::new(move |p| {
                let s = status.lock_or_stop("the speed status");
                resume_point(&s.checkpointed, &s.cut, p)
            })
        };
        PartitionReader::join(consumer, &config.kafka, &config.topic, resume_at).await?
    } else {
        let placed: Vec<_> = (0..partitions as Partition)
            .map(|p| (p, resume_point(&view.positions, &view.cut, p)))
            .collect();
        view.change_ownership(Assignment::Assigned(placed.clone()))
            .await?;
        PartitionReader::open(consumer, &config.kafka, &config.topic, placed).await?
    };

    // Publication runs beside consumption (see `publish`).
    let (publish_tx, publisher) = publish::spawn_publisher(
        producer,
        config.realtime_topic.clone(),
        realtime_partitions,
        view.store.writer_id().await?,
        Arc::clone(&metrics),
        token.clone(),
    );

    let _ = publish_tx.send(republish).await;
    update_status(&status, &view, &metrics);

    let outlets = Outlets {
        publish: publish_tx.clone(),
        metrics: Arc::clone(&metrics),
        stalls: status.lock_or_stop("the speed status").stalls.clone(),
        status: Arc::clone(&status),
        token: token.clone(),
    };
    let mut in_flight: Option<InFlight> = None;
    let mut last_cut_poll = Instant::now();
    let mut last_commit = Instant::now();
    while !token.is_cancelled() {
        let ctx = Ctx {
            config: &config,
            dead_letters: &dead_letters,
            metrics: &metrics,
            token: &token,
        };
        // Read while the previous micro-batch is counted and checkpointed.
        let reading = next_batch(&mut reader, &view, &ctx, in_flight.as_ref());
        let Some(mut batch) = reading.await? else {
            break;
        };
        let unreadable = batch.unreadable.take();
        // Changes come in a batch of their own, before any record read after
        // them, and once the previous batch is checkpointed and handed to
        // the publisher (a revoked partition's last counts included).
        if !batch.changes.is_empty() {
            if !land(&mut in_flight, &mut view, &status, &metrics).await {
                break;
            }
            for change in std::mem::take(&mut batch.changes) {
                view.change_ownership(change).await?;
                update_status(&status, &view, &metrics);
            }
        }
        if batch.moved() {
            if let Some(oldest) = batch.oldest_event_ms {
                metrics.consume_stage.observe(since_timestamp(oldest));
            }
            if !land(&mut in_flight, &mut view, &status, &metrics).await {
                break;
            }
            if last_commit.elapsed() >= MONITORING_COMMIT_EVERY {
                last_commit = Instant::now();
                reader.commit_for_monitoring(&view.owned_positions());
            }
            // The next batch is read from where this one ends: its counts
            // are in the live counts it returns with.
            for (p, o) in batch.next_offsets() {
                view.positions.set(p, o);
            }
            view.newest.extend(batch.event_times());
            let progress = Progress {
                positions: view.positions.clone(),
                newest: view.newest.clone(),
                starts: view.starts.clone(),
                owned: view.owned.clone(),
            };
            let mirror = std::mem::take(&mut view.mirror);
            let store = Arc::clone(&view.store);
            in_flight = Some(InFlight::start(
                store,
                mirror,
                batch,
                progress,
                outlets.clone(),
            ));
        } else if !land(&mut in_flight, &mut view, &status, &metrics).await {
            // Nothing read: the batch in flight has had time to land.
            break;
        }
        if let Some(failure) = unreadable {
            // What was read before it is checkpointed and published first;
            // the unreadable records stay in Kafka, their partition held.
            if !land(&mut in_flight, &mut view, &status, &metrics).await {
                break;
            }
            RecordsUnreadable {
                topic: reader.topic(),
                failure: &failure,
            }
            .emit(&metrics.unreadable_batches);
            let held = status.lock_or_stop("the speed status").held.clone();
            let outcome = reader.hold(&held, failure).await;
            metrics.held_partitions.set(held.len() as i64);
            if let Err(failure) = outcome {
                drop((outlets, publish_tx));
                let _ = publisher.await;
                return Err(failure.into());
            }
        }
        if let Some(url) = &config.batch_url {
            if last_cut_poll.elapsed() >= config.cut_poll_interval {
                last_cut_poll = Instant::now();
                match fetch_batch_cut(url.clone()).await {
                    Ok(Some(cut)) => {
                        if !land(&mut in_flight, &mut view, &status, &metrics).await {
                            break;
                        }
                        view.take_cut(&cut, config.bucket_size, &metrics).await?;
                        update_status(&status, &view, &metrics);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(%error, "Cannot fetch the batch cut; will retry.")
                    }
                }
            }
        }
    }
    land(&mut in_flight, &mut view, &status, &metrics).await;
    drop(outlets);
    drop(publish_tx);
    let _ = publisher.await;
    // No last monitoring commit here: closing a consumer with a commit in
    // flight waits for the broker's answer, and in `lambda demo` the broker
    // runs on the same runtime threads the close blocks (a hang seen in
    // the demo's shutdown test).
    reader.close().await;
    tracing::info!(positions = %view.positions, "Speed layer stopped after its last checkpoint.");
    Ok(())
}

async fn partition_count(
    kafka: &common::client::Connection,
    topic: &str,
) -> Result<usize, StreamError> {
    wait_for_partitions(kafka, topic, Duration::from_secs(30))
        .await
        .ok_or_else(|| StreamError::NoTopic {
            topic: topic.to_owned(),
            brokers: kafka.to_string(),
        })
}

/// Lands the micro-batch in flight, if any (see [`InFlight`]): the live
/// counts are back in `view` and the status says so. False when it was not
/// made durable because the role stopped.
async fn land(
    in_flight: &mut Option<InFlight>,
    view: &mut RealtimeCounts,
    status: &Mutex<SpeedStatus>,
    metrics: &SpeedMetrics,
) -> bool {
    let Some(batch) = in_flight.take() else {
        return true;
    };
    let durable = batch.land(&mut view.mirror).await;
    if durable {
        update_status(status, view, metrics);
    }
    durable
}

fn update_status(status: &Mutex<SpeedStatus>, view: &RealtimeCounts, metrics: &SpeedMetrics) {
    metrics.live_counts.set(view.mirror.len() as i64);
    let mut s = status.lock_or_stop("the speed status");
    s.positions = view.owned_positions();
    s.checkpointed = view.positions.clone();
    s.cut = view.cut.clone();
    s.ready = true;
    s.store = view.store.stats();
}

/// How often the checkpointed positions are committed to the consumer group
/// for monitoring (never more often: a commit is a broker write, and with
/// adaptive micro-batches there can be hundreds of checkpoints a second).
const MONITORING_COMMIT_EVERY: Duration = Duration::from_secs(1);
