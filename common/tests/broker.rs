//! The embedded broker against a real Kafka client (rdkafka / librdkafka).

mod common;

use ::common::broker::{BrokerStorage, EmbeddedBroker};
use ::common::kafka::ensure_topic;
use common::{consume_n, offsets_by_partition, produce, unique};
use std::collections::BTreeSet;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keyed_records_come_back_dense_and_in_order() {
    let broker = EmbeddedBroker::start(BrokerStorage::Memory)
        .await
        .expect("broker");
    let brokers = broker.bootstrap();
    let topic = unique("dense");
    ensure_topic(&brokers, &topic, 4, TIMEOUT)
        .await
        .expect("topic");
    // Creating it again is fine.
    ensure_topic(&brokers, &topic, 4, TIMEOUT)
        .await
        .expect("idempotent");

    const N: usize = 10_000;
    produce(
        &brokers,
        &topic,
        (0..N).map(|i| (format!("key-{}", i % 97), format!("event {i}").into_bytes())),
    )
    .await;

    let records = consume_n(&brokers, &topic, N, TIMEOUT).await;
    assert_eq!(records.len(), N);

    let by_partition = offsets_by_partition(&records);
    assert_eq!(by_partition.len(), 4, "keys spread over all 4 partitions");
    for (p, offsets) in &by_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, &expected,
            "partition {p} offsets are dense and increasing"
        );
    }
    let payloads: BTreeSet<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads.len(), N, "every record arrived exactly once");

    // The same key always lands on the same partition.
    let mut key_partition = std::collections::HashMap::new();
    for r in &records {
        let previous = key_partition.insert(r.key.clone(), r.partition);
        assert!(
            previous.is_none() || previous == Some(r.partition),
            "key {:?} moved partitions",
            r.key
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_storage_survives_a_broker_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("kafka").join("tansu.db");
    let topic = unique("durable");

    let broker = EmbeddedBroker::start(BrokerStorage::Sqlite(db.clone()))
        .await
        .expect("broker");
    let brokers = broker.bootstrap();
    ensure_topic(&brokers, &topic, 2, TIMEOUT)
        .await
        .expect("topic");
    const N: usize = 500;
    produce(
        &brokers,
        &topic,
        (0..N).map(|i| (i.to_string(), format!("before restart {i}").into_bytes())),
    )
    .await;
    broker.stop().await;
    assert!(
        db.exists(),
        "the database file is where we asked: {}",
        db.display()
    );

    let broker = EmbeddedBroker::start(BrokerStorage::Sqlite(db.clone()))
        .await
        .expect("restarted broker");
    let brokers = broker.bootstrap();
    let records = consume_n(&brokers, &topic, N, TIMEOUT).await;
    let payloads: BTreeSet<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).expect("utf-8"))
        .collect();
    let expected: BTreeSet<String> = (0..N).map(|i| format!("before restart {i}")).collect();
    assert_eq!(payloads, expected);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = EmbeddedBroker::start_on(addr, BrokerStorage::Memory)
        .await
        .expect_err("port in use");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
