//! The dead-letter topic: records that are not events, with their origin and
//! the reason in headers, so nothing that arrived is silently dropped.

use crate::client::Connection;
use crate::kafka::producer_config;
use crate::metrics::{Counter, TextWriter};
use crate::retry::{until_durable, DurableWrite, Stalls};
use crate::shutdown::CancellationToken;
use lambda_core::event::DecodeError;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// Header names on dead-letter records.
pub mod headers {
    pub const REASON: &str = "lambda.reason";
    pub const ERROR: &str = "lambda.error";
    pub const ORIGIN_TOPIC: &str = "lambda.origin.topic";
    pub const ORIGIN_PARTITION: &str = "lambda.origin.partition";
    pub const ORIGIN_OFFSET: &str = "lambda.origin.offset";
    pub const LAYER: &str = "lambda.layer";
    pub const TRUNCATED: &str = "lambda.truncated";
}

/// Payloads larger than this are truncated in the dead-letter record (the
/// header says so); the master log keeps the whole record.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 64 << 10;

/// Sends records that failed to decode to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    layer: &'static str,
    /// What a failed send is reported as ("a dead letter to `…`").
    what: String,
    stalls: Stalls,
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterSink")
            .field("topic", &self.topic)
            .field("layer", &self.layer)
            .finish()
    }
}

impl DeadLetterSink {
    /// `layer` names the layer that found the record (`batch`, `speed`): both
    /// see every record, so each dead letter says who sent it.
    /// A dead letter that cannot be sent is one of the layer's `stalls`.
    pub fn new(
        kafka: &Connection,
        topic: &str,
        layer: &'static str,
        stalls: Stalls,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: producer_config(kafka).create()?,
            what: format!("a dead letter to `{topic}`"),
            topic: topic.to_owned(),
            layer,
            stalls,
        })
    }

    /// Sends one dead letter and waits until the broker has it.
    pub async fn send<M: Message>(
        &self,
        message: &M,
        error: &DecodeError,
    ) -> Result<(), KafkaError> {
        let payload = message.payload().unwrap_or_default();
        let truncated = payload.len() > MAX_DEAD_LETTER_PAYLOAD;
        let body = &payload[..payload.len().min(MAX_DEAD_LETTER_PAYLOAD)];
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let error_text = error.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::REASON,
                value: Some(error.reason()),
            })
            .insert(Header {
                key: headers::ERROR,
                value: Some(&error_text),
            })
            .insert(Header {
                key: headers::ORIGIN_TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: headers::ORIGIN_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: headers::ORIGIN_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: headers::LAYER,
                value: Some(self.layer),
            })
            .insert(Header {
                key: headers::TRUNCATED,
                value: Some(if truncated { "true" } else { "false" }),
            });
        let key = format!("{}/{partition}/{offset}", message.topic());
        let mut record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(body)
            .headers(headers);
        if let Some(ts) = message.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

impl DeadLetterSink {
    /// Sends a dead letter, retrying with backoff until the broker has it (it
    /// must exist before the record counts as processed) or `token` is
    /// cancelled; `failures` counts the failed attempts.
    async fn send_until_delivered<M: Message>(
        &self,
        message: &M,
        error: &DecodeError,
        token: &CancellationToken,
        failures: &Counter,
    ) {
        let write = DurableWrite {
            what: &self.what,
            failures,
            stalls: &self.stalls,
        };
        until_durable(token, write, || self.send(message, error)).await;
    }

    /// Sends a batch's dead letters all at once and waits until the broker
    /// has every one (each retried as [`Self::send_until_delivered`]), or
    /// `token` is cancelled: one round trip per batch, not one per bad
    /// record. Sent one by one, each waiting for its acknowledgement, a
    /// burst of bad records held a layer to one record per round trip (with
    /// 1 % of them bad, the speed layer fell behind the batch layer).
    pub async fn send_all_until_delivered<M: Message>(
        &self,
        bad: &[(&M, DecodeError)],
        token: &CancellationToken,
        failures: &Counter,
    ) {
        futures_util::future::join_all(
            bad.iter()
                .map(|(m, error)| self.send_until_delivered(*m, error, token, failures)),
        )
        .await;
    }
}

/// Dead letters per reason, for a layer's metrics.
#[derive(Debug, Default)]
pub struct DeadLetterCounts([Counter; 3]);

impl DeadLetterCounts {
    pub fn inc(&self, reason: &str) {
        if let Some(i) = DecodeError::REASONS.iter().position(|r| *r == reason) {
            self.0[i].inc();
        }
    }

    pub fn get(&self, reason: &str) -> u64 {
        DecodeError::REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.0[i].get())
    }

    /// Writes the `lambda_dead_letters_total{layer,reason}` family.
    pub fn render(&self, w: &mut TextWriter, layer: &str) {
        w.family(
            "lambda_dead_letters_total",
            "counter",
            "Records that are not events, by reason.",
        );
        for (i, reason) in DecodeError::REASONS.iter().enumerate() {
            w.sample(
                "lambda_dead_letters_total",
                &[("layer", layer), ("reason", reason)],
                self.0[i].get(),
            );
        }
    }
}
