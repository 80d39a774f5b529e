//! Ingestion: every record of the events topic into the master log, exactly
//! once.
//!
//! Delivery guarantee: exactly-once into the master log. The consumer is
//! assigned every partition at the log's own end (last offset + 1), never at a
//! Kafka-committed position; a batch counts as ingested once appended and
//! fsynced; redelivered offsets are skipped by the log. Kafka commits happen
//! afterwards and only for monitoring (`kafka-consumer-groups --describe`).
//!
//! Records that are not events are still appended (marked), and sent to the
//! dead-letter topic *before* the append, so a crash in between re-sends rather
//! than loses them (at-least-once there; the headers name the origin offset).

use crate::master_log::chunks;
use crate::master_log::{LogError, MasterLog, Record, RecordKind, ToSeal};
use crate::metrics::BatchMetrics;
use common::dead_letter::DeadLetterSink;
use common::kafka::{bulk_consumer_config, decode_message, topic_partitions};
use common::now_ms;
use common::reader::{Assignment, Limits, PartitionReader, ReaderError, ResumeAt};
use common::retry::{until_durable, DurableWrite, Stalls};
use common::shutdown::CancellationToken;
use common::store::Store;
use common::sync::LockOrStop;
use common::telemetry::events::{RecordDeadLettered, RecordsUnreadable};
use common::unreadable::{ConsumeFailure, HeldPartitions};
use lambda_core::event::DecodeError;
use lambda_core::window::WindowSettings;
use lambda_core::{Offset, Partition, Positions};
use rdkafka::message::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The consumer group the batch layer reports its position under.
pub const GROUP: &str = "lambda-batch";

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("{0}; no partition could be found to hold, so ingestion stops")]
    Unreadable(#[from] ConsumeFailure),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error("topic `{topic}` has no partitions visible on {brokers}")]
    NoTopic { topic: String, brokers: String },
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub kafka: common::client::Connection,
    pub topic: String,
    pub max_event_bytes: usize,
    /// A batch closes at this many records …
    pub batch_records: usize,
    /// … or this long after its first record.
    pub batch_wait: Duration,
    /// Event-time settings: which timestamps are too far in the future.
    pub windows: WindowSettings,
    /// The shared store chunks are sealed into, if any.
    pub store: Option<Store>,
    /// Share the partitions with the other batch instances in consumer
    /// group [`GROUP`] (else read every partition).
    pub share_partitions: bool,
}

/// One received record, owned, on its way into the log.
struct Pending {
    partition: Partition,
    offset: Offset,
    timestamp_ms: Option<i64>,
    kind: RecordKind,
    payload: Vec<u8>,
}

