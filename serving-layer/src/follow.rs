//! Following the realtime topic into the replica.
//!
//! Delivery guarantee: the replica's counts are exact at its `as_of`. Upserts
//! pass the [`WatermarkGate`] (only whole checkpoints are applied), and each
//! release is written to sled in one atomic batch together with the topic
//! position after it and the new `as_of`, before the in-memory replica sees
//! it. On start the follower resumes from those stored positions (with the
//! [`Resume`] guard against brokers that skip part of a record batch), so a
//! crash re-reads at most the messages after the last release, and applying
//! them again is harmless: upserts are absolute counts, applied as `max`.

use crate::gate::WatermarkGate;
use crate::health::Health;
use crate::metrics::ServingMetrics;
use crate::replica::{slices, Replica};
use common::kafka::{consumer_config, wait_for_partitions};
use common::reader::{Limits, PartitionReader, ReaderError};
use common::retry::{until_durable, DurableWrite};
use common::shutdown::CancellationToken;
use common::sync::FairRwLock;
use common::telemetry::events::{MalformedRealtimeMessage, RecordsUnreadable};
use common::unreadable::ConsumeFailure;
use lambda_core::realtime::RealtimeMessage;
use lambda_core::Cut;
use rdkafka::message::Message;
use realtime_store::{Checkpoint, RealtimeStore};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The group the follower's consumer reports under. Partitions are assigned
/// manually, so any number of serving layers each read the whole topic.
pub const GROUP: &str = "lambda-serving";

