//! Consumption: records from the events topic read into micro-batches.
//!
//! Adaptive: a micro-batch takes what the consumer has buffered and closes
//! as soon as it has nothing more at hand, so an idle system checkpoints
//! and publishes each event at once and a loaded one shares the fixed cost
//! per batch (an fsync, a watermark) among many records.

use super::checkpoint::InFlight;
use super::counts::Mirror;
use super::{RealtimeCounts, StreamConfig};
use crate::metrics::SpeedMetrics;
use common::dead_letter::DeadLetterSink;
use common::kafka::decode_message;
use common::reader::{Assignment, Limits, PartitionReader, ReaderError};
use common::shutdown::CancellationToken;
use common::telemetry::events::RecordDeadLettered;
use common::unreadable::ConsumeFailure;
use lambda_core::event::DecodeError;
use lambda_core::window::{Arrival, Key, Millis, Window, WindowedKeys};
use lambda_core::{BucketKey, Offset, Partition, Tokenizer};
use rdkafka::message::Message;
use realtime_store::CountKey;
use rustc_hash::FxHashMap;
use std::time::Duration;

/// What reading a micro-batch needs besides the batch and the view.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub(super) config: &'a StreamConfig,
    pub(super) dead_letters: &'a DeadLetterSink,
    pub(super) metrics: &'a SpeedMetrics,
    pub(super) token: &'a CancellationToken,
}

/// A micro-batch: the events taken (their words counted once it is
/// applied) and the next offset of every partition it read.
#[derive(Default)]
pub(super) struct MicroBatch {
    /// Changes in the partitions owned, which come before any record (a
    /// batch with changes has no records).
    pub(super) changes: Vec<Assignment>,
    deltas: FxHashMap<BucketKey, BucketDeltas>,
    /// The text of the events taken, one after another, and where each
    /// one's ends: their words are counted in [`Self::apply`].
    texts: String,
    uncounted: Vec<Uncounted>,
    next: FxHashMap<Partition, Offset>,
    pub(super) records: usize,
    /// Events taken (records that decoded and were not skipped).
    events: u64,
    bytes: usize,
    /// The record timestamp of the oldest event counted (ms since the epoch).
    pub(super) oldest_event_ms: Option<i64>,
    /// Set when the consumer returned records it cannot read: the batch
    /// closes there, is checkpointed, and the stream stops.
    pub(super) unreadable: Option<ConsumeFailure>,
    /// Per partition read, the newest timestamp that moved its watermark
    /// after this batch (starting from the checkpoint's).
    newest: FxHashMap<Partition, Option<Millis>>,
    /// The clock when the batch started, for far-future timestamps.
    now_ms: Millis,
}

/// An event taken into a micro-batch whose words are still to be counted.
struct Uncounted {
    bucket: BucketKey,
    window: Option<Window>,
    /// Where its text ends in [`MicroBatch::texts`] (it starts where the
    /// previous one's ends).
    end: usize,
}

/// A micro-batch's counts in one bucket: per word, its occurrences and how
/// many fell in each window (the windowed keys are spelled out only once
/// per batch, in [`MicroBatch::apply`]: one lookup per word occurrence, not
/// two), and the late events per window.
#[derive(Default)]
struct BucketDeltas {
    words: FxHashMap<Box<str>, WordDelta>,
    late: FxHashMap<Window, u64>,
}

/// One word's counts in a bucket of a micro-batch.
#[derive(Default)]
struct WordDelta {
    all: u64,
    /// The first window it was counted in (most words have one per
    /// batch), then any others.
    window: Option<(Window, u64)>,
    more: Vec<(Window, u64)>,
}

impl WordDelta {
    fn add(&mut self, window: Option<Window>) {
        self.all += 1;
        let Some(w) = window else { return };
        match &mut self.window {
            Some((first, n)) if *first == w => *n += 1,
            None => self.window = Some((w, 1)),
            Some(_) => match self.more.iter_mut().find(|(x, _)| *x == w) {
                Some((_, n)) => *n += 1,
                None => self.more.push((w, 1)),
            },
        }
    }

    fn windows(&self) -> impl Iterator<Item = (Window, u64)> + '_ {
        self.window.into_iter().chain(self.more.iter().copied())
    }

    /// How many keys it changes: one per window, and one for its events
    /// without a timestamp (or its all-time count, where that is kept).
    fn keys(&self) -> usize {
        let timed: u64 = self.windows().map(|(_, n)| n).sum();
        self.windows().count() + usize::from(timed < self.all)
    }
}

