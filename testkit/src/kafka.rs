//! Producing to and consuming from Kafka in tests: a throw-away broker,
//! records produced and acknowledged, records read back with their
//! headers and timestamps.

use crate::unique;
use std::time::Duration;

/// A throw-away in-memory broker and a topic name unique to this test (not
/// created: the layer under test creates its topics).
pub async fn memory_broker(topic_prefix: &str) -> (common::broker::EmbeddedBroker, String, String) {
    let broker = common::broker::EmbeddedBroker::start(common::broker::BrokerStorage::Memory)
        .await
        .expect("embedded broker starts");
    let brokers = broker.bootstrap();
    (broker, brokers, unique(topic_prefix))
}

/// A record read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (ms since the epoch), if it has one.
    pub timestamp_ms: Option<i64>,
}

impl Consumed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the helpers below connect with: a bootstrap address (plain TCP, as
/// the embedded broker speaks by default) or a whole [`Connection`]
/// (TLS, SASL).
///
/// [`Connection`]: common::client::Connection
pub trait Reach {
    fn connection(self) -> common::client::Connection;
}

impl Reach for &str {
    fn connection(self) -> common::client::Connection {
        common::client::Connection::plaintext(self)
    }
}

impl Reach for &String {
    fn connection(self) -> common::client::Connection {
        common::client::Connection::plaintext(self)
    }
}

impl Reach for &common::client::Connection {
    fn connection(self) -> common::client::Connection {
        self.clone()
    }
}

/// Produces keyed records and waits until every one is acknowledged.
pub async fn produce(
    kafka: impl Reach,
    topic: &str,
    records: impl IntoIterator<Item = (String, Vec<u8>)>,
) {
    let records: Vec<(String, Vec<u8>)> = records.into_iter().collect();
    deliver_all(kafka, topic, &records).await;
}

/// Produces each record to its partition with its timestamp, in order, and
/// waits until every one is acknowledged.
pub async fn produce_timed(
    kafka: impl Reach,
    topic: &str,
    records: impl IntoIterator<Item = common::kafka::TimedRecord>,
) {
    let records: Vec<_> = records.into_iter().collect();
    deliver_all(kafka, topic, &records).await;
}

/// Produces each `(partition, payload)` to that partition and waits until
/// every one is acknowledged.
pub async fn produce_to_partitions(
    kafka: impl Reach,
    topic: &str,
    records: impl IntoIterator<Item = (i32, Vec<u8>)>,
) {
    let records: Vec<(String, Vec<u8>, Option<i32>)> = records
        .into_iter()
        .enumerate()
        .map(|(i, (p, payload))| (format!("k{i}"), payload, Some(p)))
        .collect();
    deliver_all(kafka, topic, &records).await;
}

/// Sends `records` with a producer of its own and waits until every one is
/// acknowledged (what each `produce*` above ends with).
async fn deliver_all<R: common::kafka::OutgoingRecord>(
    kafka: impl Reach,
    topic: &str,
    records: &[R],
) {
    let producer: rdkafka::producer::FutureProducer =
        common::kafka::producer_config(&kafka.connection())
            .create()
            .expect("producer");
    for result in common::kafka::send_all(&producer, topic, records).await {
        result.expect("delivered");
    }
}

/// Consumes `topic` from the beginning until nothing new
/// has arrived for `idle` after the first record (for topics whose record
/// count a test cannot know); waits up to `first` for that first record.
pub async fn consume_until_idle(
    kafka: impl Reach,
    topic: &str,
    first: Duration,
    idle: Duration,
) -> Vec<Consumed> {
    let consumer = read_from_start(kafka, topic).await;
    let mut out = Vec::new();
    let mut wait = first;
    while let Ok(m) = tokio::time::timeout(wait, consumer.recv()).await {
        out.push(consumed(&m.expect("consume")));
        wait = idle;
    }
    out
}

/// A consumer of every partition of `topic` from its beginning. Assigned,
/// not subscribed: reading a topic in a test must not depend on the group
/// protocol (a rejoin after a missed heartbeat on a loaded machine can
/// stall a subscribed consumer for longer than a test waits).
async fn read_from_start(kafka: impl Reach, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let connection = kafka.connection();
    let partitions =
        common::kafka::wait_for_partitions(&connection, topic, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("topic {topic} has no partitions"));
    let consumer: rdkafka::consumer::StreamConsumer =
        common::kafka::consumer_config(&connection, &unique("testkit"))
            .create()
            .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

fn consumed<M: rdkafka::message::Message>(m: &M) -> Consumed {
    use rdkafka::message::Headers;
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}

/// Consumes `topic` from the beginning until `expected`
/// records have arrived; panics after `timeout`.
pub async fn consume_n(
    kafka: impl Reach,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    consume_kept(kafka, topic, expected, timeout, |_| true).await
}

/// Consumes `topic` from the beginning until it holds every record below
/// `cut` (records at or above it, which keep arriving on a live topic, are
/// dropped); panics after `timeout`.
pub async fn consume_below(
    kafka: impl Reach,
    topic: &str,
    cut: &lambda_core::Cut,
    timeout: Duration,
) -> Vec<Consumed> {
    use rdkafka::consumer::Consumer;
    // Offsets are not records everywhere: a transaction marker takes one
    // and is never delivered, so the end is reached when the consumer's
    // position (which librdkafka moves past markers) is at the cut
    // everywhere, whatever the number of records read.
    let consumer = read_from_start(kafka, topic).await;
    let reached = |consumer: &rdkafka::consumer::StreamConsumer| {
        let positions = consumer.position().expect("position");
        cut.iter().all(|(p, end)| {
            end <= 0
                || positions
                    .find_partition(topic, p)
                    .is_some_and(|e| matches!(e.offset(), rdkafka::Offset::Offset(o) if o >= end))
        })
    };
    let (all_offsets, mut out) = (cut.total_offsets() as usize, Vec::new());
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < all_offsets && !reached(&consumer) {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !remaining.is_zero(),
            "timed out after {} records from {topic}, below {cut}",
            out.len()
        );
        let slice = remaining.min(Duration::from_millis(100));
        if let Ok(m) = tokio::time::timeout(slice, consumer.recv()).await {
            let m = consumed(&m.expect("consume"));
            if cut.includes(m.partition, m.offset) {
                out.push(m);
            }
        }
    }
    out
}

/// Consumes until `expected` records passed `keep`.
async fn consume_kept(
    kafka: impl Reach,
    topic: &str,
    expected: usize,
    timeout: Duration,
    keep: impl Fn(&Consumed) -> bool,
) -> Vec<Consumed> {
    let consumer = read_from_start(kafka, topic).await;
    let mut out = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < expected {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = tokio::time::timeout(remaining, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {} of {expected} records from {topic}",
                    out.len()
                )
            })
            .expect("consume");
        let m = consumed(&m);
        if keep(&m) {
            out.push(m);
        }
    }
    out
}
