//! Telemetry as typed events. Each struct is one thing that happened, and
//! its `emit` updates the metric and writes the log line together, so the
//! two cannot drift apart (vector's "internal events"). Events that can
//! happen once per record log through a [`LogLimit`]; their metrics count
//! every occurrence.

use super::limit::{Allowed, LogLimit};
use crate::dead_letter::DeadLetterCounts;
use crate::metrics::Counter;
use lambda_core::{DecodeError, Offset, Partition};
use std::fmt::Display;
use std::time::Duration;

/// A record that is not an event went to the dead-letter topic.
#[derive(Debug)]
pub struct RecordDeadLettered<'a> {
    pub partition: Partition,
    pub offset: Offset,
    pub error: &'a DecodeError,
    /// What else the layer does with it (the batch layer keeps it, marked).
    pub kept: bool,
}

impl RecordDeadLettered<'_> {
    pub fn emit(&self, counts: &DeadLetterCounts) {
        static LIMIT: LogLimit = LogLimit::new();
        counts.inc(self.error.reason());
        if let Allowed::Log { suppressed } = LIMIT.allow() {
            tracing::warn!(
                partition = self.partition,
                offset = self.offset,
                reason = self.error.reason(),
                kept_in_master_log = self.kept,
                suppressed_since_last = suppressed,
                "Record is not an event; dead-lettering it."
            );
        }
    }
}

/// A realtime-topic message that is neither upserts nor a watermark.
#[derive(Debug)]
pub struct MalformedRealtimeMessage<'a> {
    pub partition: Partition,
    pub offset: Offset,
    pub reason: &'a str,
}

impl MalformedRealtimeMessage<'_> {
    pub fn emit(&self, counter: &Counter) {
        static LIMIT: LogLimit = LogLimit::new();
        counter.inc();
        if let Allowed::Log { suppressed } = LIMIT.allow() {
            tracing::warn!(
                partition = self.partition,
                offset = self.offset,
                reason = self.reason,
                suppressed_since_last = suppressed,
                "Skipping a malformed realtime message."
            );
        }
    }
}

/// A Kafka consumer error that librdkafka retries by itself.
pub struct ConsumerErrorRetried<'a> {
    pub topic: &'a str,
    pub error: &'a dyn Display,
}

impl ConsumerErrorRetried<'_> {
    /// Logs it (rate-limited); the layer counts it from the batch's tally.
    pub fn emit(&self) {
        static LIMIT: LogLimit = LogLimit::new();
        if let Allowed::Log { suppressed } = LIMIT.allow() {
            tracing::warn!(
                topic = self.topic,
                error = %self.error,
                suppressed_since_last = suppressed,
                "Kafka consumer error; librdkafka retries."
            );
        }
    }
}

/// A durable write failed and will be retried.
pub struct WriteNotDurable<'a> {
    /// What was being written ("the checkpoint", "the master log").
    pub what: &'a str,
    pub error: &'a dyn Display,
    pub retry_in: Duration,
}

impl WriteNotDurable<'_> {
    /// Every failure is logged: retries back off, so they cannot flood.
    pub fn emit(&self, failures: &Counter) {
        failures.inc();
        tracing::error!(
            error = %self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "Cannot write {}; retrying.",
            self.what
        );
    }
}

/// A realtime-topic record (an upsert or a watermark) was not acknowledged
/// and will be sent again.
pub struct PublishRetried<'a> {
    pub topic: &'a str,
    pub error: &'a dyn Display,
}

impl PublishRetried<'_> {
    /// Counted per record; logged rate-limited (a broker outage fails every
    /// record of a micro-batch).
    pub fn emit(&self, failures: &Counter) {
        static LIMIT: LogLimit = LogLimit::new();
        failures.inc();
        if let Allowed::Log { suppressed } = LIMIT.allow() {
            tracing::warn!(
                topic = self.topic,
                error = %self.error,
                suppressed_since_last = suppressed,
                "Cannot publish to the realtime topic; retrying."
            );
        }
    }
}

/// A recompute did not produce a view; the previous one keeps serving.
pub struct RecomputeFailed<'a> {
    pub error: &'a dyn Display,
    /// It panicked rather than returned an error.
    pub panicked: bool,
}

impl RecomputeFailed<'_> {
    pub fn emit(&self, failures: &Counter) {
        failures.inc();
        tracing::error!(
            error = %self.error,
            panicked = self.panicked,
            "Recompute failed; the previous view keeps serving."
        );
    }
}

/// The consumer returned records it cannot read (a corrupt batch, an
/// unknown codec): the batch ends before them, and the layer holds their
/// partition or stops (it says which).
pub struct RecordsUnreadable<'a> {
    pub topic: &'a str,
    pub failure: &'a crate::unreadable::ConsumeFailure,
}

impl RecordsUnreadable<'_> {
    pub fn emit(&self, unreadable_batches: &Counter) {
        unreadable_batches.inc();
        tracing::error!(
            topic = self.topic,
            code = ?self.failure.code,
            "{}",
            self.failure
        );
    }
}
