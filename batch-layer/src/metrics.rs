//! The batch layer's metrics, rendered at `GET /metrics`.

use common::dead_letter::DeadLetterCounts;
use common::metrics::{Counter, Gauge, TextWriter};
use lambda_core::lineage::RecomputeMode;
use lambda_core::view::Manifest;
use lambda_core::Positions;

#[derive(Debug, Default)]
pub struct BatchMetrics {
    pub records_ingested: Counter,
    pub chunks_sealed: Counter,
    pub store_errors: Counter,
    pub future_timestamps: Counter,
    pub view_late_events: Gauge,
    pub duplicates_skipped: Counter,
    pub consumer_errors: Counter,
    pub unreadable_batches: Counter,
    pub held_partitions: Gauge,
    pub log_write_errors: Counter,
    pub dead_letter_failures: Counter,
    pub dead_letters: DeadLetterCounts,
    pub recomputes: Counter,
    pub incremental_recomputes: Counter,
    pub full_checks: Counter,
    pub full_check_failures: Counter,
    pub last_full_check_differing_words: Gauge,
    pub recompute_failures: Counter,
    pub view_version: Gauge,
    pub view_computed_at_ms: Gauge,
    pub last_recompute_ms: Gauge,
}

impl BatchMetrics {
    /// Records a published view.
    pub fn published(&self, manifest: &Manifest) {
        self.recomputes.inc();
        let lineage = &manifest.header.lineage;
        if lineage.mode == RecomputeMode::Incremental {
            self.incremental_recomputes.inc();
        }
        if let Some(check) = &lineage.check {
            self.full_checks.inc();
            if !check.agreed {
                self.full_check_failures.inc();
            }
            self.last_full_check_differing_words
                .set(check.differing_words as i64);
        }
        self.view_version.set(manifest.version as i64);
        self.view_late_events.set(
            manifest
                .header
                .windows
                .as_ref()
                .map_or(0, |w| w.late_events as i64),
        );
        self.view_computed_at_ms.set(manifest.header.computed_at_ms);
    }

    /// Prometheus text, with the master log's end offsets.
    pub fn render(&self, log_end: &Positions, sealed_end: &Positions, now_ms: i64) -> String {
        let mut w = TextWriter::new();
        w.single(
            "lambda_batch_records_ingested_total",
            "counter",
            "Records appended to the master log.",
            self.records_ingested.get(),
        )
        .single(
            "lambda_batch_chunks_sealed_total",
            "counter",
            "Chunks of the master dataset this instance wrote to the shared store (--store-url).",
            self.chunks_sealed.get(),
        )
        .single(
            "lambda_batch_store_errors_total",
            "counter",
            "Failed reads or writes of the shared store while sealing chunks (retried after the next batch; the local log keeps the records meanwhile).",
            self.store_errors.get(),
        )
        .single(
            "lambda_batch_future_timestamps_total",
            "counter",
            "Events ingested with a timestamp further ahead of the clock than --max-future (counted; they do not move the watermark).",
            self.future_timestamps.get(),
        )
        .single(
            "lambda_batch_view_late_events",
            "gauge",
            "Late events (arrived after their window was complete) in the newest view's retained windows.",
            self.view_late_events.get(),
        )
        .single(
            "lambda_batch_duplicates_skipped_total",
            "counter",
            "Redelivered records skipped because the log already had them.",
            self.duplicates_skipped.get(),
        )
        .single(
            "lambda_batch_consumer_errors_total",
            "counter",
            "Kafka consumer errors.",
            self.consumer_errors.get(),
        )
        .single(
            "lambda_batch_unreadable_batches_total",
            "counter",
            "Record batches the consumer could not read (corrupt, or an unsupported format).",
            self.unreadable_batches.get(),
        )
        .single(
            "lambda_batch_held_partitions",
            "gauge",
            "Partitions no longer ingested because a record in them cannot be read (see /readyz).",
            self.held_partitions.get(),
        )
        .single(
            "lambda_batch_log_write_errors_total",
            "counter",
            "Failed master-log appends (retried).",
            self.log_write_errors.get(),
        )
        .single(
            "lambda_batch_dead_letter_send_failures_total",
            "counter",
            "Failed dead-letter sends (retried).",
            self.dead_letter_failures.get(),
        );
        self.dead_letters.render(&mut w, "batch");
        w.single(
            "lambda_batch_recomputes_total",
            "counter",
            "Batch views published.",
            self.recomputes.get(),
        )
        .single(
            "lambda_batch_incremental_recomputes_total",
            "counter",
            "Batch views published as the previous view plus the events since its cut.",
            self.incremental_recomputes.get(),
        )
        .single(
            "lambda_batch_full_checks_total",
            "counter",
            "Full recomputes compared with the incremental chain at the same cut.",
            self.full_checks.get(),
        )
        .single(
            "lambda_batch_full_check_failures_total",
            "counter",
            "Full recomputes that differed from the incremental chain (an error: the full view wins).",
            self.full_check_failures.get(),
        )
        .single(
            "lambda_batch_last_full_check_differing_words",
            "gauge",
            "Words whose counts differed in the last full check.",
            self.last_full_check_differing_words.get(),
        )
        .single(
            "lambda_batch_recompute_failures_total",
            "counter",
            "Failed recomputes.",
            self.recompute_failures.get(),
        )
        .single(
            "lambda_batch_view_version",
            "gauge",
            "Version of the newest batch view.",
            self.view_version.get(),
        )
        .single(
            "lambda_batch_last_recompute_seconds",
            "gauge",
            "Duration of the last recompute.",
            self.last_recompute_ms.get() as f64 / 1000.0,
        );
        let computed = self.view_computed_at_ms.get();
        let age = if computed > 0 {
            (now_ms - computed).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        w.single(
            "lambda_batch_view_age_seconds",
            "gauge",
            "Age of the newest batch view.",
            age,
        );
        w.per_partition(
            "lambda_batch_log_end_offset",
            "Offset after the last record in the master log, per partition.",
            log_end.iter(),
        )
        .per_partition(
            "lambda_batch_sealed_end_offset",
            "Offset below which the partition's master dataset is sealed into the shared store (--store-url), per partition.",
            sealed_end.iter(),
        );
        w.finish()
    }
}
