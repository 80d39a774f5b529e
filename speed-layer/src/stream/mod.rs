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

use crate::cuts::{fetch_batch_cut, BatchCut};
use crate::metrics::SpeedMetrics;
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
use lambda_core::window::{Millis, WindowSettings};
use lambda_core::{BucketSize, Cut, Offset, Partition, Positions, Tokenizer};
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
    pub batch_url: Option<String>,
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

/// The speed layer's realtime counts: the durable store, its in-memory
/// mirror, the positions they are exact at and the batch cut they start at.
struct RealtimeCounts {
    store: RealtimeStore,
    mirror: FxHashMap<CountKey, u64>,
    positions: Positions,
    /// Per partition, the newest timestamp that moved its event-time
    /// watermark, exact at `positions` (see `lambda_core::window`).
    newest: BTreeMap<Partition, Millis>,
    cut: Cut,
    /// Per partition started past its checkpoint (at the batch cut), where
    /// it started: every watermark says so (see
    /// [`lambda_core::realtime::Watermark::starts`]).
    starts: Cut,
    /// The partitions the consumer group gives this instance now.
    owned: BTreeSet<Partition>,
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
        mirror: store.load_counts()?,
        positions: store.offsets()?,
        newest: store.event_times()?,
        cut: store.applied_cut()?,
        starts: store.starts()?,
        owned: BTreeSet::new(),
        store,
    };
    // Every checkpointed count is re-published on start, repairing
    // publications a crash interrupted. The snapshot is taken before expiry:
    // a serving layer still on an older view needs the final values of
    // buckets the new cut is about to drop here.
    let republish = Publication {
        upserts: view.mirror.iter().map(|(k, c)| (k.clone(), *c)).collect(),
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
            match fetch_batch_cut(url).await {
                Ok(cut) => {
                    let cut = cut.unwrap_or_default();
                    expire(&mut view, &cut.cut, config.bucket_size, &metrics).await?;
                    view.adopt_event_time(&cut);
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

    let mut tokenizer = Tokenizer::new();
    let stalls = status.lock_or_stop("the speed status").stalls.clone();
    let mut last_cut_poll = Instant::now();
    let mut last_commit = Instant::now();
    while !token.is_cancelled() {
        let ctx = Ctx {
            config: &config,
            dead_letters: &dead_letters,
            metrics: &metrics,
            token: &token,
        };
        let Some(mut batch) = next_batch(&mut reader, &view, &mut tokenizer, &ctx).await? else {
            break;
        };
        // Changes come in a batch of their own, before any record read after
        // them; the previous batch is checkpointed and handed to the
        // publisher already (a revoked partition's last counts included).
        for change in std::mem::take(&mut batch.changes) {
            view.change_ownership(change).await?;
            update_status(&status, &view, &metrics);
        }
        if batch.moved() {
            if let Some(oldest) = batch.oldest_event_ms {
                metrics.consume_stage.observe(since_timestamp(oldest));
            }
            let checkpoint = Checkpoint {
                counts: batch.apply(&mut view),
                next_offsets: batch.next_offsets(),
                as_of: None,
                event_times: batch.event_times(),
            };
            let RealtimeCounts {
                store,
                positions,
                newest,
                starts,
                owned,
                ..
            } = &mut view;
            let outlets = Outlets {
                publish: &publish_tx,
                metrics: &metrics,
                stalls: &stalls,
                starts,
                owned,
            };
            let durable = checkpoint_then_publish(
                store,
                (positions, newest),
                checkpoint,
                batch.oldest_event_ms,
                &outlets,
                &token,
            )
            .await;
            if !durable {
                break;
            }
            if last_commit.elapsed() >= MONITORING_COMMIT_EVERY {
                last_commit = Instant::now();
                reader.commit_for_monitoring(&view.owned_positions());
            }
            update_status(&status, &view, &metrics);
        }
        if let Some(failure) = batch.unreadable.take() {
            // What was read before it is checkpointed and published above;
            // the unreadable records stay in Kafka, their partition held.
            RecordsUnreadable {
                topic: reader.topic(),
                failure: &failure,
            }
            .emit(&metrics.unreadable_batches);
            let held = status.lock_or_stop("the speed status").held.clone();
            let outcome = reader.hold(&held, failure).await;
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
                        expire(&mut view, &cut.cut, config.bucket_size, &metrics).await?;
                        view.adopt_event_time(&cut);
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

fn update_status(status: &Mutex<SpeedStatus>, view: &RealtimeCounts, metrics: &SpeedMetrics) {
    metrics.live_counts.set(view.mirror.len() as i64);
    let mut s = status.lock_or_stop("the speed status");
    s.positions = view.owned_positions();
    s.checkpointed = view.positions.clone();
    s.cut = view.cut.clone();
    s.ready = true;
    s.store = view.store.stats();
}

/// Where micro-batches are made durable: the realtime store (tests use
/// one that fails).
pub(crate) trait Durable {
    fn commit(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Durable for RealtimeStore {
    fn commit(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        RealtimeStore::commit(self, checkpoint)
    }
}

/// Where a checkpointed micro-batch goes, and what reports on its checkpoint.
#[derive(Clone, Copy)]
struct Outlets<'a> {
    publish: &'a mpsc::Sender<Publication>,
    metrics: &'a SpeedMetrics,
    stalls: &'a Stalls,
    /// Where partitions started past their checkpoint, for the watermarks.
    starts: &'a Cut,
    /// The partitions owned: a watermark names only these.
    owned: &'a BTreeSet<Partition>,
}

/// Writes a micro-batch's changed counts and next offsets atomically,
/// retrying until they are durable (consumption waits meanwhile:
/// backpressure, not loss), then moves `positions` and hands the counts to
/// the publisher — never the other way round. False when the role stopped
/// before the checkpoint was durable: then nothing of the micro-batch is
/// published and the positions stay, so a restart recounts it.
async fn checkpoint_then_publish(
    store: &impl Durable,
    (positions, newest): (&mut Positions, &mut BTreeMap<Partition, Millis>),
    checkpoint: Checkpoint,
    oldest_event_ms: Option<i64>,
    outlets: &Outlets<'_>,
    token: &CancellationToken,
) -> bool {
    let Outlets {
        publish,
        metrics,
        stalls,
        starts,
        owned,
    } = *outlets;
    let started = Instant::now();
    let write = DurableWrite {
        what: "the checkpoint",
        failures: &metrics.checkpoint_failures,
        stalls,
    };
    let durable = until_durable(token, write, || store.commit(&checkpoint)).await;
    if durable.is_none() {
        return false;
    }
    for (p, o) in &checkpoint.next_offsets {
        positions.set(*p, *o);
    }
    newest.extend(checkpoint.event_times.iter().copied());
    metrics.micro_batches.inc();
    metrics.checkpoint_stage.observe(started.elapsed());
    metrics
        .last_checkpoint_us
        .set(started.elapsed().as_micros() as i64);
    let publication = Publication {
        upserts: checkpoint.counts,
        positions: positions
            .iter()
            .filter(|(p, _)| owned.contains(p))
            .collect(),
        newest: newest.clone(),
        starts: starts.iter().filter(|(p, _)| owned.contains(p)).collect(),
        oldest_event_ms,
        checkpointed_at: Instant::now(),
    };
    if publish.send(publication).await.is_err() {
        tracing::error!("The publisher stopped; upserts will be re-published on restart.");
    }
    true
}

/// Where a partition the group assigns resumes: its checkpoint, or the batch
/// cut when that is ahead (or there is no checkpoint) — never the beginning
/// or the end.
fn resume_point(checkpointed: &Positions, cut: &Cut, p: Partition) -> Offset {
    checkpointed.get(p).max(cut.get(p))
}

impl RealtimeCounts {
    /// The checkpointed positions of the partitions owned.
    fn owned_positions(&self) -> Positions {
        self.owned
            .iter()
            .map(|&p| (p, self.positions.get(p)))
            .collect()
    }

    /// Applies a change the group made: an assigned partition starts where
    /// [`resume_point`] placed it — past its checkpoint when the batch cut
    /// is ahead, which is recorded durably in `starts` before any count
    /// past it; a revoked one is no longer named in watermarks (its counts
    /// stay, exact at its checkpoint, until a cut expires them).
    async fn change_ownership(&mut self, change: Assignment) -> Result<(), StoreError> {
        match change {
            Assignment::Assigned(placed) => {
                let before = self.starts.clone();
                for (p, offset) in placed {
                    self.start_partition(p, offset);
                    self.owned.insert(p);
                }
                if self.starts != before {
                    self.store.set_starts(&self.starts).await?;
                }
            }
            Assignment::Revoked(partitions) => {
                for p in partitions {
                    self.owned.remove(&p);
                    tracing::info!(
                        partition = p,
                        offset = self.positions.get(p),
                        "Partition handed back to the group after its last checkpoint."
                    );
                }
            }
        }
        Ok(())
    }

    /// Moves partition `p` to `start`, recording in `starts` when that is
    /// past its checkpoint.
    fn start_partition(&mut self, p: Partition, start: Offset) {
        let checkpointed = self.positions.get(p);
        self.positions.set(p, start);
        if start > checkpointed {
            self.starts.set(p, start);
            tracing::info!(
                partition = p,
                offset = start,
                checkpoint = checkpointed,
                "Starting at the batch cut, past the checkpoint; serving layers holding an older view wait for one that reaches it."
            );
        } else {
            tracing::info!(
                partition = p,
                offset = start,
                "Resuming from the checkpoint."
            );
        }
    }

    /// Takes the batch view's event time where its cut is ahead of this
    /// layer's position, so a partition resumed at the cut starts its
    /// watermark where a reader from offset 0 would have it.
    fn adopt_event_time(&mut self, cut: &BatchCut) {
        for (&p, &t) in &cut.newest {
            if self.positions.get(p) <= cut.cut.get(p) {
                let n = self.newest.entry(p).or_insert(t);
                *n = (*n).max(t);
            }
        }
    }
}

/// Deletes the buckets below a new batch cut (only ever moving forward).
async fn expire(
    view: &mut RealtimeCounts,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc::error::TryRecvError;

    /// A store whose first `failures` commits fail.
    struct Flaky {
        failures: usize,
        attempts: AtomicUsize,
    }

    impl Durable for Flaky {
        async fn commit(&self, _: &Checkpoint) -> Result<(), StoreError> {
            if self.attempts.fetch_add(1, Ordering::Relaxed) < self.failures {
                Err(StoreError::Malformed {
                    path: "flaky".into(),
                    what: "an injected failure".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn an_assigned_partition_behind_the_batch_cut_starts_at_it_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut view = RealtimeCounts {
            store: RealtimeStore::open(dir.path()).expect("store"),
            mirror: FxHashMap::default(),
            positions: [(0, 40), (1, 10)].into_iter().collect(),
            newest: BTreeMap::new(),
            cut: [(0, 32), (1, 16), (2, 16)].into_iter().collect(),
            starts: [(0, 8)].into_iter().collect(),
            owned: BTreeSet::new(),
        };
        // 0 resumes at its checkpoint (ahead of the cut), 1 is behind the
        // cut, 2 has no checkpoint, 3 has neither checkpoint nor cut.
        let placed: Vec<_> = (0..4)
            .map(|p| (p, resume_point(&view.positions, &view.cut, p)))
            .collect();
        assert_eq!(placed, vec![(0, 40), (1, 16), (2, 16), (3, 0)]);
        view.change_ownership(Assignment::Assigned(placed))
            .await
            .expect("assigned");
        assert_eq!(
            view.owned_positions(),
            [(0, 40), (1, 16), (2, 16), (3, 0)].into_iter().collect()
        );
        let starts: Cut = [(0, 8), (1, 16), (2, 16)].into_iter().collect();
        assert_eq!(
            view.starts, starts,
            "0's earlier start kept; 1 and 2 start past their checkpoint"
        );
        assert_eq!(view.store.starts().expect("starts"), starts, "durably");
        view.change_ownership(Assignment::Revoked(vec![1]))
            .await
            .expect("revoked");
        assert_eq!(
            view.owned_positions(),
            [(0, 40), (2, 16), (3, 0)].into_iter().collect()
        );
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            counts: vec![(CountKey::new(0, 3, "lambda"), 7)],
            next_offsets: vec![(0, 25)],
            as_of: None,
            event_times: vec![(0, 1_000)],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_that_keeps_failing_and_is_cancelled_publishes_nothing() {
        let store = Flaky {
            failures: usize::MAX,
            attempts: AtomicUsize::new(0),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let (metrics, token) = (SpeedMetrics::default(), CancellationToken::new());
        let mut positions: Positions = [(0, 20)].into_iter().collect();
        let stop = async {
            while metrics.checkpoint_failures.get() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            token.cancel();
        };
        let stalls = Stalls::default();
        let outlets = Outlets {
            publish: &tx,
            metrics: &metrics,
            stalls: &stalls,
            starts: &Cut::new(),
            owned: &[0].into_iter().collect(),
        };
        let mut newest = BTreeMap::new();
        let progress = (&mut positions, &mut newest);
        let attempt =
            checkpoint_then_publish(&store, progress, checkpoint(), None, &outlets, &token);
        let (durable, ()) = tokio::join!(attempt, stop);
        assert!(!durable, "reported as not durable");
        assert_eq!(
            rx.try_recv().err(),
            Some(TryRecvError::Empty),
            "nothing published"
        );
        assert_eq!(positions.get(0), 20, "the positions did not move");
        assert!(newest.is_empty(), "nor did the event time");
        assert_eq!(metrics.micro_batches.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_that_succeeds_after_failures_is_published_once_durable() {
        let store = Flaky {
            failures: 2,
            attempts: AtomicUsize::new(0),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let (metrics, token) = (SpeedMetrics::default(), CancellationToken::new());
        let mut positions: Positions = [(0, 20)].into_iter().collect();
        let stalls = Stalls::default();
        let outlets = Outlets {
            publish: &tx,
            metrics: &metrics,
            stalls: &stalls,
            starts: &Cut::new(),
            owned: &[0].into_iter().collect(),
        };
        let mut newest = BTreeMap::new();
        let progress = (&mut positions, &mut newest);
        let durable =
            checkpoint_then_publish(&store, progress, checkpoint(), None, &outlets, &token).await;
        assert!(durable);
        assert_eq!(store.attempts.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.checkpoint_failures.get(), 2);
        let published = rx.try_recv().expect("published after the checkpoint");
        assert_eq!(published.upserts, checkpoint().counts);
        assert_eq!(published.positions.get(0), 25);
        assert_eq!(positions.get(0), 25);
        assert_eq!(published.newest, [(0, 1_000)].into_iter().collect());
    }
}
