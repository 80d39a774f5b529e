//! Kafka helpers: client configurations with this project's delivery settings,
//! idempotent topic creation, and records decoded into events.

use crate::client::Connection;
use lambda_core::event::{decode, DecodeError, Event};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KafkaSetupError {
    #[error("cannot create topic `{topic}` on {brokers}: {source}")]
    CreateTopic {
        topic: String,
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic `{topic}` did not become visible on {brokers} within {waited:?}")]
    TopicNotVisible {
        topic: String,
        brokers: String,
        waited: Duration,
    },
    #[error("cannot create a Kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: KafkaError,
    },
}

/// The settings every client shares: ours first, then the user's
/// (`--security-protocol`, `--sasl-*`, `--ssl-*`, `--kafka-option`), so theirs win.
pub fn client_config(kafka: &Connection) -> ClientConfig {
    with_user_settings(base_config(kafka), kafka)
}

/// Our settings for every client, before the user's.
fn base_config(kafka: &Connection) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", kafka.brokers())
        .set("socket.keepalive.enable", "true")
        // Resolve `localhost` to IPv4 first, as the embedded broker listens there.
        .set("broker.address.family", "v4");
    config
}

/// Applies the user's settings last, so they win over ours (the few our
/// guarantees rest on are refused when the flags are validated).
fn with_user_settings(mut config: ClientConfig, kafka: &Connection) -> ClientConfig {
    for (key, value) in kafka.settings() {
        config.set(key, value);
    }
    config
}

/// A consumer whose positions are managed by the application, not Kafka:
/// no auto-commit and no automatic offset store. Layers resume from their own
/// durable state (the master log, a sled checkpoint) and commit to Kafka only
/// for monitoring.
///
/// It reads committed records only (events of aborted transactions are never
/// counted; transaction markers leave offset gaps that every position in this
/// project tolerates), and it checks every batch's CRC, so a batch corrupted
/// on the way is an error ([`crate::unreadable::ConsumeFailure`]) rather
/// than wrong counts.
pub fn consumer_config(kafka: &Connection, group: &str) -> ClientConfig {
    with_user_settings(consumer_defaults(kafka, group), kafka)
}

/// [`consumer_config`] for a reader that wants throughput, not the newest
/// record at once (batch ingestion: the speed layer answers for what it has
/// not appended yet). Its fetches wait for 256 KiB or 250 ms, so the broker
/// answers it a few times a second under load rather than at every produce,
/// and its appends and fsyncs come in larger batches.
pub fn bulk_consumer_config(kafka: &Connection, group: &str) -> ClientConfig {
    let mut config = consumer_defaults(kafka, group);
    config
        .set("fetch.min.bytes", (256 << 10).to_string())
        .set("fetch.wait.max.ms", "250");
    with_user_settings(config, kafka)
}

fn consumer_defaults(kafka: &Connection, group: &str) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A position the topic no longer holds is an error the reader
        // reports (`reader`), never a silent jump to either end.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .set("check.crcs", "true")
        // Brokers may hold an empty fetch this long; the default 500 ms would
        // be most of the produce-to-visible time across the two hops
        // (events → speed layer, realtime topic → serving layer).
        .set("fetch.wait.max.ms", "100")
        // When its local queue is full, librdkafka stops fetching a
        // partition for this long (default 1 s). A layer catching up drains
        // a full queue in a fraction of that and then sat idle: the speed
        // layer read at a quarter of a plain consumer's rate, with ~0.8 s
        // stalls, and those stalls were the tail of the freshness figures.
        .set("fetch.queue.backoff.ms", "10")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    config
}

/// Drops a Kafka client on a blocking thread. Closing a consumer waits for
/// the broker's answers (a fetch or commit in flight), and on a runtime
/// worker that wait can starve a broker served by the same runtime
/// (`lambda demo`, the in-process tests) until the close gives up.
pub async fn close_off_runtime<C: Send + 'static>(client: C) {
    let _ = tokio::task::spawn_blocking(move || drop(client)).await;
}

/// A producer that waits for the broker's acknowledgement of every record,
/// compressing with the connection's codec. It lingers 5 ms to fill batches
/// from a stream of records (`lambda produce`).
pub fn producer_config(kafka: &Connection) -> ClientConfig {
    producer_lingering(kafka, 5)
}