impl BucketDeltas {
    /// Counts one occurrence of `word`; a word seen before in the batch
    /// costs one lookup by `&str` and allocates nothing.
    fn bump(&mut self, word: &str, window: Option<Window>) {
        if let Some(d) = self.words.get_mut(word) {
            d.add(window);
        } else {
            let mut d = WordDelta::default();
            d.add(window);
            self.words.insert(word.into(), d);
        }
    }

    /// How many keys [`MicroBatch::apply`] will change.
    fn keys(&self) -> usize {
        self.late.len() + self.words.values().map(WordDelta::keys).sum::<usize>()
    }
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
    /// Takes one record, straight from the consumer's buffer: its position,
    /// its event time and its text, whose words [`Self::apply`] counts
    /// later, off the consumer's task. A record that is not an event is
    /// returned with the reason, for the batch to dead-letter with the
    /// others (see [`next_batch`]).
    fn add<M: Message>(
        &mut self,
        m: &M,
        view: &RealtimeCounts,
        ctx: &Ctx<'_>,
    ) -> Option<DecodeError> {
        let Ctx {
            config, metrics, ..
        } = *ctx;
        self.records += 1;
        let (p, o) = (m.partition(), m.offset());
        // Redelivered (already checkpointed) offsets are not counted again,
        // nor are those a batch view has (the cut may have overtaken the
        // partition's position, see `RealtimeCounts::take_cut`).
        let redelivered = o < view.positions.get(p) || self.next.get(&p).is_some_and(|&n| o < n);
        let below_cut = view.cut.includes(p, o);
        if below_cut {
            metrics.below_cut_skipped.inc();
        }
        if redelivered {
            return None;
        }
        self.next.insert(p, o + 1);
        if below_cut {
            return None;
        }
        match decode_message(m, config.max_event_bytes) {
            Ok(event) => {
                // Read once, with the event: each read of a record's fields
                // is a call into librdkafka.
                let timestamp = event.timestamp_ms;
                self.events += 1;
                if let Some(t) = timestamp {
                    self.oldest_event_ms = Some(self.oldest_event_ms.map_or(t, |o| o.min(t)));
                }
                self.bytes += event.text.len();
                let bucket = BucketKey {
                    partition: p,
                    bucket: config.bucket_size.bucket_of(o),
                };
                let window = self.event_time(p, timestamp, view, ctx);
                if let Some((window, true)) = window {
                    let deltas = self.deltas.entry(bucket).or_default();
                    *deltas.late.entry(window).or_default() += 1;
                }
                self.take_text(bucket, window.map(|(window, _)| window), event.text);
                None
            }
            Err(error) => {
                RecordDeadLettered {
                    partition: p,
                    offset: o,
                    error: &error,
                    kept: false,
                }
                .emit(&metrics.dead_letters);
                Some(error)
            }
        }
    }

    /// Notes an event's timestamp on its partition's watermark (as the batch
    /// layer does, see `lambda_core::window::Run`); returns the window it
    /// counts in, and whether it is late there.
    fn event_time(
        &mut self,
        p: Partition,
        t: Option<Millis>,
        view: &RealtimeCounts,
        ctx: &Ctx<'_>,
    ) -> Option<(Window, bool)> {
        let settings = &ctx.config.windows;
        let newest = self
            .newest
            .entry(p)
            .or_insert_with(|| view.newest.get(&p).copied());
        let mut mark = settings.watermark().resume(*newest);
        let future = t.is_some_and(|t| settings.is_future(t, self.now_ms));
        let arrival = mark.arrive(settings.size, t, future);
        *newest = mark.newest();
        match arrival {
            Arrival::Late => ctx.metrics.late_events.inc(),
            Arrival::Future => ctx.metrics.future_timestamps.inc(),
            Arrival::OnTime | Arrival::Untimed => {}
        }
        let window = arrival.window(settings.size, t)?;
        Some((window, arrival == Arrival::Late))
    }

    /// Per partition read, the newest timestamp that moved its watermark
    /// (what the checkpoint keeps).
    pub(super) fn event_times(&self) -> Vec<(Partition, Millis)> {
        self.newest
            .iter()
            .filter_map(|(&p, &n)| n.map(|n| (p, n)))
            .collect()
    }

