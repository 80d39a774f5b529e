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
//! goes to every realtime partition (see [`common::realtime`]), so serving
//! layers know when they hold a whole checkpoint.

use crate::cuts::fetch_batch_cut;
use crate::metrics::SpeedMetrics;
use crate::store::{Checkpoint, CountKey, RealtimeStore, StoreError, StoreStats};
use common::dead_letter::DeadLetterSink;
use common::event::decode_message;
use common::kafka::{
    burst_producer_config, close_off_runtime, consumer_config, send_all, wait_for_partitions,
    Resume, ResumeCheck,
};
use common::metrics::since_timestamp;
use common::realtime::{route, Packer, Watermark, UPSERTS_KEY, WATERMARK_KEY};
use common::shutdown::CancellationToken;
use common::sync::LockOrStop;
use common::unreadable::{hold_unreadable, ConsumeFailure, HeldPartitions};
use common::{BucketKey, BucketSize, Cut, Offset, Partition, Tokenizer};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
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

    // Publication runs beside consumption: a checkpointed micro-batch's
    // upserts go out while the next one is counted, and whatever checkpoints
    // queued up meanwhile go out together in the next round (one round of
    // upserts and one of watermarks however many micro-batches it carries),
    // so the publisher keeps up with small micro-batches. The channel is
    // short, so a slow broker still slows consumption (backpressure, bounded
    // memory).
    let (publish_tx, mut publish_rx) = tokio::sync::mpsc::channel::<Publication>(8);
    let publisher = {
        let (topic, metrics, token) = (
            config.realtime_topic.clone(),
            Arc::clone(&metrics),
            token.clone(),
        );
        tokio::spawn(async move {
            while let Some(first) = publish_rx.recv().await {
                let mut queued = Vec::new();
                while let Ok(later) = publish_rx.try_recv() {
                    queued.push(later);
                }
                let publication = first.coalesce(queued);
                let out = Outbox {
                    producer: &producer,
                    topic: &topic,
                    metrics: &metrics,
                    token: &token,
                };
                let watermark = Watermark {
                    positions: publication.positions,
                    oldest_event_ms: publication.oldest_event_ms,
                };
                if out.upserts(&publication.upserts, realtime_partitions).await
                    && out.watermark(&watermark, realtime_partitions).await
                {
                    metrics
                        .publish_stage
                        .observe(publication.checkpointed_at.elapsed());
                }
            }
        })
    };

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

/// A checkpointed micro-batch's changed counts and the positions it reached.
struct Publication {
    upserts: Vec<(CountKey, u64)>,
    positions: Cut,
    /// The oldest counted event's record timestamp (none for the start-up
    /// re-publication).
    oldest_event_ms: Option<i64>,
    checkpointed_at: Instant,
}