/// Consumes until `token` is cancelled. Errors writing the log (a full disk)
/// are reported and the same batch is retried, so consumption pauses rather
/// than losing records.
pub async fn run(
    config: IngestConfig,
    log: Arc<Mutex<MasterLog>>,
    dead_letters: DeadLetterSink,
    metrics: Arc<BatchMetrics>,
    held: HeldPartitions,
    stalls: Stalls,
    token: CancellationToken,
) -> Result<(), IngestError> {
    let consumer = bulk_consumer_config(&config.kafka, GROUP);
    let (mut partitions, mut reader) = if config.share_partitions {
        // The group says which partitions this instance owns; each resumes
        // at the log's end for it (the store's chunks included: another
        // owner's, as last listed).
        let resume_at: ResumeAt = {
            let log = Arc::clone(&log);
            Arc::new(move |p| log.lock_or_stop("the master log").end_offsets().get(p))
        };
        log.lock_or_stop("the master log")
            .set_owned(BTreeSet::new());
        let reader =
            PartitionReader::join(consumer, &config.kafka, &config.topic, resume_at).await?;
        (0, reader)
    } else {
        let (partitions, resume_at) = positions(&config, &log).await?;
        let reader =
            PartitionReader::open(consumer, &config.kafka, &config.topic, resume_at).await?;
        (partitions, reader)
    };
    let mut last_metadata_check = Instant::now();
    let mut last_store_check = Instant::now();
    let limits = Limits {
        max_records: config.batch_records,
        max_bytes: BATCH_MAX_BYTES,
        linger: config.batch_wait,
        catch_up: None,
        idle: None,
    };

    // Chunks the log passed before a stop (or before the store was set).
    if let Some(store) = &config.store {
        seal(&log, store, &metrics).await;
    }
    loop {
        let Some(read) = reader.next_batch(&limits, &token).await? else {
            break;
        };
        if !read.changes.is_empty() {
            let mut log = log.lock_or_stop("the master log");
            let mut owned = log.owned().cloned().unwrap_or_default();
            for change in &read.changes {
                match change {
                    Assignment::Assigned(placed) => owned.extend(placed.iter().map(|(p, _)| p)),
                    Assignment::Revoked(revoked) => owned.retain(|p| !revoked.contains(p)),
                }
            }
            tracing::info!(?owned, "Partitions owned by this batch instance changed.");
            log.set_owned(owned);
        }
        // Another owner's chunks: at once for a partition just assigned
        // (its records below them are skipped, not appended again), and
        // every few seconds for the partitions this instance may own next.
        let assigned = read
            .changes
            .iter()
            .any(|c| matches!(c, Assignment::Assigned(_)));
        if let (true, Some(store)) = (
            config.share_partitions && (assigned || last_store_check.elapsed() > STORE_CHECK_EVERY),
            &config.store,
        ) {
            last_store_check = Instant::now();
            refresh_sealed(&log, store, &metrics).await;
        }
        metrics.consumer_errors.add(read.transient_errors as u64);
        let mut batch = Vec::with_capacity(read.records.len());
        let mut bad = Vec::new();
        for m in &read.records {
            let (record, error) = pending(m, &config, &metrics);
            if let Some(error) = error {
                bad.push((m, error));
            }
            batch.push(record);
        }
        // Every dead letter is in the broker before its record is appended.
        dead_letters
            .send_all_until_delivered(&bad, &token, &metrics.dead_letter_failures)
            .await;
        // Positions past transaction markers: a marker record at the last
        // offset passed, after the partition's records in this batch.
        batch.extend(read.passed.iter().map(|&(partition, next)| Pending {
            partition,
            offset: next - 1,
            timestamp_ms: None,
            kind: RecordKind::Marker,
            payload: Vec::new(),
        }));
        let unreadable = read.unreadable;
        if !batch.is_empty() {
            append_with_retry(&log, batch, &metrics, &stalls, &token, &reader).await;
            if let Some(store) = &config.store {
                seal(&log, store, &metrics).await;
            }
        }
        if let Some(failure) = unreadable {
            // What was read before it is in the master log; the unreadable
            // records stay in Kafka, unskipped, their partition held.
            RecordsUnreadable {
                topic: reader.topic(),
                failure: &failure,
            }
            .emit(&metrics.unreadable_batches);
            reader.hold(&held, failure).await?;
            metrics.held_partitions.set(held.len() as i64);
        }
        if !config.share_partitions && last_metadata_check.elapsed() > Duration::from_secs(30) {
            last_metadata_check = Instant::now();
            let kafka = config.kafka.clone();
            let topic = config.topic.clone();
            let now = tokio::task::spawn_blocking(move || {
                topic_partitions(&kafka, &topic, Duration::from_secs(5))
            })
            .await
            .ok()
            .flatten()
            .unwrap_or(partitions);
            if now > partitions {
                tracing::info!(before = partitions, now, "New partitions; reassigning.");
                let resume_at;
                (partitions, resume_at) = positions(&config, &log).await?;
                reader.assign(resume_at).await?;
                // A new assignment resumes every partition: hold the held
                // ones again.
                reader.pause(held.snapshot().into_keys())?;
            }
        }
    }
    reader.close().await;
    tracing::info!("Ingestion stopped.");
    Ok(())
}

/// How often an instance sharing the partitions lists the store for chunks
/// other instances sealed.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Takes in the chunks the store holds (see `MasterLog::refresh_sealed`);
/// a store that fails is tried again at the next check, loudly.
async fn refresh_sealed(log: &Mutex<MasterLog>, store: &Store, metrics: &BatchMetrics) {
    let refreshed = match chunks::list(store).await {
        Ok(listed) => log.lock_or_stop("the master log").refresh_sealed(listed),
        Err(error) => {
            metrics.store_errors.inc();
            tracing::warn!(%error, "Cannot list the store's chunks; trying again later.");
            return;
        }
    };
    match refreshed {
        Ok(partitions) if !partitions.is_empty() => {
            tracing::debug!(?partitions, "Chunks other instances sealed taken in.");
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "Cannot delete a local log the store has overtaken; trying again later.");
        }
    }
}

