//! Consumption: records from the events topic counted into micro-batches.
//!
//! Adaptive: a micro-batch takes what the consumer has buffered and closes
//! as soon as it has nothing more at hand, so an idle system checkpoints
//! and publishes each event at once and a loaded one shares the fixed cost
//! per batch (an fsync, a watermark) among many records.

use super::{RealtimeView, StreamConfig};
use crate::metrics::SpeedMetrics;
use common::dead_letter::DeadLetterSink;
use common::kafka::decode_message;
use common::kafka::{Resume, ResumeCheck};
use common::metrics::since_timestamp;
use common::shutdown::CancellationToken;
use common::unreadable::ConsumeFailure;
use lambda_core::{BucketKey, Offset, Partition, Tokenizer};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::Offset as KafkaOffset;
use realtime_store::CountKey;
use rustc_hash::FxHashMap;
use std::time::Duration;

/// What counting a micro-batch needs besides the batch and the view.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub(super) config: &'a StreamConfig,
    pub(super) dead_letters: &'a DeadLetterSink,
    pub(super) metrics: &'a SpeedMetrics,
    pub(super) token: &'a CancellationToken,
}

/// A micro-batch being counted: deltas per bucket and word, and the next
/// offset of every partition it read.
#[derive(Default)]
pub(super) struct MicroBatch {
    deltas: FxHashMap<BucketKey, FxHashMap<Box<str>, u64>>,
    next: FxHashMap<Partition, Offset>,
    pub(super) records: usize,
    bytes: usize,
    /// The record timestamp of the oldest event counted (ms since the epoch).
    pub(super) oldest_event_ms: Option<i64>,
    /// Set when the consumer returned records it cannot read: the batch
    /// closes there, is checkpointed, and the stream stops.
    pub(super) unreadable: Option<ConsumeFailure>,
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
    pub(super) fn apply(&mut self, view: &mut RealtimeView) -> Vec<(CountKey, u64)> {
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

    pub(super) fn next_offsets(&self) -> Vec<(Partition, Offset)> {
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
pub(super) async fn next_batch(
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