    fn take_text(&mut self, bucket: BucketKey, window: Option<Window>, text: &str) {
        self.texts.push_str(text);
        self.uncounted.push(Uncounted {
            bucket,
            window,
            end: self.texts.len(),
        });
    }

    /// Splits the text of the events taken into words and counts them per
    /// bucket and word.
    fn count_words(&mut self) {
        let mut tokenizer = Tokenizer::new();
        let mut start = 0;
        for Uncounted {
            bucket,
            window,
            end,
        } in self.uncounted.drain(..)
        {
            let deltas = self.deltas.entry(bucket).or_default();
            tokenizer.for_each_word(&self.texts[start..end], |w| deltas.bump(w, window));
            start = end;
        }
        self.texts = String::new();
    }

    /// Counts the words of the events taken and adds them to the live
    /// counts; returns the changed keys with their new absolute counts (what
    /// is checkpointed and then published). The larger part of a
    /// micro-batch's work, done beside the reading of the next one (see
    /// `checkpoint::InFlight`).
    pub(super) fn apply(&mut self, mirror: &mut Mirror) -> Vec<(CountKey, u64)> {
        self.count_words();
        let mut changed = Vec::with_capacity(self.deltas.values().map(BucketDeltas::keys).sum());
        // Most words of a batch share a window: its key prefix is written
        // once, not formatted anew per word.
        let (mut windowed, mut prefix) = (WindowedKeys::default(), None);
        for (bucket, deltas) in self.deltas.drain() {
            let given = mirror.holds_all_time(bucket);
            let counts = mirror.bucket(bucket);
            if counts.is_empty() {
                // A new bucket takes all of its keys from this batch or
                // the next: sized once rather than grown step by step.
                counts.reserve(deltas.keys());
            }
            let mut add = |counts: &mut FxHashMap<Box<str>, u64>, word: Box<str>, delta| {
                // A key seen before is updated in place, without a copy.
                let count = match counts.get_mut(&word) {
                    Some(c) => {
                        *c += delta;
                        *c
                    }
                    None => {
                        counts.insert(word.clone(), delta);
                        delta
                    }
                };
                changed.push((CountKey { bucket, word }, count));
            };
            for (word, delta) in deltas.words {
                // Each occurrence counts under its window's key only; a
                // serving layer derives the word's all-time count from them
                // (see `lambda_core::window`) …
                let mut untimed = delta.all;
                for (window, n) in delta.windows() {
                    if prefix != Some(window) {
                        windowed.set_window(window);
                        prefix = Some(window);
                    }
                    add(counts, windowed.key(&word).into(), n);
                    untimed -= n;
                }
                // … except where this bucket was counted before that rule
                // and holds the word's all-time count: that goes on.
                if given && counts.contains_key(&word) {
                    add(counts, word, delta.all);
                } else if untimed > 0 {
                    add(counts, Key::Untimed(&word).encode().into(), untimed);
                }
            }
            for (window, n) in deltas.late {
                add(counts, Key::Late(window).encode().into(), n);
            }
        }
        changed
    }

    /// Whether the batch moved any partition (records, or a position past
    /// a transaction marker): then it is checkpointed.
    pub(super) fn moved(&self) -> bool {
        self.records > 0 || !self.next.is_empty()
    }

    pub(super) fn next_offsets(&self) -> Vec<(Partition, Offset)> {
        self.next.iter().map(|(&p, &o)| (p, o)).collect()
    }
}

