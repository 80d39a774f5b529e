//! One way to read Kafka partitions, shared by batch ingestion, the speed
//! layer and the serving layer's follower.
//!
//! A [`PartitionReader`] owns a consumer assigned to partitions at positions
//! its user keeps durably (the master log's end, a checkpoint, the replica's
//! stored positions), never at a Kafka-committed offset. It
//!
//! - **checks the positions** against what the topic holds before reading: a
//!   position past a partition's end (the topic was recreated) or before its
//!   start (retention deleted records not yet read) would lose or duplicate
//!   events whatever happens next, so it is an error, [`ReaderError::OutOfRange`],
//!   never a silent reset (consumers run with `auto.offset.reset=error`);
//! - **resumes exactly**, with the [`Resume`] guard against brokers that
//!   skip the rest of a record batch at the resume offset;
//! - **reads micro-batches** ([`Limits`]): a batch closes at a record or byte
//!   bound, or as soon as nothing more is buffered — after lingering a while
//!   from its first record if asked, longer when that record is old (the
//!   reader is catching up, and nobody waits for an answer sooner);
//! - **reports failures**: records that cannot be read end the batch with
//!   [`ReadBatch::unreadable`] (the layer holds that partition or stops);
//!   a failed seek or an out-of-range position is a [`ReaderError`];
//!
//! Partitions are assigned either by the layer ([`PartitionReader::open`]:
//! every partition of the topic, at the layer's positions) or by a Kafka
//! consumer group ([`PartitionReader::join`]: the group decides which
//! partitions, the layer still decides where each resumes). Either way a
//! change in what the reader owns is an event, [`Assignment`], reported in
//! [`ReadBatch::changes`] before any record read after it.
//!
//! # Layout
//!
//! - this file: the reader and its errors;
//! - `batch`: reading a batch, its limits and what it holds;
//! - `group`: assignment and revocation by a consumer group;
//! - `markers`: positions past transaction markers and aborted records;
//! - `positions`: the check that a partition still holds a position;
//! - `resume`: the mid-batch resume guard.

mod batch;
mod group;
mod markers;
mod positions;
mod resume;

pub use batch::{Limits, ReadBatch};
pub use group::{Assignment, ReaderContext, ResumeAt};
pub use resume::{Resume, ResumeCheck};

use markers::{passed, PASSED_CHECK};
use positions::{check_positions, watermark_client};

use crate::client::Connection;
use crate::telemetry::events::ConsumerErrorRetried;
use crate::unreadable::{hold_unreadable, ConsumeFailure, HeldPartitions};
use lambda_core::{Offset, Partition, Positions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

/// Why a reader cannot go on.
#[derive(Debug, Error)]
pub enum ReaderError {
    #[error("kafka consumer of `{topic}`: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "partition {partition} of `{topic}` resumes at offset {offset}, but the topic holds \
         offsets {low}..{high}: it was recreated, or retention deleted records not yet read. \
         Reading on would lose or duplicate events, so the reader stops"
    )]
    OutOfRange {
        topic: String,
        partition: Partition,
        offset: Offset,
        low: Offset,
        high: Offset,
    },
    #[error("cannot read the offsets partition {partition} of `{topic}` holds: {source}")]
    Watermarks {
        topic: String,
        partition: Partition,
        #[source]
        source: KafkaError,
    },
    #[error("cannot seek partition {partition} of `{topic}` back to {offset}: {source}; stopping rather than skip records")]
    Seek {
        topic: String,
        partition: Partition,
        offset: Offset,
        #[source]
        source: KafkaError,
    },
}

/// A consumer assigned to partitions at known positions.
pub struct PartitionReader {
    consumer: StreamConsumer<ReaderContext>,
    kafka: Connection,
    topic: String,
    resume: Resume,
    /// Where each partition continues: its resume position, then the offset
    /// after the last record delivered.
    next: BTreeMap<Partition, Offset>,
}

impl PartitionReader {
    /// Creates a consumer from `config` and assigns it `positions` of
    /// `topic`, after checking that the topic still holds them.
    pub async fn open(
        config: ClientConfig,
        kafka: &Connection,
        topic: &str,
        positions: impl IntoIterator<Item = (Partition, Offset)>,
    ) -> Result<Self, ReaderError> {
        let mut reader =
            Self::create(config, kafka, topic, ReaderContext::assigned_by_user(topic))?;
        reader.assign(positions.into_iter().collect()).await?;
        Ok(reader)
    }

