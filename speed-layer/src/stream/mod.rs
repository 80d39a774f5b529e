//! The streaming loop: consume, count, checkpoint, publish.
//!
//! Delivery guarantee: exactly-once counts. Every micro-batch's counts and the
//! next offset of each partition it read are written in one atomic, fsynced
//! sled batch; on start the consumer is assigned every partition at its
//! checkpointed offset (or, with no checkpoint, at the batch cut), never at a
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
//! - this file: the loop, the checkpoint and expiry below a new batch cut;
//! - `consume`: records counted into adaptive micro-batches;
//! - `publish`: checkpointed counts to the realtime topic, coalesced.

mod consume;
mod publish;

use crate::cuts::fetch_batch_cut;
use crate::metrics::SpeedMetrics;
use common::dead_letter::DeadLetterSink;
use common::kafka::{
    burst_producer_config, close_off_runtime, consumer_config, wait_for_partitions, Resume,
};
use common::metrics::since_timestamp;
use common::shutdown::CancellationToken;
use common::sync::LockOrStop;
use common::unreadable::{hold_unreadable, ConsumeFailure, HeldPartitions};
use consume::{next_batch, Ctx};
use lambda_core::{BucketSize, Cut, Offset, Partition, Tokenizer};
use publish::Publication;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use realtime_store::{Checkpoint, CountKey, RealtimeStore, StoreError, StoreStats};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

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
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub kafka: common::client::Connection,
    pub topic: String,
    pub realtime_topic: String,
    pub bucket_size: BucketSize,
    pub max_event_bytes: usize,
    pub batch_url: Option<String>,
    pub cut_poll_interval: Duration,
    pub micro_batch_records: usize,
    pub micro_batch_wait: Duration,
}

/// What the HTTP server reports.
#[derive(Debug, Default, Clone)]
pub struct SpeedStatus {
    /// Checkpointed next offset per partition.
    pub positions: Cut,
    /// The batch cut below which buckets have been expired.
    pub cut: Cut,
    pub ready: bool,
    pub store: StoreStats,
    /// Partitions no longer read because a record in them cannot be
    /// (readiness then says no).
    pub held: HeldPartitions,
}

/// The speed layer's state: the durable store and its in-memory mirror.
struct RealtimeView {
    store: RealtimeStore,
    mirror: FxHashMap<CountKey, u64>,
    positions: Cut,
    cut: Cut,
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
    let mut view = RealtimeView {
        mirror: store.load_counts()?,
        positions: store.offsets()?,
        cut: store.applied_cut()?,
        store,
    };
    // Every checkpointed count is re-published on start, repairing
    // publications a crash interrupted. The snapshot is taken before expiry:
    // a serving layer still on an older view needs the final values of
    // buckets the new cut is about to drop here.
    let republish = Publication {
        upserts: view.mirror.iter().map(|(k, c)| (k.clone(), *c)).collect(),
        positions: view.positions.clone(),
        oldest_event_ms: None,
        checkpointed_at: Instant::now(),
    };
    let partitions = partition_count(&config.kafka, &config.topic).await?;
    let realtime_partitions = partition_count(&config.kafka, &config.realtime_topic).await?;