/// Chunks taken from the log per round of sealing (each round takes the
/// log's lock once).
const SEAL_AT_ONCE: usize = 4;

/// Seals the chunks the log has passed into the store (see
/// `master_log::chunks`). A chunk the store already holds (another owner
/// sealed it) counts as sealed. A store that fails is tried again after the
/// next batch, loudly (a warning and `lambda_batch_store_errors_total`):
/// the local log keeps every record meanwhile, so nothing waits on it.
async fn seal(log: &Arc<Mutex<MasterLog>>, store: &Store, metrics: &BatchMetrics) {
    loop {
        let work = log.lock_or_stop("the master log").to_seal(SEAL_AT_ONCE);
        if work.is_empty() {
            // The local log keeps only what the store does not hold.
            match log.lock_or_stop("the master log").trim() {
                Ok(0) => {}
                Ok(trimmed) => tracing::info!(trimmed, "Deleted local segments the store holds."),
                Err(error) => {
                    tracing::warn!(%error, "Cannot delete a local segment the store holds; trying again later.")
                }
            }
            return;
        }
        if !seal_round(log, store, metrics, work).await {
            return;
        }
    }
}

/// Seals `work`; false if the store failed (the rest waits for the next
/// batch).
async fn seal_round(
    log: &Arc<Mutex<MasterLog>>,
    store: &Store,
    metrics: &BatchMetrics,
    work: Vec<ToSeal>,
) -> bool {
    for ToSeal {
        partition,
        first,
        end,
        segments,
    } in work
    {
        let encoded = tokio::task::spawn_blocking(move || chunks::encode(&segments)).await;
        let failed = |error: &dyn std::fmt::Display| {
            metrics.store_errors.inc();
            tracing::warn!(partition, first, end, %error, "Cannot seal a chunk into the store; retrying after the next batch.");
        };
        let bytes = match encoded {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                failed(&error);
                return false;
            }
            Err(error) => {
                failed(&error);
                return false;
            }
        };
        let key = chunks::chunk_key(partition, first, end);
        match store.put_new(&key, bytes).await {
            Ok(written) => {
                if written {
                    metrics.chunks_sealed.inc();
                }
                let chunk = chunks::Chunk { first, end, key };
                log.lock_or_stop("the master log")
                    .note_sealed(partition, chunk);
            }
            Err(error) => {
                failed(&error);
                return false;
            }
        }
    }
    true
}

/// A batch closes at this many payload bytes whatever its record count.
const BATCH_MAX_BYTES: usize = 16 << 20;

