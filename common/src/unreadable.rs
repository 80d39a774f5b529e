//! Records a consumer cannot read: a corrupt batch, or a codec or message
//! format the client cannot decode. Retrying gets the same bytes, so the
//! partition would never move again; skipping them would lose events.
//!
//! | step | what | where |
//! |---|---|---|
//! | classify | a consumer error a retry cannot fix → [`ConsumeFailure`] | [`ConsumeFailure::classify`] |
//! | locate | which partition, from which offset: rust-rdkafka's error names neither, so each candidate partition is read by a probe consumer of its own until it fails the same way or reaches its end | [`locate`] |
//! | hold | the layer pauses that partition, reports it ([`HeldPartitions`]: readiness 503, status, metrics, an error log) and goes on with the others | the speed and batch layers |
//!
//! A partition is held until the layer restarts: the records stay in Kafka,
//! unskipped, for whoever fixes them (or the cluster) to deal with.

use crate::client::Connection;
use crate::kafka::consumer_config;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// A consumer error that means the records at the consumer's position cannot
/// be read: retrying gets the same bytes, so the partition would never move
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot read records from {what}: {code} ({code:?})")]
pub struct ConsumeFailure {
    pub what: String,
    pub code: RDKafkaErrorCode,
}

impl ConsumeFailure {
    /// `Some` when `error` is one a retry cannot fix: an unsupported or
    /// corrupt batch (bad CRC, bad compression, an unknown codec or message
    /// format). Transient errors (a broker restart, a timeout) are `None`:
    /// librdkafka retries them by itself.
    pub fn classify(error: &KafkaError, what: &str) -> Option<Self> {
        let code = match error {
            KafkaError::MessageConsumption(code) | KafkaError::MessageConsumptionFatal(code) => {
                *code
            }
            _ => return None,
        };
        let unreadable = matches!(
            code,
            RDKafkaErrorCode::BadMessage
                | RDKafkaErrorCode::BadCompression
                | RDKafkaErrorCode::NotImplemented
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::UnsupportedCompressionType
                | RDKafkaErrorCode::UnsupportedForMessageFormat
        ) || matches!(error, KafkaError::MessageConsumptionFatal(_));
        unreadable.then(|| Self {
            what: what.to_owned(),
            code,
        })
    }
}

/// Finds the partition of `topic` whose records cannot be read, reading each
/// of `positions` (partition, offset to start at) with a consumer of its own
/// until it fails the same way (that one), reaches the partition's end (not
/// that one), or `timeout` passes. Returns the partition and the offset of
/// its first unreadable batch. Blocking: call from a blocking thread.
pub fn locate(
    kafka: &Connection,
    topic: &str,
    positions: &[(i32, i64)],
    timeout: Duration,
) -> Option<(i32, i64)> {
    let consumer: BaseConsumer = consumer_config(kafka, "lambda-unreadable-probe")
        .create()
        .ok()?;
    let deadline = Instant::now() + timeout;
    for &(partition, from) in positions {
        let Ok((_, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))
        else {
            continue;
        };
        if from >= high {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, partition, KafkaOffset::Offset(from))
            .is_err()
            || consumer.assign(&tpl).is_err()
        {
            continue;
        }
        let mut next = from;
        while next < high && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => next = m.offset() + 1,
                Some(Err(e)) if ConsumeFailure::classify(&e, topic).is_some() => {
                    return Some((partition, next));
                }
                Some(Err(_)) | None => {}
            }
        }
    }
    None
}

/// A partition a layer no longer reads, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldPartition {
    /// The first offset it could not read.
    pub offset: i64,
    pub reason: String,
}

/// The partitions a layer holds, shared by its consumer loop (which adds
/// them) and its HTTP server (which reports them).
#[derive(Debug, Clone, Default)]
pub struct HeldPartitions(Arc<Mutex<BTreeMap<i32, HeldPartition>>>);

impl HeldPartitions {
    pub fn hold(&self, partition: i32, held: HeldPartition) {
        self.lock().insert(partition, held);
    }

    pub fn snapshot(&self) -> BTreeMap<i32, HeldPartition> {
        self.lock().clone()
    }

    pub fn contains(&self, partition: i32) -> bool {
        self.lock().contains_key(&partition)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Why the layer is not ready, if it holds a partition.
    pub fn not_ready_reason(&self) -> Option<String> {
        let held = self.lock();
        let (partition, h) = held.iter().next()?;
        Some(format!(
            "{} partition(s) held; partition {partition} cannot be read from offset {}: {}",
            held.len(),
            h.offset,
            h.reason
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, HeldPartition>> {
        // A poisoned lock means a panic while holding it: a failure, not
        // something to continue past.
        self.0
            .lock()
            .expect("the held-partitions lock is not poisoned")
    }
}

/// How long [`hold_unreadable`] may look for the partition.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a layer does when its consumer returns records it cannot read:
/// locates their partition among `positions` (partition, next offset the
/// layer expects) not yet held, pauses it in `consumer` and records it in
/// `held`, so the other partitions go on. An error from a partition already
/// held (librdkafka may have queued more than one) changes nothing. When no
/// partition can be found, the failure is returned: the layer must stop.
pub async fn hold_unreadable<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    kafka: &Connection,
    topic: &str,
    positions: Vec<(i32, i64)>,
    held: &HeldPartitions,
    failure: ConsumeFailure,
) -> Result<(), ConsumeFailure> {
    let candidates: Vec<(i32, i64)> = positions
        .into_iter()
        .filter(|&(p, _)| !held.contains(p))
        .collect();
    let (k, t) = (kafka.clone(), topic.to_owned());
    let found = tokio::task::spawn_blocking(move || locate(&k, &t, &candidates, LOCATE_TIMEOUT))
        .await
        .ok()
        .flatten();
    let Some((partition, offset)) = found else {
        if held.is_empty() {
            return Err(failure);
        }
        tracing::warn!(topic, code = ?failure.code, "An unreadable batch of a partition already held.");
        return Ok(());
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer.pause(&tpl).map_err(|_| failure.clone())?;
    tracing::error!(
        topic,
        partition,
        offset,
        code = ?failure.code,
        "{failure}; holding this partition until a restart, the others go on."
    );
    held.hold(
        partition,
        HeldPartition {
            offset,
            reason: failure.to_string(),
        },
    );
    Ok(())
}