impl Publication {
    /// This publication with later ones folded in, to go out in one round.
    /// Counts are absolute and only grow, so a key's latest count replaces
    /// the earlier ones; the latest positions cover every checkpoint folded
    /// in, and the watermark carrying them follows all of their upserts.
    fn coalesce(self, later: Vec<Publication>) -> Publication {
        if later.is_empty() {
            return self;
        }
        let mut counts: FxHashMap<CountKey, u64> = self.upserts.into_iter().collect();
        let (mut positions, mut oldest) = (self.positions, self.oldest_event_ms);
        for p in later {
            for (key, count) in p.upserts {
                let c = counts.entry(key).or_insert(0);
                *c = (*c).max(count);
            }
            positions = p.positions;
            oldest = match (oldest, p.oldest_event_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Publication {
            upserts: counts.into_iter().collect(),
            positions,
            oldest_event_ms: oldest,
            checkpointed_at: self.checkpointed_at,
        }
    }
}

fn update_status(status: &Mutex<SpeedStatus>, view: &RealtimeView, metrics: &SpeedMetrics) {
    metrics.live_counts.set(view.mirror.len() as i64);
    let mut s = status.lock_or_stop("the speed status");
    s.positions = view.positions.clone();
    s.cut = view.cut.clone();
    s.ready = true;
    s.store = view.store.stats();
}

/// What counting a micro-batch needs besides the batch and the view.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    config: &'a StreamConfig,
    dead_letters: &'a DeadLetterSink,
    metrics: &'a SpeedMetrics,
    token: &'a CancellationToken,
}

/// A micro-batch being counted: deltas per bucket and word, and the next
/// offset of every partition it read.
#[derive(Default)]
struct MicroBatch {
    deltas: FxHashMap<BucketKey, FxHashMap<Box<str>, u64>>,
    next: FxHashMap<Partition, Offset>,
    records: usize,
    bytes: usize,
    /// The record timestamp of the oldest event counted (ms since the epoch).
    oldest_event_ms: Option<i64>,
    /// Set when the consumer returned records it cannot read: the batch
    /// closes there, is checkpointed, and the stream stops.
    unreadable: Option<ConsumeFailure>,
}

/// A micro-batch closes at this many payload bytes whatever its record
/// count, which bounds the memory it holds.
const MICRO_BATCH_MAX_BYTES: usize = 16 << 20;

/// A micro-batch whose oldest event is older than this is catching up …
const CATCH_UP_LAG: Duration = Duration::from_millis(100);
/// … and gathers records for this long rather than closing when the
/// consumer's buffer runs dry for a moment.
const CATCH_UP_WAIT: Duration = Duration::from_millis(50);

impl MicroBatch {
    /// Counts one record. Records are counted straight from the consumer's
    /// buffer; only dead letters are copied.
    async fn add<M: Message>(
        &mut self,
        m: &M,
        view: &RealtimeView,
        tokenizer: &mut Tokenizer,
        ctx: &Ctx<'_>,
    ) {
        let Ctx {
            config,
            dead_letters,
            metrics,
            token,
        } = *ctx;
        metrics.records_consumed.inc();
        self.records += 1;
        let (p, o) = (m.partition(), m.offset());
        // Redelivered (already checkpointed) offsets are not counted again.
        if o < view.positions.get(p) || self.next.get(&p).is_some_and(|&n| o < n) {
            return;
        }
        self.next.insert(p, o + 1);
        if view.cut.includes(p, o) {
            metrics.below_cut_skipped.inc();
            return;
        }
        match decode_message(m, config.max_event_bytes) {
            Ok(event) => {
                metrics.events_counted.inc();
                if let Some(t) = m.timestamp().to_millis() {
                    self.oldest_event_ms = Some(self.oldest_event_ms.map_or(t, |o| o.min(t)));
                }
                self.bytes += event.text.len();
                let bucket = BucketKey {
                    partition: p,
                    bucket: config.bucket_size.bucket_of(o),
                };
                let words = self.deltas.entry(bucket).or_default();
                // A hit looks up by &str and allocates nothing.
                tokenizer.for_each_word(event.text, |w| {
                    if let Some(c) = words.get_mut(w) {
                        *c += 1;
                    } else {
                        words.insert(w.into(), 1);
                    }
                });
            }
            Err(error) => {
                metrics.dead_letters.inc(error.reason());
                tracing::warn!(
                    partition = p,
                    offset = o,
                    reason = error.reason(),
                    "Record is not an event; dead-lettering it."
                );
                dead_letters
                    .send_until_delivered(m, &error, token, || metrics.dead_letter_failures.inc())
                    .await;
            }
        }
    }

    /// Whether the events being counted are old enough that the layer is
    /// catching up rather than keeping up.
    fn behind(&self) -> bool {
        self.oldest_event_ms
            .is_some_and(|t| since_timestamp(t) > CATCH_UP_LAG)
    }

