//! Partitions assigned by a Kafka consumer group: the rebalance callback
//! that places each newly assigned partition at its user's durable position,
//! and the changes it hands to the reader.
//!
//! The group decides *which* partitions a reader owns; the reader's user
//! still decides *where* each one resumes ([`ResumeAt`]), never the group's
//! committed offsets. The callback runs inside librdkafka's poll (in
//! [`super::PartitionReader::next_batch`]): it asks `ResumeAt` for each new
//! partition's position, checks it against what the partition holds, seeks a
//! margin earlier for the mid-batch resume guard, assigns, and queues the
//! change; the reader applies queued changes between batches, so every record
//! of a batch comes from a partition the reader owned for the whole batch.
//!
//! The protocol is the eager one (librdkafka's default range/round-robin
//! assignors): a rebalance revokes every partition, then assigns the new set.

use super::positions::check_positions_with;
use super::{ReaderError, Resume};
use crate::sync::LockOrStop;
use lambda_core::{Offset, Partition};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A change in the partitions a reader owns, reported in
/// [`super::ReadBatch::changes`] before the batch's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// These partitions are now the reader's, each read from the position
    /// [`ResumeAt`] gave.
    Assigned(Vec<(Partition, Offset)>),
    /// These partitions are no longer the reader's: another member of the
    /// group may own them already.
    Revoked(Vec<Partition>),
}

/// Where a partition the group assigns resumes: the position its user keeps
/// durably (the master log's end, a checkpoint). Called inside the
/// rebalance, so it must answer from local state, quickly.
pub type ResumeAt = Arc<dyn Fn(Partition) -> Offset + Send + Sync>;

/// A change with what the reader needs to apply it.
pub(super) enum Change {
    Assigned(Vec<Placed>),
    Revoked(Vec<Partition>),
}

/// A newly assigned partition: where it resumes, and where its log starts.
pub(super) struct Placed {
    pub partition: Partition,
    pub offset: Offset,
    pub log_start: Offset,
}

impl Change {
    /// Applies the change to the reader's resume guard and positions, and
    /// says what it was.
    pub(super) fn apply(
        self,
        resume: &mut Resume,
        next: &mut std::collections::BTreeMap<Partition, Offset>,
    ) -> Assignment {
        match self {
            Change::Assigned(placed) => {
                for p in &placed {
                    resume.add(p.partition, p.offset, p.log_start);
                    next.insert(p.partition, p.offset);
                }
                Assignment::Assigned(placed.iter().map(|p| (p.partition, p.offset)).collect())
            }
            Change::Revoked(partitions) => {
                for &p in &partitions {
                    resume.remove(p);
                    next.remove(&p);
                }
                Assignment::Revoked(partitions)
            }
        }
    }
}

/// The reader's consumer context: inert for a reader whose partitions its
/// user assigns, the rebalance callback for one in a group.
pub struct ReaderContext {
    topic: String,
    /// For a reader in a group: where partitions resume, and a client to
    /// check those positions with (the group's consumer reads committed
    /// records, and its watermark query would answer the last stable offset).
    group: Option<(ResumeAt, BaseConsumer)>,
    queued: Mutex<Queued>,
    /// Whether `queued` holds anything: checked after every record, so it
    /// must not cost a lock.
    any_queued: AtomicBool,
    /// Woken when a change is queued, so a reader waiting for records
    /// reports it at once.
    pub(super) wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Queued {
    changes: Vec<Change>,
    /// A rebalance the reader cannot follow: it stops.
    error: Option<ReaderError>,
}

impl ReaderContext {
    pub(super) fn assigned_by_user(topic: &str) -> Self {
        Self::new(topic, None)
    }

    pub(super) fn group(topic: &str, resume_at: ResumeAt, watermarks: BaseConsumer) -> Self {
        Self::new(topic, Some((resume_at, watermarks)))
    }

    fn new(topic: &str, group: Option<(ResumeAt, BaseConsumer)>) -> Self {
        Self {
            topic: topic.to_owned(),
            group,
            queued: Mutex::new(Queued::default()),
            any_queued: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The changes queued since the last call, or the error that ended the
    /// reader's membership.
    pub(super) fn take(&self) -> Result<Vec<Change>, ReaderError> {
        let mut queued = self.lock();
        self.any_queued.store(false, Ordering::Release);
        match queued.error.take() {
            Some(error) => Err(error),
            None => Ok(std::mem::take(&mut queued.changes)),
        }
    }

    pub(super) fn has_queued(&self) -> bool {
        self.any_queued.load(Ordering::Acquire)
    }

    /// Whether the reader owns `partition` once the queued changes apply,
    /// given whether it owns it now.
    pub(super) fn owns_after_queued(&self, partition: Partition, owns_now: bool) -> bool {
        self.lock()
            .changes
            .iter()
            .fold(owns_now, |owns, change| match change {
                Change::Assigned(placed) if placed.iter().any(|p| p.partition == partition) => true,
                Change::Revoked(revoked) if revoked.contains(&partition) => false,
                _ => owns,
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued
            .lock_or_stop("a reader's queued assignment changes")
    }

    fn queue(&self, change: Result<Change, ReaderError>) {
        {
            let mut queued = self.lock();
            match change {
                Ok(change) => queued.changes.push(change),
                Err(error) => {
                    queued.error.get_or_insert(error);
                }
            }
            self.any_queued.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Places every partition of `tpl` at its user's position (checked
    /// against what the partition holds), a resume margin earlier.
    fn place(
        &self,
        (resume_at, watermarks): &(ResumeAt, BaseConsumer),
        tpl: &mut TopicPartitionList,
    ) -> Result<Vec<Placed>, ReaderError> {
        let positions: Vec<(Partition, Offset)> = tpl
            .elements()
            .iter()
            .map(|e| (e.partition(), resume_at(e.partition())))
            .collect();
        let starts = check_positions_with(watermarks, &self.topic, &positions)?;
        let mut placed = Vec::with_capacity(positions.len());
        for (partition, offset) in positions {
            let low = starts[&partition];
            let mut resume = Resume::new([(partition, offset)]);
            resume.set_log_start(partition, low);
            tpl.set_partition_offset(
                &self.topic,
                partition,
                KafkaOffset::Offset(resume.seek_offset(partition)),
            )
            .map_err(|source| self.kafka_error(source))?;
            tracing::info!(topic = %self.topic, partition, offset, "Assigned by the group; resuming at a durable position.");
            placed.push(Placed {
                partition,
                offset,
                log_start: low,
            });
        }
        Ok(placed)
    }

    fn kafka_error(&self, source: KafkaError) -> ReaderError {
        ReaderError::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }
}

impl ClientContext for ReaderContext {}

impl ConsumerContext for ReaderContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let Some(group) = &self.group else {
            return;
        };
        let change = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.place(group, tpl).and_then(|placed| {
                    consumer
                        .assign(tpl)
                        .map_err(|source| self.kafka_error(source))?;
                    Ok(Change::Assigned(placed))
                })
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(topic = %self.topic, ?partitions, "Revoked by the group.");
                consumer
                    .unassign()
                    .map_err(|source| self.kafka_error(source))
                    .map(|()| Change::Revoked(partitions))
            }
            other => {
                let _ = consumer.unassign();
                Err(self.kafka_error(KafkaError::Rebalance(other.into())))
            }
        };
        self.queue(change);
    }
}