/// How many partitions the topic has, and where each resumes: the master
/// log's end.
async fn positions(
    config: &IngestConfig,
    log: &Mutex<MasterLog>,
) -> Result<(usize, Vec<(Partition, Offset)>), IngestError> {
    let kafka = config.kafka.clone();
    let topic = config.topic.clone();
    let count = tokio::task::spawn_blocking(move || {
        topic_partitions(&kafka, &topic, Duration::from_secs(30))
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| IngestError::NoTopic {
        topic: config.topic.clone(),
        brokers: config.kafka.to_string(),
    })?;
    let mut log = log.lock_or_stop("the master log");
    log.set_owned((0..count as Partition).collect());
    let ends = log.end_offsets();
    Ok((
        count,
        (0..count as Partition).map(|p| (p, ends.get(p))).collect(),
    ))
}

/// A record as the master log keeps it, with the reason when it is not an
/// event (the caller dead-letters it).
fn pending<M: Message>(
    message: &M,
    config: &IngestConfig,
    metrics: &BatchMetrics,
) -> (Pending, Option<DecodeError>) {
    let decoded = decode_message(message, config.max_event_bytes);
    let timestamp_ms = message.timestamp().to_millis();
    let future = timestamp_ms.is_some_and(|t| config.windows.is_future(t, now_ms()));
    if future && decoded.is_ok() {
        metrics.future_timestamps.inc();
    }
    let kind = RecordKind::of(&decoded, future);
    if let Err(error) = &decoded {
        RecordDeadLettered {
            partition: message.partition(),
            offset: message.offset(),
            error,
            kept: true,
        }
        .emit(&metrics.dead_letters);
    }
    let record = Pending {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms,
        kind,
        payload: message.payload().unwrap_or_default().to_vec(),
    };
    (record, decoded.err())
}

#[derive(Debug, Error)]
enum AppendFailure {
    #[error(transparent)]
    Log(LogError),
    #[error("the runtime is shutting down")]
    RuntimeStopping,
}

async fn append_with_retry(
    log: &Arc<Mutex<MasterLog>>,
    batch: Vec<Pending>,
    metrics: &BatchMetrics,
    stalls: &Stalls,
    token: &CancellationToken,
    reader: &PartitionReader,
) {
    let batch = Arc::new(batch);
    // A failed attempt may leave part of the batch in the log (a partition
    // written before another failed), which the retry then skips as already
    // there; so what the batch added is measured against the log's end before
    // the first attempt, not summed per attempt.
    let before = log.lock_or_stop("the master log").end_offsets();
    let attempt = || {
        let (log, records) = (Arc::clone(log), Arc::clone(&batch));
        async move {
            match tokio::task::spawn_blocking(move || append_batch(&log, &records)).await {
                Ok(appended) => appended.map_err(AppendFailure::Log),
                // A panic half-way through an append may have left the log
                // half written (and its lock poisoned): the layer stops, and
                // a restart recovers the log from disk.
                Err(join_error) => match join_error.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(_) => Err(AppendFailure::RuntimeStopping),
                },
            }
        }
    };
    let write = DurableWrite {
        what: "the master log",
        failures: &metrics.log_write_errors,
        stalls,
    };
    match until_durable(token, write, attempt).await {
        Some(ends) => {
            let added = added_by(&batch, &before, &ends);
            let records = batch
                .iter()
                .filter(|r| r.kind != RecordKind::Marker)
                .count();
            metrics.records_ingested.add(added as u64);
            metrics.duplicates_skipped.add((records - added) as u64);
            reader.commit_for_monitoring(&ends);
        }
        None => tracing::warn!(
            records = batch.len(),
            "Stopping with an unwritten batch; it will be consumed again on restart."
        ),
    }
}

/// Appends a batch (grouped by partition, in offset order) and applies the
/// fsync policy, under one hold of the lock, so that a cut taken by a
/// recompute never includes records that are not durable.
fn append_batch(log: &Mutex<MasterLog>, batch: &[Pending]) -> Result<Positions, LogError> {
    let mut by_partition: BTreeMap<Partition, Vec<&Pending>> = BTreeMap::new();
    for p in batch {
        by_partition.entry(p.partition).or_default().push(p);
    }
    let mut log = log.lock_or_stop("the master log");
    for (partition, records) in by_partition {
        log.append(
            partition,
            records.into_iter().map(|r| Record {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                kind: r.kind,
                payload: &r.payload,
            }),
        )?;
    }
    log.commit()?;
    Ok(log.end_offsets())
}

/// How many records of `batch` lie between the log's ends `before` and
/// `after`: the ones this batch added (the rest were already there).
/// Markers are not records of the topic.
fn added_by(batch: &[Pending], before: &Positions, after: &Positions) -> usize {
    batch
        .iter()
        .filter(|r| r.kind != RecordKind::Marker)
        .filter(|r| (before.get(r.partition)..after.get(r.partition)).contains(&r.offset))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(partition: Partition, offset: Offset) -> Pending {
        Pending {
            partition,
            offset,
            timestamp_ms: None,
            kind: RecordKind::Event,
            payload: Vec::new(),
        }
    }

    #[test]
    fn a_batch_counts_what_it_added_across_a_partial_first_attempt() {
        // Partition 0 held 0..10 and partition 1 was empty; the batch carries
        // 8..14 of partition 0 (8 and 9 redelivered) and 0..3 of partition 1.
        // Whether or not a failed attempt wrote partition 0 first, the batch
        // added 4 + 3 records.
        let batch: Vec<Pending> = (8..14)
            .map(|o| pending(0, o))
            .chain((0..3).map(|o| pending(1, o)))
            .collect();
        let before: Positions = [(0, 10)].into_iter().collect();
        let after: Positions = [(0, 14), (1, 3)].into_iter().collect();
        assert_eq!(added_by(&batch, &before, &after), 7);
        assert_eq!(added_by(&batch, &after, &after), 0);
    }
}
