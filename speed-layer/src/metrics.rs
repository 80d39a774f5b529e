//! The speed layer's metrics, rendered at `GET /metrics`.

use common::dead_letter::DeadLetterCounts;
use common::metrics::{render_stages, Counter, Gauge, Histogram, TextWriter};
use lambda_core::{Cut, Positions};
use realtime_store::StoreStats;

#[derive(Debug, Default)]
pub struct SpeedMetrics {
    pub records_consumed: Counter,
    pub events_counted: Counter,
    pub late_events: Counter,
    pub future_timestamps: Counter,
    pub below_cut_skipped: Counter,
    pub micro_batches: Counter,
    pub upserts_published: Counter,
    pub realtime_records: Counter,
    pub publish_failures: Counter,
    pub checkpoint_failures: Counter,
    pub consumer_errors: Counter,
    pub unreadable_batches: Counter,
    pub held_partitions: Gauge,
    pub dead_letter_failures: Counter,
    pub buckets_expired: Counter,
    pub dead_letters: DeadLetterCounts,
    pub live_counts: Gauge,
    pub last_checkpoint_us: Gauge,
    /// From the oldest event's record timestamp to its micro-batch closing:
    /// the broker, the fetch and the batching.
    pub consume_stage: Histogram,
    /// Writing a micro-batch's counts and positions durably.
    pub checkpoint_stage: Histogram,
    /// From a checkpoint to its watermark acknowledged on every realtime
    /// partition (queueing behind earlier publications included).
    pub publish_stage: Histogram,
}

impl SpeedMetrics {
    pub fn render(&self, positions: &Positions, cut: &Cut, store: &StoreStats) -> String {
        let mut w = TextWriter::new();
        w.single(
            "lambda_speed_records_consumed_total",
            "counter",
            "Records consumed from the events topic.",
            self.records_consumed.get(),
        )
        .single(
            "lambda_speed_events_counted_total",
            "counter",
            "Events tokenized into realtime counts.",
            self.events_counted.get(),
        )
        .single(
            "lambda_speed_late_events_total",
            "counter",
            "Events that arrived after their window was complete (counted all the same).",
            self.late_events.get(),
        )
        .single(
            "lambda_speed_future_timestamps_total",
            "counter",
            "Events with a timestamp further ahead of the clock than --max-future (counted; they do not move the watermark).",
            self.future_timestamps.get(),
        )
        .single(
            "lambda_speed_below_cut_skipped_total",
            "counter",
            "Events skipped because a batch view already has them.",
            self.below_cut_skipped.get(),
        )
        .single(
            "lambda_speed_micro_batches_total",
            "counter",
            "Micro-batches checkpointed.",
            self.micro_batches.get(),
        )
        .single(
            "lambda_speed_upserts_published_total",
            "counter",
            "Count upserts published to the realtime topic (many per record).",
            self.upserts_published.get(),
        )
        .single(
            "lambda_speed_realtime_records_total",
            "counter",
            "Records published to the realtime topic (packed upserts and watermarks).",
            self.realtime_records.get(),
        )
        .single(
            "lambda_speed_publish_failures_total",
            "counter",
            "Failed upsert publications (retried).",
            self.publish_failures.get(),
        )
        .single(
            "lambda_speed_checkpoint_failures_total",
            "counter",
            "Failed checkpoints (retried).",
            self.checkpoint_failures.get(),
        )
        .single(
            "lambda_speed_consumer_errors_total",
            "counter",
            "Kafka consumer errors.",
            self.consumer_errors.get(),
        )
        .single(
            "lambda_speed_unreadable_batches_total",
            "counter",
            "Record batches the consumer could not read (corrupt, or an unsupported format).",
            self.unreadable_batches.get(),
        )
        .single(
            "lambda_speed_held_partitions",
            "gauge",
            "Partitions no longer read because a record in them cannot be (see /status).",
            self.held_partitions.get(),
        )
        .single(
            "lambda_speed_dead_letter_send_failures_total",
            "counter",
            "Failed dead-letter sends (retried).",
            self.dead_letter_failures.get(),
        )
        .single(
            "lambda_speed_buckets_expired_total",
            "counter",
            "Realtime counts deleted at a batch hand-off.",
            self.buckets_expired.get(),
        )
        .single(
            "lambda_speed_live_counts",
            "gauge",
            "Realtime (word, partition, bucket) counts held.",
            self.live_counts.get(),
        )
        .single(
            "lambda_speed_last_checkpoint_seconds",
            "gauge",
            "Duration of the last checkpoint.",
            self.last_checkpoint_us.get() as f64 / 1e6,
        )
        .single(
            "lambda_speed_store_delta_bytes",
            "gauge",
            "Bytes of checkpoint deltas in the realtime store not yet compacted.",
            store.delta_bytes,
        )
        .single(
            "lambda_speed_store_snapshot_bytes",
            "gauge",
            "Bytes of the realtime store's last compacted snapshot.",
            store.snapshot_bytes,
        )
        .single(
            "lambda_speed_store_compactions_total",
            "counter",
            "Compactions of the realtime store since start.",
            store.compactions,
        );
        self.dead_letters.render(&mut w, "speed");
        render_stages(
            &mut w,
            &[
                ("consume", &self.consume_stage),
                ("checkpoint", &self.checkpoint_stage),
                ("publish", &self.publish_stage),
            ],
        );
        w.per_partition(
            "lambda_speed_position",
            "Next offset to consume (checkpointed), per partition.",
            positions.iter(),
        )
        .per_partition(
            "lambda_speed_batch_cut",
            "The batch cut below which buckets have expired, per partition.",
            cut.iter(),
        );
        w.finish()
    }
}