/// A producer for records enqueued in one burst and then awaited together
/// (the speed layer's publication: a micro-batch's upserts, then its
/// watermarks). The burst is a batch already, so it does not linger: at
/// 5 ms a micro-batch would wait 10 ms for nothing on its way to answers.
pub fn burst_producer_config(kafka: &Connection) -> ClientConfig {
    producer_lingering(kafka, 0)
}

fn producer_lingering(kafka: &Connection, linger_ms: u32) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", "30000")
        .set("compression.type", kafka.compression().as_kafka());
    with_user_settings(config, kafka)
}

/// Creates the topics every layer uses, unless they exist: the events and
/// realtime topics with `--partitions` partitions, the dead-letter topic with
/// one. Each layer calls it on start, so any may start first.
pub async fn ensure_layer_topics(kafka: &crate::config::KafkaArgs) -> Result<(), KafkaSetupError> {
    let timeout = Duration::from_secs(30);
    let connection = kafka.connection();
    // Every role starts here: say once how its clients connect (secrets
    // redacted), so a misconfigured cluster connection is easy to spot.
    tracing::info!(settings = %connection.describe(), "Kafka client settings.");
    for (topic, partitions) in [
        (&kafka.topic, kafka.partitions),
        (&kafka.dead_letter_topic, 1),
        (&kafka.realtime_topic, kafka.partitions),
    ] {
        ensure_topic(&connection, topic, partitions, timeout).await?;
    }
    Ok(())
}

/// Creates `topic` with `partitions` partitions unless it exists already, then
/// waits until its metadata is visible. An existing topic is fine, whatever its
/// partition count (a warning says if it differs).
pub async fn ensure_topic(
    kafka: &Connection,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), KafkaSetupError> {
    // An existing topic needs no create request (brokers log a refused one
    // as an error, which would alarm whoever reads the broker's log).
    let found = match wait_for_partitions(kafka, topic, Duration::ZERO).await {
        Some(n) => Some(n),
        None => {
            create_topic(kafka, topic, partitions, timeout).await?;
            wait_for_partitions(kafka, topic, timeout).await
        }
    };
    let Some(n) = found else {
        return Err(KafkaSetupError::TopicNotVisible {
            topic: topic.to_owned(),
            brokers: kafka.to_string(),
            waited: timeout,
        });
    };
    if n != partitions as usize {
        tracing::warn!(
            topic,
            existing = n,
            requested = partitions,
            "Topic exists with a different partition count; using it as it is."
        );
    }
    Ok(())
}

async fn create_topic(
    kafka: &Connection,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), KafkaSetupError> {
    let brokers = kafka.brokers();
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka)
            .create()
            .map_err(|source| KafkaSetupError::Client {
                brokers: brokers.to_owned(),
                source,
            })?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(|source| KafkaSetupError::CreateTopic {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
            source,
        })?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "Created topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "Topic exists already.")
            }
            Err((_, code)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic: topic.to_owned(),
                    brokers: brokers.to_owned(),
                    source: KafkaError::AdminOp(code),
                })
            }
        }
    }
    Ok(())
}

/// [`topic_partitions`] from async code (on a blocking thread).
pub async fn wait_for_partitions(
    kafka: &Connection,
    topic: &str,
    timeout: Duration,
) -> Option<usize> {
    let (b, t) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || topic_partitions(&b, &t, timeout))
        .await
        .ok()
        .flatten()
}

/// Where each partition of `topic` ends (its high watermark), from one
/// client: the topic's metadata, then one watermark query per partition.
pub fn topic_ends(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<lambda_core::Positions, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata of `{topic}`: {e}"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut ends = lambda_core::Positions::new();
    for p in 0..partitions as i32 {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| format!("end offset of `{topic}` partition {p}: {e}"))?;
        ends.set(p, high);
    }
    Ok(ends)
}

