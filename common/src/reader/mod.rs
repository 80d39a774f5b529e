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
//! - this file: the reader, its limits, batches and errors;
//! - `group`: assignment and revocation by a consumer group;
//! - `markers`: positions past transaction markers and aborted records;
//! - `positions`: the check that a partition still holds a position;
//! - `resume`: the mid-batch resume guard.

mod group;
mod markers;
mod positions;
mod resume;

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

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At this many records …
    pub max_records: usize,
    /// … or this many payload bytes …
    pub max_bytes: usize,
    /// … or when nothing more is buffered, after waiting this long from the
    /// batch's first record for more (zero: what is at hand).
    pub linger: Duration,
    /// When the batch's first record is older than `.0`, the reader is
    /// catching up: it lingers at least `.1`, so the fixed cost of a batch
    /// (a checkpoint, a publication) is shared by many records.
    pub catch_up: Option<(Duration, Duration)>,
    /// With no record at all for this long, an empty batch (so the user can
    /// do periodic work); `None` waits for a record or cancellation.
    pub idle: Option<Duration>,
}

/// One batch of records, in the order each partition holds them.
pub struct ReadBatch<'a> {
    /// Changes in the partitions the reader owns, in order, that took
    /// effect before `records` (always empty for [`PartitionReader::open`]).
    /// Every record comes from a partition owned for the whole batch.
    pub changes: Vec<Assignment>,
    pub records: Vec<BorrowedMessage<'a>>,
    /// Payload bytes of `records`.
    pub bytes: usize,
    /// Redelivered records below a resume position, dropped.
    pub skipped: usize,
    /// Consumer errors a retry fixes (librdkafka retries them itself).
    pub transient_errors: usize,
    /// Set when the consumer returned records it cannot read: the batch
    /// ends before them, and the layer holds their partition or stops.
    pub unreadable: Option<ConsumeFailure>,
    /// Partitions whose position moved past offsets that hold no record for
    /// a read-committed reader — a transaction's marker, an aborted
    /// transaction's records — each with the offset it continues at (past
    /// its records in `records`). The layer takes it as its position, as if
    /// it had read records there: without it a partition that ends with a
    /// marker would never be read to its end.
    pub passed: Vec<(Partition, Offset)>,
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

    /// Reads the next batch; `None` once `token` is cancelled.
    pub async fn next_batch(
        &mut self,
        limits: &Limits,
        token: &crate::shutdown::CancellationToken,
    ) -> Result<Option<ReadBatch<'_>>, ReaderError> {
        self.next_batch_while(limits, token, std::future::ready(()))
            .await
    }

    /// [`next_batch`](Self::next_batch), but a batch with records stays open
    /// past its linger until `busy` completes: records that arrive meanwhile
    /// join it instead of starting a batch of their own. For a reader whose
    /// previous batch is still on its way (being checkpointed): batches then
    /// grow with the load, and an idle one still closes at once.
    pub async fn next_batch_while(
        &mut self,
        limits: &Limits,
        token: &crate::shutdown::CancellationToken,
        busy: impl std::future::Future<Output = ()>,
    ) -> Result<Option<ReadBatch<'_>>, ReaderError> {
        tokio::pin!(busy);
        let mut busy_done = false;
        let mut batch = ReadBatch {
            changes: Vec::new(),
            records: Vec::new(),
            bytes: 0,
            skipped: 0,
            transient_errors: 0,
            unreadable: None,
            passed: Vec::new(),
        };
        let idle = tokio::time::sleep(limits.idle.unwrap_or(Duration::MAX / 4));
        tokio::pin!(idle);
        let mut markers = tokio::time::interval(PASSED_CHECK);
        markers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let first = loop {
            // Changes queued by a rebalance come first, in a batch of their
            // own: the layer learns of them before it is handed a record.
            for change in self.consumer.context().take()? {
                batch
                    .changes
                    .push(change.apply(&mut self.resume, &mut self.next));
            }
            if !batch.changes.is_empty() {
                return Ok(Some(batch));
            }
            let consumer = &self.consumer;
            let context = consumer.context();
            tokio::select! {
                _ = token.cancelled() => return Ok(None),
                _ = &mut idle, if limits.idle.is_some() => {
                    batch.passed = passed(&self.consumer, &self.topic, &self.resume, &mut self.next);
                    return Ok(Some(batch));
                }
                _ = markers.tick() => {
                    // No record, but the position may have moved past a
                    // marker (the last thing a transactional producer
                    // writes): a batch of its own.
                    batch.passed = passed(&self.consumer, &self.topic, &self.resume, &mut self.next);
                    if !batch.passed.is_empty() {
                        return Ok(Some(batch));
                    }
                    continue;
                }
                _ = context.wake.notified() => continue,
                m = consumer.recv() => {
                    if !context.has_queued() {
                        break m;
                    }
                    // A rebalance ran inside this `recv`: a record that came
                    // with it is read again after the change is reported.
                    self.read_again(&m)?;
                }
            }
        };
        let consumer = &self.consumer;
        let context = consumer.context();
        let started = Instant::now();
        // Judged once per batch, from its first record (it reads the clock).
        let mut until: Option<Instant> = None;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Ok(m)) => {
                    let (p, offset) = (m.partition(), m.offset());
                    match self.resume.check(p, offset) {
                        ResumeCheck::Accept => {
                            self.next.insert(p, offset + 1);
                            batch.bytes += m.payload_len();
                            if until.is_none() {
                                until = Some(started + linger_for(limits, &m));
                            }
                            batch.records.push(m);
                        }
                        ResumeCheck::Skip => batch.skipped += 1,
                        ResumeCheck::SeekBack(to) => {
                            drop(m);
                            self.seek_back(p, to)?;
                        }
                    }
                }
                Some(Err(error)) => {
                    if let KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset) = error
                    {
                        // A position the topic no longer holds (retention
                        // overtook the reader): name it, then stop.
                        let positions: Vec<_> = self.next.iter().map(|(&p, &o)| (p, o)).collect();
                        check_positions(&self.kafka, &self.topic, &positions).await?;
                    }
                    if let Some(failure) = ConsumeFailure::classify(&error, &self.topic) {
                        batch.unreadable = Some(failure);
                        break;
                    }
                    batch.transient_errors += 1;
                    ConsumerErrorRetried {
                        topic: &self.topic,
                        error: &error,
                    }
                    .emit();
                }
                None => {}
            }
            if batch.records.len() >= limits.max_records || batch.bytes >= limits.max_bytes {
                break;
            }
            // A record already buffered is taken even past the deadline
            // (tokio's timeout polls the future first), so a zero linger
            // means "what the consumer has at hand".
            let deadline = until.unwrap_or(started);
            let received = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => Some(m),
                Err(_) if !busy_done => tokio::select! {
                    // Done first: with nothing buffered, a batch closes as
                    // soon as nothing holds it open.
                    biased;
                    () = &mut busy => {
                        busy_done = true;
                        None
                    }
                    m = consumer.recv() => Some(m),
                },
                Err(_) => None,
            };
            match received {
                Some(m) if context.has_queued() => {
                    // A rebalance: the batch ends before it (see above).
                    self.read_again(&m)?;
                    break;
                }
                Some(m) => next = Some(m),
                None => break,
            }
        }
        // Not when a rebalance ended the batch: the record received with it
        // moved the position of a partition that may be revoked, unread.
        if !self.consumer.context().has_queued() {
            batch.passed = passed(&self.consumer, &self.topic, &self.resume, &mut self.next);
        }
        Ok(Some(batch))
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

/// How long a batch whose first record is `m` waits for more.
fn linger_for(limits: &Limits, m: &BorrowedMessage<'_>) -> Duration {
    let catching_up = limits.catch_up.and_then(|(lag, wait)| {
        let t = m.timestamp().to_millis()?;
        (crate::metrics::since_timestamp(t) > lag).then_some(wait)
    });
    limits.linger.max(catching_up.unwrap_or_default())
}