/// Reads a micro-batch (its words are counted when it is applied); `None`
/// once cancelled.
///
/// Adaptive: the batch takes what the consumer has buffered and closes as
/// soon as it has nothing more at hand (after waiting `micro_batch_wait` for
/// more, zero by default), or at `micro_batch_records` records or 16 MiB.
/// An idle system checkpoints and publishes each event at once; under load
/// records pile up while the previous batch is checkpointed, so batches grow
/// and the fixed cost per batch (an fsync, a watermark) is shared.
pub(super) async fn next_batch(
    reader: &mut PartitionReader,
    view: &RealtimeCounts,
    ctx: &Ctx<'_>,
    in_flight: Option<&InFlight>,
) -> Result<Option<MicroBatch>, ReaderError> {
    let limits = Limits {
        max_records: ctx.config.micro_batch_records,
        max_bytes: MICRO_BATCH_MAX_BYTES,
        linger: ctx.config.micro_batch_wait,
        catch_up: Some((CATCH_UP_LAG, CATCH_UP_WAIT)),
        // The loop polls the batch cut in between.
        idle: Some(ctx.config.cut_poll_interval),
    };
    // While the previous batch is still being checkpointed, this one takes
    // what arrives meanwhile rather than closing at once: one checkpoint
    // and one publication then carry it all.
    let landed = in_flight.map(InFlight::landed);
    let busy = async move {
        if let Some(landed) = landed {
            landed.await;
        }
    };
    let Some(mut read) = reader.next_batch_while(&limits, ctx.token, busy).await? else {
        return Ok(None);
    };
    let mut batch = MicroBatch {
        changes: std::mem::take(&mut read.changes),
        records: read.skipped,
        now_ms: common::now_ms(),
        // Sized for every record's text at once: grown step by step, a
        // large batch's buffer was copied over and over, each time into
        // memory the kernel had to map afresh.
        texts: String::with_capacity(read.bytes),
        uncounted: Vec::with_capacity(read.records.len()),
        ..MicroBatch::default()
    };
    ctx.metrics
        .consumer_errors
        .add(read.transient_errors as u64);
    let mut bad = Vec::new();
    for m in &read.records {
        if let Some(error) = batch.add(m, view, ctx) {
            bad.push((m, error));
        }
    }
    ctx.metrics.records_consumed.add(read.records.len() as u64);
    ctx.metrics.events_counted.add(batch.events);
    // Every dead letter is in the broker before the batch is checkpointed.
    ctx.dead_letters
        .send_all_until_delivered(&bad, ctx.token, &ctx.metrics.dead_letter_failures)
        .await;
    // Past a transaction marker (or an aborted transaction): the partition
    // continues there, as if records had been read up to it.
    for &(p, next) in &read.passed {
        if next > view.positions.get(p) && batch.next.get(&p).is_none_or(|&n| n < next) {
            batch.next.insert(p, next);
        }
    }
    batch.unreadable = read.unreadable;
    Ok(Some(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bucket: u64, word: &str) -> CountKey {
        CountKey::new(0, bucket, word)
    }

    #[test]
    fn words_count_under_their_window_only_except_where_all_time_is_kept() {
        let (w1, w2) = (Window(1), Window(2));
        let in_window = |w, word| Key::InWindow(w, word).encode();
        // Bucket 0 was counted before the rule: it holds `x`'s all-time
        // count. Bucket 1 is new.
        let loaded = [(key(0, "x"), 2), (key(0, &in_window(w1, "x")), 2)];
        let mut mirror = Mirror::from_counts(loaded.into_iter().collect());
        let mut batch = MicroBatch::default();
        for bucket in [0, 1] {
            let bucket = key(bucket, "").bucket;
            batch.take_text(bucket, Some(w1), "X y");
            batch.take_text(bucket, Some(w2), "x");
            batch.take_text(bucket, None, "x");
        }
        // A word lowercased outside the text (not ASCII), and a late event.
        batch.take_text(key(1, "").bucket, Some(w2), "Été");
        batch
            .deltas
            .entry(key(1, "").bucket)
            .or_default()
            .late
            .insert(w2, 1);
        let mut changed = batch.apply(&mut mirror);
        changed.sort();
        let mut want = vec![
            // Its all-time count goes on where it is kept …
            (key(0, "x"), 5),
            (key(0, &in_window(w1, "x")), 3),
            (key(0, &in_window(w2, "x")), 1),
            // … and nowhere else: an untimed occurrence has a key of its own.
            (key(0, &in_window(w1, "y")), 1),
            (key(1, &in_window(w1, "x")), 1),
            (key(1, &in_window(w2, "x")), 1),
            (key(1, &Key::Untimed("x").encode()), 1),
            (key(1, &in_window(w1, "y")), 1),
            (key(1, &in_window(w2, "été")), 1),
            (key(1, &Key::Late(w2).encode()), 1),
        ];
        want.sort();
        assert_eq!(changed, want);
        assert_eq!(mirror.len(), 10, "two loaded and eight new");
        // The next batch reports what it changed, each key once.
        let mut batch = MicroBatch::default();
        batch.take_text(key(1, "").bucket, Some(w1), "x x");
        assert_eq!(
            batch.apply(&mut mirror),
            vec![(key(1, &in_window(w1, "x")), 3)]
        );
    }
}