#[derive(Debug, Error)]
pub enum FollowError {
    #[error(transparent)]
    Unreadable(#[from] ConsumeFailure),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error("topic `{topic}` has no partitions visible on {brokers}")]
    NoTopic { topic: String, brokers: String },
    #[error(transparent)]
    Store(#[from] realtime_store::StoreError),
}

pub struct Follower {
    pub kafka: common::client::Connection,
    pub topic: String,
    pub replica: Arc<FairRwLock<Replica>>,
    pub store: Arc<RealtimeStore>,
    pub health: Arc<Health>,
    pub metrics: Arc<ServingMetrics>,
    /// A release of more counts than this is applied in slices while
    /// requests come in (see [`Self::slice_size`]).
    pub slice_counts: usize,
}

/// How the follower reads: the gate is asked for a release after at most
/// 20,000 messages, and as soon as the consumer has no more buffered
/// (adaptive, like the speed layer's micro-batches: a release per checkpoint
/// when idle, large ones under load).
const READ: Limits = Limits {
    max_records: 20_000,
    max_bytes: 64 << 20,
    linger: Duration::ZERO,
    catch_up: None,
    idle: None,
};

impl Follower {
    pub async fn run(self, token: CancellationToken) -> Result<(), FollowError> {
        let partitions = wait_for_partitions(&self.kafka, &self.topic, Duration::from_secs(30))
            .await
            .ok_or_else(|| FollowError::NoTopic {
                topic: self.topic.clone(),
                brokers: self.kafka.to_string(),
            })?;
        let mut positions = self.store.offsets()?;
        let resumed = (!positions.is_empty())
            .then(|| self.store.as_of())
            .transpose()?;
        let mut gate = WatermarkGate::new(partitions, resumed);
        for r in 0..partitions as i32 {
            positions.set(r, positions.get(r));
        }
        let mut reader = PartitionReader::open(
            consumer_config(&self.kafka, GROUP),
            &self.kafka,
            &self.topic,
            positions.iter(),
        )
        .await?;
        self.health.follower(positions.clone(), 0);
        let mut arrivals = self.metrics.arrivals.get();

        loop {
            let Some(read) = reader.next_batch(&READ, &token).await? else {
                break;
            };
            self.metrics
                .follower_errors
                .add(read.transient_errors as u64);
            for m in &read.records {
                self.accept(&mut gate, m);
            }
            if let Some(failure) = read.unreadable {
                // Retrying would stall the replica for good while answers
                // claimed to be current: stop instead. What the gate
                // released before is already stored.
                self.metrics.follower_errors.inc();
                RecordsUnreadable {
                    topic: &self.topic,
                    failure: &failure,
                }
                .emit(&self.metrics.unreadable_batches);
                self.health.kafka_failed(failure.to_string());
                return Err(failure.into());
            }
            drop(read);
            if let Some(release) = gate.release() {
                if !self.wait_for_view(&release.starts, &token).await {
                    break;
                }
                let released_at = std::time::Instant::now();
                let (counts, from, size) = {
                    let r = self.replica.read_or_stop("the replica");
                    let counts = r.resolve(&release.upserts);
                    (counts, r.realtime_as_of().clone(), r.bucket_size())
                };
                let checkpoint = Checkpoint {
                    counts,
                    next_offsets: release.next_offsets.clone(),
                    as_of: Some(release.as_of.clone()),
                    event_times: release.newest.iter().map(|(&p, &t)| (p, t)).collect(),
                };
                if !self.commit(&checkpoint, &token).await {
                    break;
                }
                for (r, next) in &release.next_offsets {
                    positions.set(*r, *next);
                }
                self.metrics
                    .upserts_applied
                    .add(release.upserts.len() as u64);
                let slice = self.slice_size(&mut arrivals);
                let slices = slices(checkpoint.counts, &from, release.as_of, size, slice);
                let last = slices.len() - 1;
                if last > 0 {
                    self.metrics.release_slices.add(slices.len() as u64);
                }
                for (i, slice) in slices.into_iter().enumerate() {
                    let mut r = self.replica.write_or_stop("the replica");
                    r.apply(slice.counts, slice.as_of);
                    if i == last {
                        r.note_event_time(&release.newest);
                    }
                    r.unlock_fair();
                }
                self.metrics.apply_stage.observe(released_at.elapsed());
                if let Some(oldest) = release.oldest_event_ms {
                    let latency = common::metrics::since_timestamp(oldest);
                    self.metrics.visible.observe(latency);
                    self.health.visible(latency);
                }
            }
            self.health.follower(positions.clone(), gate.held());
        }
        reader.close().await;
        tracing::info!(%positions, "Realtime follower stopped.");
        Ok(())
    }

    /// How many counts of a release to apply at a time: a large release
    /// (a speed layer catching up) in slices, each exact at a position of
    /// its own, if a request came in since the last release, so that the
    /// queries go in between; otherwise in one piece, since slices cost
    /// more in all (each looks every key of its own up: `replica::slices`).
    /// `arrivals` is the number of requests seen at the last release.
    fn slice_size(&self, arrivals: &mut u64) -> usize {
        let now = self.metrics.arrivals.get();
        let asked = std::mem::replace(arrivals, now) != now;
        if asked {
            self.slice_counts
        } else {
            usize::MAX
        }
    }

    fn accept<M: Message>(&self, gate: &mut WatermarkGate, m: &M) {
        match RealtimeMessage::decode(m.key(), m.payload()) {
            Ok(RealtimeMessage::Upserts {
                writer,
                round: None,
                upserts,
            }) => gate.upsert(m.partition(), m.offset(), writer, upserts),
            Ok(RealtimeMessage::Upserts {
                writer,
                round: Some(part),
                upserts,
            }) => gate.round_upserts(m.partition(), m.offset(), writer, part, upserts),
            Ok(RealtimeMessage::Watermark(w)) => {
                self.health.writer_seen(w.writer, &w.positions);
                gate.watermark(m.partition(), m.offset(), w)
            }
            Err(reason) => MalformedRealtimeMessage {
                partition: m.partition(),
                offset: m.offset(),
                reason: &reason,
            }
            .emit(&self.metrics.malformed_realtime),
        }
    }

    /// Holds a release until the replica covers where the speed layer
    /// started past its checkpoint (see [`Replica::uncovered_starts`]): when
    /// it started at a batch cut this replica's view does not reach yet,
    /// its counts wait for the puller to install a view that does. Reading
    /// waits with it (Kafka keeps the rest). False when cancelled first.
    async fn wait_for_view(&self, starts: &Cut, token: &CancellationToken) -> bool {
        if starts.is_empty() {
            return true;
        }
        let mut waited = false;
        loop {
            let missing = self
                .replica
                .read_or_stop("the replica")
                .uncovered_starts(starts);
            if missing.is_empty() {
                if waited {
                    self.health.follower_waiting(Cut::new());
                    tracing::info!("A batch view reaching the speed layer's start is served; its counts apply.");
                }
                return true;
            }
            if !waited {
                tracing::warn!(
                    starts = %missing,
                    "The speed layer started past its checkpoint, beyond this replica's batch view; its counts wait for a view whose cut reaches there (answers stay exact at the current as_of)."
                );
                self.health.follower_waiting(missing);
                waited = true;
            }
            let pause = tokio::time::sleep(Duration::from_millis(50));
            if common::shutdown::until_cancelled(token, pause)
                .await
                .is_none()
            {
                return false;
            }
        }
    }

    /// Retries until durable: the replica must not run ahead of its store,
    /// or a restart would resume past counts it never kept. False when
    /// cancelled first: then the counts must not be applied.
    async fn commit(&self, checkpoint: &Checkpoint, token: &CancellationToken) -> bool {
        let write = DurableWrite {
            what: "the replica's realtime counts",
            failures: &self.metrics.store_failures,
            stalls: &self.health.stalls,
        };
        until_durable(token, write, || self.store.commit(checkpoint))
            .await
            .is_some()
    }
}

/// Restores the replica's realtime half from the store at start.
pub fn restore(store: &RealtimeStore, replica: &FairRwLock<Replica>) -> Result<Cut, FollowError> {
    let counts = store.load_counts()?;
    let as_of = store.as_of()?;
    let newest = store.event_times()?;
    let mut r = replica.write_or_stop("the replica");
    r.restore(counts, as_of.clone());
    r.note_event_time(&newest);
    r.expire();
    Ok(as_of)
}