    /// Adds the deltas to the mirror; returns the changed keys with their
    /// new absolute counts (what is checkpointed and then published).
    fn apply(&mut self, view: &mut RealtimeView) -> Vec<(CountKey, u64)> {
        let mut changed = Vec::with_capacity(self.deltas.values().map(|w| w.len()).sum());
        for (bucket, words) in self.deltas.drain() {
            for (word, delta) in words {
                let key = CountKey { bucket, word };
                // A key seen before is updated in place, without a copy.
                let count = match view.mirror.get_mut(&key) {
                    Some(c) => {
                        *c += delta;
                        *c
                    }
                    None => {
                        view.mirror.insert(key.clone(), delta);
                        delta
                    }
                };
                changed.push((key, count));
            }
        }
        changed
    }

    fn next_offsets(&self) -> Vec<(Partition, Offset)> {
        self.next.iter().map(|(&p, &o)| (p, o)).collect()
    }
}

/// Consumes and counts a micro-batch; `None` once cancelled.
///
/// Adaptive: the batch takes what the consumer has buffered and closes as
/// soon as it has nothing more at hand (after waiting `micro_batch_wait` for
/// more, zero by default), or at `micro_batch_records` records or 16 MiB.
/// An idle system checkpoints and publishes each event at once; under load
/// records pile up while the previous batch is checkpointed, so batches grow
/// and the fixed cost per batch (an fsync, a watermark) is shared.
async fn next_batch(
    consumer: &StreamConsumer,
    view: &RealtimeView,
    resume: &mut Resume,
    tokenizer: &mut Tokenizer,
    ctx: &Ctx<'_>,
) -> Option<MicroBatch> {
    let Ctx {
        config,
        metrics,
        token,
        ..
    } = *ctx;
    let mut batch = MicroBatch::default();
    let first = tokio::select! {
        _ = token.cancelled() => return None,
        _ = tokio::time::sleep(config.cut_poll_interval) => return Some(batch),
        m = consumer.recv() => m,
    };
    let started = tokio::time::Instant::now();
    let deadline = started + config.micro_batch_wait;
    // Judged once per batch, after its first record (it reads the clock).
    let mut catching_up: Option<bool> = None;
    let mut next = Some(first);
    loop {
        match next.take() {
            Some(Ok(m)) => match resume.check(m.partition(), m.offset()) {
                ResumeCheck::Accept => batch.add(&m, view, tokenizer, ctx).await,
                ResumeCheck::Skip => batch.records += 1,
                ResumeCheck::SeekBack(offset) => {
                    let (p, topic) = (m.partition(), m.topic().to_owned());
                    drop(m);
                    if let Err(error) = consumer.seek(
                        &topic,
                        p,
                        KafkaOffset::Offset(offset),
                        Duration::from_secs(10),
                    ) {
                        tracing::error!(%error, partition = p, "Cannot seek back; stopping rather than skip records.");
                        ctx.token.cancel();
                        return None;
                    }
                }
            },
            Some(Err(error)) => {
                metrics.consumer_errors.inc();
                if let Some(failure) = ConsumeFailure::classify(&error, &config.topic) {
                    batch.unreadable = Some(failure);
                    break;
                }
                tracing::warn!(%error, "Kafka consumer error.");
            }
            None => {}
        }
        if batch.records >= config.micro_batch_records || batch.bytes >= MICRO_BATCH_MAX_BYTES {
            break;
        }
        // A record already buffered is taken even past the deadline (tokio's
        // timeout polls the future first), so a zero wait means "what the
        // consumer has at hand". Behind the log (catching up after a
        // restart or a burst), there is no one to answer sooner: gather for
        // up to CATCH_UP_WAIT, so the fixed cost of a checkpoint and a
        // publication is shared by many records.
        let catching_up = *catching_up.get_or_insert_with(|| batch.behind());
        let until = if catching_up {
            deadline.max(started + CATCH_UP_WAIT)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(m) => next = Some(m),
            Err(_) => break,
        }
    }
    Some(batch)
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

/// Where publications go.
struct Outbox<'a> {
    producer: &'a FutureProducer,
    topic: &'a str,
    metrics: &'a SpeedMetrics,
    token: &'a CancellationToken,
}

impl Outbox<'_> {
    /// Sends `(key, payload, partition)` records until each is acknowledged.
    /// Returns false if cancelled first (the checkpoint re-publishes them on
    /// the next start).
    async fn deliver(&self, mut pending: Vec<(String, Vec<u8>, Option<i32>)>) -> bool {
        let mut delay = Duration::from_millis(100);
        while !pending.is_empty() {
            let results = send_all(self.producer, self.topic, &pending).await;
            let mut failed = Vec::new();
            for (record, r) in pending.into_iter().zip(results) {
                match r {
                    Ok(()) => self.metrics.realtime_records.inc(),
                    Err(error) => {
                        self.metrics.publish_failures.inc();
                        tracing::warn!(%error, "Cannot publish to the realtime topic; retrying.");
                        failed.push(record);
                    }
                }
            }
            pending = failed;
            if !pending.is_empty() {
                if self.token.is_cancelled() {
                    return false;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        true
    }

    /// Publishes a micro-batch's counts packed into records, each upsert on
    /// the realtime partition its key routes to.
    async fn upserts(&self, counts: &[(CountKey, u64)], partitions: usize) -> bool {
        let mut packers: Vec<Packer> = (0..partitions).map(|_| Packer::default()).collect();
        for (k, c) in counts {
            let (word, partition, bucket) = (&*k.word, k.bucket.partition, k.bucket.bucket);
            packers[route(word, partition, bucket, partitions) as usize]
                .push(word, partition, bucket, *c);
        }
        let records = packers
            .into_iter()
            .enumerate()
            .flat_map(|(r, packer)| {
                packer
                    .finish()
                    .into_iter()
                    .map(move |payload| (UPSERTS_KEY.to_owned(), payload, Some(r as i32)))
            })
            .collect();
        let delivered = self.deliver(records).await;
        if delivered {
            self.metrics.upserts_published.add(counts.len() as u64);
        }
        delivered
    }

    /// Closes a micro-batch on every realtime partition. Sent only after its
    /// upserts were acknowledged, so it follows them in each partition.
    async fn watermark(&self, watermark: &Watermark, partitions: usize) -> bool {
        let payload = serde_json::to_vec(watermark).expect("a watermark always serialises");
        let records = (0..partitions as i32)
            .map(|r| (WATERMARK_KEY.to_owned(), payload.clone(), Some(r)))
            .collect();
        self.deliver(records).await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(word: &str, bucket: u64) -> CountKey {
        CountKey {
            bucket: BucketKey {
                partition: 0,
                bucket,
            },
            word: word.into(),
        }
    }

    fn publication(upserts: &[(&str, u64)], next: Offset, oldest: Option<i64>) -> Publication {
        Publication {
            upserts: upserts.iter().map(|&(w, c)| (key(w, 0), c)).collect(),
            positions: [(0, next)].into_iter().collect(),
            oldest_event_ms: oldest,
            checkpointed_at: Instant::now(),
        }
    }

    #[test]
    fn queued_publications_go_out_as_one_with_the_latest_counts_and_positions() {
        let first = publication(&[("a", 1), ("b", 2)], 3, Some(500));
        let started = first.checkpointed_at;
        let merged = first.coalesce(vec![
            publication(&[("a", 4)], 7, Some(400)),
            publication(&[("c", 1), ("a", 5)], 9, None),
        ]);
        let mut upserts = merged.upserts.clone();
        upserts.sort_by(|x, y| x.0.word.cmp(&y.0.word));
        assert_eq!(
            upserts,
            vec![(key("a", 0), 5), (key("b", 0), 2), (key("c", 0), 1)]
        );
        assert_eq!(merged.positions, [(0, 9)].into_iter().collect());
        assert_eq!(merged.oldest_event_ms, Some(400));
        assert_eq!(merged.checkpointed_at, started);
        let alone = publication(&[("a", 1)], 3, None).coalesce(Vec::new());
        assert_eq!(alone.upserts, vec![(key("a", 0), 1)]);
    }
}
