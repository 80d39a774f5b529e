//! Kafka helpers: client configurations with this project's delivery settings,
//! and idempotent topic creation.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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

/// The settings every client shares.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.keepalive.enable", "true")
        // Resolve `localhost` to IPv4 first, as the embedded broker listens there.
        .set("broker.address.family", "v4");
    config
}

/// A consumer whose positions are managed by the application, not Kafka:
/// no auto-commit and no automatic offset store. Layers resume from their own
/// durable state (the master log, a sled checkpoint) and commit to Kafka only
/// for monitoring.
pub fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut config = client_config(brokers);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    config
}

/// A producer that waits for the broker's acknowledgement of every record.
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = client_config(brokers);
    config
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    config
}

/// Creates `topic` with `partitions` partitions unless it exists already, then
/// waits until its metadata is visible. An existing topic is fine, whatever its
/// partition count (a warning says if it differs).
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers)
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

    let brokers_owned = brokers.to_owned();
    let topic_owned = topic.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        topic_partitions(&brokers_owned, &topic_owned, timeout)
    })
    .await
    .ok()
    .flatten();
    match found {
        Some(n) => {
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
        None => Err(KafkaSetupError::TopicNotVisible {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
            waited: timeout,
        }),
    }
}

/// The partition count of `topic`, polling metadata until it shows or
/// `timeout` passes. Blocking: call from a blocking context.
pub fn topic_partitions(brokers: &str, topic: &str, timeout: Duration) -> Option<usize> {
    let consumer: BaseConsumer = client_config(brokers).create().ok()?;
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

/// Enqueues every `(key, payload)` record for `topic` at once (librdkafka
/// batches them), then waits for each acknowledgement. Returns one result per
/// record, in order. A full local queue is waited out, not reported.
pub async fn send_all(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Vec<Result<(), KafkaError>> {
    use rdkafka::producer::FutureRecord;
    let mut in_flight = Vec::with_capacity(records.len());
    for (key, payload) in records {
        loop {
            match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
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