    // Learn the batch cut before choosing where to start: a partition without
    // a checkpoint starts at the cut, never at the beginning or the end.
    let needs_cut =
        (0..partitions as Partition).any(|p| view.positions.iter().all(|(q, _)| q != p));
    if let Some(url) = &config.batch_url {
        loop {
            match fetch_batch_cut(url).await {
                Ok(cut) => {
                    expire(
                        &mut view,
                        &cut.unwrap_or_default(),
                        config.bucket_size,
                        &metrics,
                    )
                    .await?;
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

    let consumer: StreamConsumer = consumer_config(&config.kafka, GROUP)
        .set("queued.max.messages.kbytes", "65536")
        .create()
        .map_err(kafka_err)?;
    let producer: FutureProducer = burst_producer_config(&config.kafka)
        .create()
        .map_err(kafka_err)?;
    for p in 0..partitions as Partition {
        let start = view.positions.get(p).max(view.cut.get(p));
        view.positions.set(p, start);
        tracing::info!(
            partition = p,
            offset = start,
            "Resuming from the checkpoint."
        );
    }
    let mut resume = Resume::new(view.positions.iter());
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as Partition {
        tpl.add_partition_offset(&config.topic, p, KafkaOffset::Offset(resume.seek_offset(p)))
            .map_err(kafka_err)?;
    }
    consumer.assign(&tpl).map_err(kafka_err)?;

    // Publication runs beside consumption (see `publish`).
    let (publish_tx, publisher) = publish::spawn_publisher(
        producer,
        config.realtime_topic.clone(),
        realtime_partitions,
        Arc::clone(&metrics),
        token.clone(),
    );

    let _ = publish_tx.send(republish).await;
    update_status(&status, &view, &metrics);

    let mut tokenizer = Tokenizer::new();
    let mut last_cut_poll = Instant::now();
    let mut last_commit = Instant::now();
    while !token.is_cancelled() {
        let ctx = Ctx {
            config: &config,
            dead_letters: &dead_letters,
            metrics: &metrics,
            token: &token,
        };
        let Some(mut batch) = next_batch(&consumer, &view, &mut resume, &mut tokenizer, &ctx).await
        else {
            break;
        };
        if batch.records > 0 {
            if let Some(oldest) = batch.oldest_event_ms {
                metrics.consume_stage.observe(since_timestamp(oldest));
            }
            let counts = batch.apply(&mut view);
            let next_offsets = batch.next_offsets();
            let Some(upserts) = checkpoint(&mut view, next_offsets, counts, &metrics, &token).await
            else {
                break;
            };
            let publication = Publication {
                upserts,
                positions: view.positions.clone(),
                oldest_event_ms: batch.oldest_event_ms,
                checkpointed_at: Instant::now(),
            };
            if publish_tx.send(publication).await.is_err() {
                tracing::error!("The publisher stopped; upserts will be re-published on restart.");
            }
            if last_commit.elapsed() >= MONITORING_COMMIT_EVERY {
                last_commit = Instant::now();
                commit_for_monitoring(&consumer, &config.topic, &view.positions);
            }
            update_status(&status, &view, &metrics);
        }
        if let Some(failure) = batch.unreadable.take() {
            // What was read before it is checkpointed and published above;
            // the unreadable records stay in Kafka, their partition held.
            metrics.unreadable_batches.inc();
            let held = status.lock_or_stop("the speed status").held.clone();
            let positions = (0..partitions as Partition)
                .map(|p| (p, view.positions.get(p)))
                .collect();
            let outcome = hold_unreadable(
                &consumer,
                &config.kafka,
                &config.topic,
                positions,
                &held,
                failure,
            )
            .await;
            metrics.held_partitions.set(held.len() as i64);
            if let Err(failure) = outcome {
                drop(publish_tx);
                let _ = publisher.await;
                return Err(failure.into());
            }
        }
        if let Some(url) = &config.batch_url {
            if last_cut_poll.elapsed() >= config.cut_poll_interval {
                last_cut_poll = Instant::now();
                match fetch_batch_cut(url).await {
                    Ok(Some(cut)) => {
                        expire(&mut view, &cut, config.bucket_size, &metrics).await?;
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
    drop(publish_tx);
    let _ = publisher.await;
    // No last monitoring commit here: closing a consumer with a commit in
    // flight waits for the broker's answer, and in `lambda demo` the broker
    // runs on the same runtime threads the close blocks (a hang seen in
    // the demo's shutdown test).
    close_off_runtime(consumer).await;
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

fn update_status(status: &Mutex<SpeedStatus>, view: &RealtimeView, metrics: &SpeedMetrics) {
    metrics.live_counts.set(view.mirror.len() as i64);
    let mut s = status.lock_or_stop("the speed status");
    s.positions = view.positions.clone();
    s.cut = view.cut.clone();
    s.ready = true;
    s.store = view.store.stats();
}

/// Writes the changed counts and new offsets atomically, retrying until it
/// succeeds (consumption waits meanwhile: backpressure, not loss); gives the
/// counts back for publication, or `None` when cancelled before they were
/// durable: then nothing of the micro-batch may be published.
async fn checkpoint(
    view: &mut RealtimeView,
    next_offsets: Vec<(Partition, Offset)>,
    counts: Vec<(CountKey, u64)>,
    metrics: &SpeedMetrics,
    token: &CancellationToken,
) -> Option<Vec<(CountKey, u64)>> {
    let cp = Checkpoint {
        counts,
        next_offsets,
        as_of: None,
    };
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match view.store.commit(&cp).await {
            Ok(()) => break,
            Err(error) => {
                metrics.checkpoint_failures.inc();
                tracing::error!(%error, "Checkpoint failed; retrying.");
                if token.is_cancelled() {
                    // The counts are not durable; the offsets were not advanced
                    // either, so a restart recounts this micro-batch.
                    return None;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    for (p, o) in &cp.next_offsets {
        view.positions.set(*p, *o);
    }
    metrics.micro_batches.inc();
    metrics.checkpoint_stage.observe(started.elapsed());
    metrics
        .last_checkpoint_us
        .set(started.elapsed().as_micros() as i64);
    Some(cp.counts)
}

/// Deletes the buckets below a new batch cut (only ever moving forward).
async fn expire(
    view: &mut RealtimeView,
    cut: &Cut,
    size: BucketSize,
    metrics: &SpeedMetrics,
) -> Result<(), StoreError> {
    let merged: Cut = cut
        .iter()
        .map(|(p, o)| (p, o.max(view.cut.get(p))))
        .chain(
            view.cut
                .iter()
                .filter(|(p, _)| cut.iter().all(|(q, _)| q != *p)),
        )
        .collect();
    if merged == view.cut {
        return Ok(());
    }
    view.store.expire_below(&merged, size).await?;
    let before = view.mirror.len();
    view.mirror
        .retain(|k, _| merged.is_realtime_bucket(size, k.bucket.partition, k.bucket.bucket));
    let removed = before - view.mirror.len();
    metrics.buckets_expired.add(removed as u64);
    tracing::info!(cut = %merged, removed, "Expired realtime buckets below the batch cut.");
    view.cut = merged;
    Ok(())
}

/// How often the checkpointed positions are committed to the consumer group
/// for monitoring (never more often: a commit is a broker write, and with
/// adaptive micro-batches there can be hundreds of checkpoints a second).
const MONITORING_COMMIT_EVERY: Duration = Duration::from_secs(1);

fn commit_for_monitoring(consumer: &StreamConsumer, topic: &str, positions: &Cut) {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in positions.iter() {
        let _ = tpl.add_partition_offset(topic, p, KafkaOffset::Offset(o));
    }
    if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(%error, "Monitoring commit failed (harmless: positions come from the checkpoint).");
    }
}