/// The partition count of `topic`, polling metadata until it shows or
/// `timeout` passes. Blocking: call from a blocking context.
pub fn topic_partitions(kafka: &Connection, topic: &str, timeout: Duration) -> Option<usize> {
    let consumer: BaseConsumer = client_config(kafka).create().ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                if t.error().is_none() && !t.partitions().is_empty() {
                    return Some(t.partitions().len());
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A record to send: an optional key (without one the client spreads
/// records over partitions), the payload, and optionally a fixed partition
/// (else the key's hash picks one).
pub trait OutgoingRecord {
    fn key(&self) -> Option<&str>;
    fn payload(&self) -> &[u8];
    fn partition(&self) -> Option<i32> {
        None
    }
    /// The record's timestamp (ms since the epoch); default: the producer's
    /// clock when it is sent.
    fn timestamp_ms(&self) -> Option<i64> {
        None
    }
}

/// A record for one partition with an explicit event time.
#[derive(Debug, Clone)]
pub struct TimedRecord {
    pub partition: i32,
    pub timestamp_ms: i64,
    pub payload: Vec<u8>,
}

impl OutgoingRecord for TimedRecord {
    fn key(&self) -> Option<&str> {
        None
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
    fn partition(&self) -> Option<i32> {
        Some(self.partition)
    }
    fn timestamp_ms(&self) -> Option<i64> {
        Some(self.timestamp_ms)
    }
}

impl OutgoingRecord for (String, Vec<u8>) {
    fn key(&self) -> Option<&str> {
        Some(&self.0)
    }
    fn payload(&self) -> &[u8] {
        &self.1
    }
}

impl OutgoingRecord for (Option<String>, Vec<u8>) {
    fn key(&self) -> Option<&str> {
        self.0.as_deref()
    }
    fn payload(&self) -> &[u8] {
        &self.1
    }
}

impl OutgoingRecord for (String, Vec<u8>, Option<i32>) {
    fn key(&self) -> Option<&str> {
        Some(&self.0)
    }
    fn payload(&self) -> &[u8] {
        &self.1
    }
    fn partition(&self) -> Option<i32> {
        self.2
    }
}

/// Enqueues every record for `topic` at once (librdkafka batches them), then
/// waits for each acknowledgement. Returns one result per record, in order. A
/// full local queue is waited out, not reported.
pub async fn send_all<R: OutgoingRecord>(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: &[R],
) -> Vec<Result<(), KafkaError>> {
    use rdkafka::producer::FutureRecord;
    let mut in_flight = Vec::with_capacity(records.len());
    for record in records {
        loop {
            let mut out = FutureRecord::<str, [u8]>::to(topic).payload(record.payload());
            if let Some(key) = record.key() {
                out = out.key(key);
            }
            if let Some(p) = record.partition() {
                out = out.partition(p);
            }
            if let Some(t) = record.timestamp_ms() {
                out = out.timestamp(t);
            }
            match producer.send_result(out) {
                Ok(delivery) => {
                    in_flight.push(Ok(delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    in_flight.push(Err(e));
                    break;
                }
            }
        }
    }
    let mut results = Vec::with_capacity(in_flight.len());
    for entry in in_flight {
        results.push(match entry {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        });
    }
    results
}

/// Decodes a record as received from Kafka (`lambda_core::event::decode`).
pub fn decode_message<M: Message>(message: &M, max_bytes: usize) -> Result<Event<'_>, DecodeError> {
    decode(
        message.partition(),
        message.offset(),
        message.timestamp().to_millis(),
        message.payload(),
        max_bytes,
    )
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::client::{ClientArgs, Compression, KafkaOption};

    #[test]
    fn the_users_settings_win_over_ours_in_every_client() {
        let args = ClientArgs {
            compression: Compression::Lz4,
            kafka_options: vec![
                KafkaOption {
                    key: "fetch.wait.max.ms".into(),
                    value: "7".into(),
                },
                KafkaOption {
                    key: "linger.ms".into(),
                    value: "20".into(),
                },
            ],
            ..ClientArgs::default()
        };
        let kafka = args.connection("b:9092");
        for consumer in [
            consumer_config(&kafka, "g"),
            bulk_consumer_config(&kafka, "g"),
        ] {
            assert_eq!(consumer.get("fetch.wait.max.ms"), Some("7"));
            assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
            assert_eq!(consumer.get("check.crcs"), Some("true"));
        }
        let defaults = ClientArgs::default().connection("b:9092");
        assert_eq!(
            bulk_consumer_config(&defaults, "g").get("fetch.min.bytes"),
            Some("262144")
        );
        assert_eq!(consumer_config(&defaults, "g").get("fetch.min.bytes"), None);
        for producer in [producer_config(&kafka), burst_producer_config(&kafka)] {
            assert_eq!(producer.get("linger.ms"), Some("20"));
            assert_eq!(producer.get("compression.type"), Some("lz4"));
        }
        assert_eq!(producer_config(&defaults).get("linger.ms"), Some("5"));
        assert_eq!(burst_producer_config(&defaults).get("linger.ms"), Some("0"));
        assert_eq!(
            client_config(&kafka).get("bootstrap.servers"),
            Some("b:9092")
        );
    }
}