    /// Creates a consumer from `config` that joins its consumer group
    /// (`group.id`) for `topic`: the group assigns partitions, each resumes
    /// where `resume_at` says, and every assignment and revocation comes as
    /// an [`Assignment`] in [`ReadBatch::changes`].
    pub async fn join(
        config: ClientConfig,
        kafka: &Connection,
        topic: &str,
        resume_at: ResumeAt,
    ) -> Result<Self, ReaderError> {
        let watermarks = watermark_client(kafka, topic)?;
        let context = ReaderContext::group(topic, resume_at, watermarks);
        let reader = Self::create(config, kafka, topic, context)?;
        reader
            .consumer
            .subscribe(&[topic])
            .map_err(|source| reader.kafka_error(source))?;
        Ok(reader)
    }

    fn create(
        config: ClientConfig,
        kafka: &Connection,
        topic: &str,
        context: ReaderContext,
    ) -> Result<Self, ReaderError> {
        let consumer =
            config
                .create_with_context(context)
                .map_err(|source| ReaderError::Kafka {
                    topic: topic.to_owned(),
                    source,
                })?;
        Ok(Self {
            consumer,
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            resume: Resume::new([]),
            next: BTreeMap::new(),
        })
    }

    /// The partitions the reader reads, each with the offset it continues
    /// at.
    pub fn positions(&self) -> &BTreeMap<Partition, Offset> {
        &self.next
    }

    /// (Re)assigns every partition to read, each at its position: after
    /// [`Self::open`], when the topic gained partitions.
    pub async fn assign(&mut self, positions: Vec<(Partition, Offset)>) -> Result<(), ReaderError> {
        let starts = check_positions(&self.kafka, &self.topic, &positions).await?;
        let mut resume = Resume::new(positions.iter().copied());
        let mut tpl = TopicPartitionList::new();
        for &(p, offset) in &positions {
            resume.set_log_start(p, starts.get(&p).copied().unwrap_or(0));
            let seek = resume.seek_offset(p);
            tpl.add_partition_offset(&self.topic, p, KafkaOffset::Offset(seek))
                .map_err(|source| self.kafka_error(source))?;
            tracing::info!(topic = %self.topic, partition = p, offset, "Resuming at a durable position.");
        }
        self.consumer
            .assign(&tpl)
            .map_err(|source| self.kafka_error(source))?;
        self.resume = resume;
        self.next = positions.into_iter().collect();
        Ok(())
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Holds the partition whose records cannot be read (see
    /// [`crate::unreadable`]), probing from each partition's position; an
    /// error when none could be found.
    pub async fn hold(
        &self,
        held: &HeldPartitions,
        failure: ConsumeFailure,
    ) -> Result<(), ConsumeFailure> {
        let positions = self.next.iter().map(|(&p, &o)| (p, o)).collect();
        hold_unreadable(
            &self.consumer,
            &self.kafka,
            &self.topic,
            positions,
            held,
            failure,
        )
        .await
    }

    /// Pauses `partitions` (held ones, after a new assignment).
    pub fn pause(
        &self,
        partitions: impl IntoIterator<Item = Partition>,
    ) -> Result<(), ReaderError> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer
            .pause(&tpl)
            .map_err(|source| self.kafka_error(source))
    }

    /// Commits `positions` to the consumer group, for monitoring tools only:
    /// the reader never resumes from them. Failures are harmless.
    pub fn commit_for_monitoring(&self, positions: &Positions) {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions.iter() {
            let _ = tpl.add_partition_offset(&self.topic, p, KafkaOffset::Offset(o));
        }
        if let Err(error) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(%error, "Monitoring commit failed (harmless: positions are kept durably elsewhere).");
        }
    }

    /// Closes the consumer off the runtime (see
    /// [`crate::kafka::close_off_runtime`]).
    pub async fn close(self) {
        crate::kafka::close_off_runtime(self.consumer).await;
    }

    /// Seeks the partition of `m`, received with a rebalance not yet
    /// reported, back to it, if the reader still owns that partition after
    /// the rebalance (a revoked partition's record is not its to read).
    fn read_again(&self, m: &KafkaResult<BorrowedMessage<'_>>) -> Result<(), ReaderError> {
        let Ok(m) = m else {
            // An error is met again when the partition is fetched again.
            return Ok(());
        };
        let p = m.partition();
        if self
            .consumer
            .context()
            .owns_after_queued(p, self.next.contains_key(&p))
        {
            self.seek_back(p, m.offset())?;
        }
        Ok(())
    }

    /// Seeks `partition` back to `offset`, to read it again.
    fn seek_back(&self, partition: Partition, offset: Offset) -> Result<(), ReaderError> {
        self.consumer
            .seek(
                &self.topic,
                partition,
                KafkaOffset::Offset(offset),
                SEEK_TIMEOUT,
            )
            .map_err(|source| ReaderError::Seek {
                topic: self.topic.clone(),
                partition,
                offset,
                source,
            })
    }

    fn kafka_error(&self, source: KafkaError) -> ReaderError {
        ReaderError::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }
}

const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
