//! The embedded broker against a real Kafka client (rdkafka / librdkafka).

mod common;

use ::common::broker::{BrokerOptions, BrokerStorage, EmbeddedBroker};
use ::common::client::{ClientArgs, Connection, SaslMechanism, SecurityProtocol};
use ::common::kafka::ensure_topic;
use ::testkit::{broker_behind_tls, secured_broker, TestCertificates};
use common::{consume_n, offsets_by_partition, produce, unique};
use std::collections::BTreeSet;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A started broker, its bootstrap address, and a new topic on it.
async fn broker_with_topic(
    storage: BrokerStorage,
    name: &str,
    partitions: i32,
) -> (EmbeddedBroker, String, String) {
    let broker = EmbeddedBroker::start(storage).await.expect("broker");
    let brokers = broker.bootstrap();
    let topic = unique(name);
    ensure_topic(
        &::common::client::Connection::plaintext(&brokers),
        &topic,
        partitions,
        TIMEOUT,
    )
    .await
    .expect("topic");
    (broker, brokers, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keyed_records_come_back_dense_and_in_order() {
    let (broker, brokers, topic) = broker_with_topic(BrokerStorage::Memory, "dense", 4).await;
    // Creating it again is fine.
    ensure_topic(
        &::common::client::Connection::plaintext(&brokers),
        &topic,
        4,
        TIMEOUT,
    )
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

/// A partition's end (its high watermark) counts every record, whether
/// the producer batched them or not: readers check their durable positions
/// against it. The in-memory engine used to answer the newest batch's base
/// offset + 1 (see `vendor/README.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_end_counts_every_record_of_a_batched_produce() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let dir = tempfile::tempdir().expect("tempdir");
    for storage in [
        BrokerStorage::Memory,
        BrokerStorage::Sqlite(dir.path().join("tansu.db")),
    ] {
        let (broker, brokers, topic) = broker_with_topic(storage.clone(), "ends", 2).await;
        // One producer burst: librdkafka puts the records of a partition in
        // as few batches as it can.
        produce(
            &brokers,
            &topic,
            (0..100).map(|i| (format!("k{i}"), format!("record {i}").into_bytes())),
        )
        .await;
        let per_partition = offsets_by_partition(&consume_n(&brokers, &topic, 100, TIMEOUT).await);
        let kafka = Connection::plaintext(&brokers);
        let client: BaseConsumer = ::common::kafka::client_config(&kafka)
            .create()
            .expect("client");
        for (p, offsets) in per_partition {
            let watermarks = client
                .fetch_watermarks(&topic, p, TIMEOUT)
                .expect("watermarks");
            assert_eq!(
                watermarks,
                (0, offsets.len() as i64),
                "{storage:?}, partition {p}: from the first record to after the last"
            );
        }
        broker.stop().await;
    }
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
    ensure_topic(
        &::common::client::Connection::plaintext(&brokers),
        &topic,
        2,
        TIMEOUT,
    )
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

/// tansu answers a fetch at an offset inside a record batch with the *next*
/// batch, skipping the rest of the one asked for. `kafka::Resume` (seek a
/// margin earlier, detect the jump, seek further back) must still deliver the
/// checkpointed offset first, or a resuming layer would lose records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_inside_a_record_batch_delivers_the_checkpointed_offset() {
    use ::common::kafka::consumer_config;
    use ::common::reader::{Resume, ResumeCheck};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let (broker, brokers, topic) = broker_with_topic(BrokerStorage::Memory, "mid-batch", 1).await;
    // Two produce calls: two record batches, offsets 0..100 and 100..200.
    produce(
        &brokers,
        &topic,
        (0..100).map(|i| (i.to_string(), format!("r{i}").into_bytes())),
    )
    .await;
    produce(
        &brokers,
        &topic,
        (100..200).map(|i| (i.to_string(), format!("r{i}").into_bytes())),
    )
    .await;

    let consumer: StreamConsumer = consumer_config(
        &::common::client::Connection::plaintext(&brokers),
        &unique("g"),
    )
    .create()
    .expect("consumer");
    let mut resume = Resume::with_margin([(0, 57)], 10);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(resume.seek_offset(0)))
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut seeks = 0;
    let accepted = loop {
        let m = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .expect("a record")
            .expect("ok");
        match resume.check(0, m.offset()) {
            ResumeCheck::Skip => {}
            ResumeCheck::Accept => break (m.offset(), m.payload().map(<[u8]>::to_vec)),
            ResumeCheck::SeekBack(offset) => {
                seeks += 1;
                consumer
                    .seek(&topic, 0, Offset::Offset(offset), TIMEOUT)
                    .expect("seek");
            }
        }
    };
    assert_eq!(accepted, (57, Some(b"r57".to_vec())));
    eprintln!("seeks needed: {seeks}");
    broker.stop().await;
}

/// The SQLite storage reuses a prepared statement for every record's headers
/// (vendor/tansu-storage.patch): each record must still come back with its
/// own headers, read after read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_keeps_its_own_headers_on_sqlite_storage() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let dir = tempfile::tempdir().expect("tempdir");
    let storage = BrokerStorage::Sqlite(dir.path().join("tansu.db"));
    let (broker, brokers, topic) = broker_with_topic(storage, "headers", 2).await;
    let producer: FutureProducer =
        ::common::kafka::producer_config(&::common::client::Connection::plaintext(&brokers))
            .create()
            .expect("producer");
    const N: usize = 1_000;
    let owned: Vec<(String, String, String)> = (0..N)
        .map(|i| (i.to_string(), (2 * i).to_string(), format!("record {i}")))
        .collect();
    let mut sends = Vec::with_capacity(N);
    for (n, twice, payload) in &owned {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "n",
                value: Some(n),
            })
            .insert(Header {
                key: "twice",
                value: Some(twice),
            });
        let record = FutureRecord::<str, str>::to(&topic)
            .key(n)
            .payload(payload)
            .headers(headers);
        sends.push(producer.send(record, TIMEOUT));
    }
    for send in sends {
        send.await.expect("delivered");
    }
    for read in 0..2 {
        let records =
            ::testkit::consume_until_idle(&brokers, &topic, TIMEOUT, Duration::from_secs(3)).await;
        assert_eq!(records.len(), N, "read {read}");
        for r in &records {
            let i: usize = std::str::from_utf8(&r.payload)
                .expect("utf-8")
                .trim_start_matches("record ")
                .parse()
                .expect("number");
            let want = [
                ("n".to_owned(), i.to_string()),
                ("twice".to_owned(), (2 * i).to_string()),
            ];
            assert_eq!(r.headers, want, "read {read}: headers of record {i}");
        }
    }
    broker.stop().await;
}

/// A SASL/SCRAM connection as the role's flags build it.
fn scram(brokers: &str, mechanism: SaslMechanism, password: &str) -> Connection {
    let args = ClientArgs {
        sasl_mechanism: Some(mechanism),
        sasl_username: Some("lambda".into()),
        sasl_password: Some(password.parse().expect("infallible")),
        ..ClientArgs::default()
    };
    args.validate().expect("valid SASL flags");
    args.connection(brokers)
}

/// Whether `kafka` gets `topic`'s metadata within a few seconds.
async fn sees_topic(kafka: &Connection, topic: &str) -> bool {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        ::common::kafka::topic_partitions(&kafka, &topic, Duration::from_secs(3)).is_some()
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_requiring_sasl_scram_serves_clients_with_the_password_and_no_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = BrokerOptions {
        scram_users: vec![("lambda".into(), "lambda-secret".into())],
        ..BrokerOptions::default()
    };
    let broker =
        EmbeddedBroker::start_with(BrokerStorage::Sqlite(dir.path().join("b.db")), options)
            .await
            .expect("broker");
    let brokers = broker.bootstrap();
    let topic = unique("sasl");
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let kafka = scram(&brokers, mechanism, "lambda-secret");
        ensure_topic(&kafka, &topic, 2, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{mechanism:?}: the topic: {e}"));
        let records: Vec<(String, Vec<u8>)> = (0..20)
            .map(|i| (format!("k{i}"), format!("{mechanism:?} {i}").into_bytes()))
            .collect();
        produce(&kafka, &topic, records).await;
    }
    let back = consume_n(
        &scram(&brokers, SaslMechanism::ScramSha512, "lambda-secret"),
        &topic,
        40,
        TIMEOUT,
    )
    .await;
    assert_eq!(back.len(), 40);

    // The same broker and topic: a wrong password and no SASL at all get
    // nothing.
    assert!(
        !sees_topic(
            &scram(&brokers, SaslMechanism::ScramSha256, "wrong"),
            &topic
        )
        .await
    );
    assert!(!sees_topic(&Connection::plaintext(&brokers), &topic).await);
    broker.stop().await;
}

/// A TLS connection as the role's flags build it: the test CA, and the
/// client certificate when `mutual`.
fn tls(brokers: &str, certs: &TestCertificates, mutual: bool) -> Connection {
    let args = ClientArgs {
        security_protocol: Some(SecurityProtocol::Ssl),
        ssl_ca_location: Some(certs.ca.clone()),
        ssl_certificate_location: mutual.then(|| certs.client_cert.clone()),
        ssl_key_location: mutual.then(|| certs.client_key.clone()),
        ..ClientArgs::default()
    };
    args.validate().expect("valid TLS flags");
    args.connection(brokers)
}

/// Creates `topic` through `kafka`, produces 20 records and reads them back.
async fn round_trip(kafka: &Connection, topic: &str) {
    ensure_topic(kafka, topic, 2, TIMEOUT)
        .await
        .expect("the topic");
    let records: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("k{i}"), format!("event {i}").into_bytes()))
        .collect();
    produce(kafka, topic, records).await;
    assert_eq!(consume_n(kafka, topic, 20, TIMEOUT).await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_trusting_the_ca_get_through_and_others_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCertificates::create(dir.path());
    let (broker, brokers) = broker_behind_tls(
        BrokerStorage::Memory,
        BrokerOptions::default(),
        &certs,
        false,
    )
    .await;
    let topic = unique("tls");
    round_trip(&tls(&brokers, &certs, false), &topic).await;
    // Plaintext to a TLS listener, and TLS without the private CA (the
    // system's trust store does not know it): nothing.
    assert!(!sees_topic(&Connection::plaintext(&brokers), &topic).await);
    let untrusting = ClientArgs {
        security_protocol: Some(SecurityProtocol::Ssl),
        ..ClientArgs::default()
    }
    .connection(&brokers);
    assert!(!sees_topic(&untrusting, &topic).await);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCertificates::create(dir.path());
    let (broker, brokers) = broker_behind_tls(
        BrokerStorage::Memory,
        BrokerOptions::default(),
        &certs,
        true,
    )
    .await;
    let topic = unique("mtls");
    round_trip(&tls(&brokers, &certs, true), &topic).await;
    assert!(!sees_topic(&tls(&brokers, &certs, false), &topic).await);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, brokers, certs) = secured_broker(dir.path(), "lambda", "over-tls", false).await;
    let kafka = |password: &str| {
        let args = ClientArgs {
            security_protocol: Some(SecurityProtocol::SaslSsl),
            ssl_ca_location: Some(certs.ca.clone()),
            sasl_mechanism: Some(SaslMechanism::ScramSha256),
            sasl_username: Some("lambda".into()),
            sasl_password: Some(password.parse().expect("infallible")),
            ..ClientArgs::default()
        };
        args.validate().expect("valid flags");
        args.connection(&brokers)
    };
    let topic = unique("sasl-ssl");
    round_trip(&kafka("over-tls"), &topic).await;
    assert!(!sees_topic(&kafka("wrong"), &topic).await);
    broker.stop().await;
}

/// The embedded broker answers a fetch as soon as it has records, and a fetch
/// waiting on an empty partition as soon as a record arrives
/// (vendor/tansu-storage.patch, `service/fetch.rs`). Unpatched, tansu 0.6
/// slept through at least half of the consumer's `fetch.wait.max.ms` in both
/// cases: here 5 s of a 10 s wait, twice as long as this test allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_return_as_soon_as_records_are_there() {
    // On both engines: the SQLite one answers a fetch at its partition's
    // end without a query (vendor/README.md), and the record produced while
    // the consumer waits is read from exactly there.
    let dir = tempfile::tempdir().expect("tempdir");
    for storage in [
        BrokerStorage::Memory,
        BrokerStorage::Sqlite(dir.path().join("tansu.db")),
    ] {
        fetches_return_promptly_on(storage).await;
    }
}

async fn fetches_return_promptly_on(storage: BrokerStorage) {
    use ::common::kafka::consumer_config;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    use std::time::Instant;
    const WAIT_MS: u64 = 10_000;
    const PROMPT: Duration = Duration::from_millis(WAIT_MS / 4);
    let (broker, brokers, topic) = broker_with_topic(storage, "prompt", 1).await;
    produce(
        &brokers,
        &topic,
        [("k".to_owned(), b"already there".to_vec())],
    )
    .await;

    let consumer: StreamConsumer = consumer_config(&Connection::plaintext(&brokers), &unique("g"))
        .set("fetch.wait.max.ms", WAIT_MS.to_string())
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("tpl");
    let started = Instant::now();
    consumer.assign(&tpl).expect("assign");
    let first = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("the record already there")
        .expect("ok");
    let first_after = started.elapsed();
    assert_eq!(first.payload(), Some(&b"already there"[..]));
    drop(first);

    // The consumer's next fetch finds nothing and waits; a record produced
    // meanwhile must end that wait. (The consumer stays on this thread: an
    // rdkafka client dropped inside a task can block the worker the
    // in-process broker needs.)
    let producer: rdkafka::producer::FutureProducer =
        ::common::kafka::producer_config(&Connection::plaintext(&brokers))
            .create()
            .expect("producer");
    let sender = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let produced = Instant::now();
            let record = [("k".to_owned(), b"new".to_vec())];
            for r in ::common::kafka::send_all(&producer, &topic, &record).await {
                r.expect("delivered");
            }
            produced
        })
    };
    let m = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("the record produced while waiting")
        .expect("ok");
    let received = Instant::now();
    assert_eq!(m.payload(), Some(&b"new"[..]));
    let produced = sender.await.expect("producer task");
    let second_after = received.duration_since(produced);
    eprintln!("records already there: {first_after:?}; produced while waiting: {second_after:?}");
    assert!(
        first_after < PROMPT,
        "a fetch with data waited {first_after:?} of its {WAIT_MS} ms"
    );
    assert!(
        second_after < PROMPT,
        "a waiting fetch saw a new record only after {second_after:?} of its {WAIT_MS} ms"
    );
    broker.stop().await;
}

/// Every record of `topic` (2 partitions) a consumer at `isolation` reads
/// from the beginning, and each partition's end and the consumer's
/// position there once nothing more arrives.
async fn read_at(brokers: &str, topic: &str, isolation: &str) -> (Vec<String>, Vec<(i64, i64)>) {
    use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let kafka = Connection::plaintext(brokers);
    let consumer: StreamConsumer = ::common::kafka::consumer_config(&kafka, &unique("txn"))
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut payloads = Vec::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        let m = m.expect("consume");
        payloads.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    let position = consumer.position().expect("position");
    let client: BaseConsumer = ::common::kafka::client_config(&kafka)
        .create()
        .expect("client");
    let ends = (0..2)
        .map(|p| {
            let end = client.fetch_watermarks(topic, p, TIMEOUT).expect("ends").1;
            let at = match position.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            };
            (end, at)
        })
        .collect();
    payloads.sort();
    (payloads, ends)
}

/// A transactional producer commits, aborts and commits again, with a
/// plain producer in between, on both storage engines: a read-committed
/// consumer (every Lambda layer's) gets the committed and the plain records
/// and none of the aborted ones, which a read-uncommitted consumer shows
/// are in the log. tansu 0.6.0 routed no EndTxn (the producer could not
/// even commit) and listed no aborted transaction in its fetches (see
/// vendor/README.md); each partition also ends with a transaction marker
/// no consumer ever receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_are_never_read_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for storage in [
        BrokerStorage::Memory,
        BrokerStorage::Sqlite(dir.path().join("tansu.db")),
    ] {
        let (broker, brokers, topic) = broker_with_topic(storage.clone(), "txn", 2).await;
        let records = |what: &str, n: usize| -> Vec<(String, Vec<u8>, Option<i32>)> {
            (0..n)
                .map(|i| {
                    (
                        format!("k{i}"),
                        format!("{what} {i}").into_bytes(),
                        Some(i as i32 % 2),
                    )
                })
                .collect()
        };
        let txn = ::testkit::Transactional::new(&brokers, &unique("txn-id")).await;
        txn.send(&topic, &records("committed", 6), true).await;
        txn.send(&topic, &records("aborted", 6), false).await;
        produce(
            &brokers,
            &topic,
            (0..4).map(|i| (format!("p{i}"), format!("plain {i}").into_bytes())),
        )
        .await;
        // An open transaction holds a read-committed reader back (the last
        // stable offset), and nothing after it either: the plain records
        // produced after it wait with it.
        txn.begin_with(&topic, &records("again", 4)).await;
        produce(
            &brokers,
            &topic,
            (0..2).map(|i| (format!("q{i}"), format!("later {i}").into_bytes())),
        )
        .await;
        let (open, _) = read_at(&brokers, &topic, "read_committed").await;
        assert_eq!(
            open.len(),
            10,
            "{storage:?}: while a transaction is open: {open:?}"
        );
        txn.end(true).await;
        txn.send(&topic, &records("aborted-last", 2), false).await;

        let (committed, ends) = read_at(&brokers, &topic, "read_committed").await;
        let (everything, _) = read_at(&brokers, &topic, "read_uncommitted").await;
        let count = |payloads: &[String], prefix: &str| {
            payloads
                .iter()
                .filter(|p| p.split(' ').next() == Some(prefix))
                .count()
        };
        for (prefix, want) in [
            ("committed", 6),
            ("plain", 4),
            ("again", 4),
            ("aborted", 0),
            ("aborted-last", 0),
        ] {
            assert_eq!(
                count(&committed, prefix),
                want,
                "{storage:?}: read committed, {prefix}: {committed:?}"
            );
        }
        assert_eq!(committed.len(), 16, "{storage:?}: {committed:?}");
        assert_eq!(
            count(&everything, "aborted"),
            6,
            "{storage:?}: the aborted records are in the log"
        );
        assert_eq!(everything.len(), 24, "{storage:?}: {everything:?}");
        for (p, (end, at)) in ends.iter().enumerate() {
            // The readers' positions (`common::reader`) rely on it.
            assert_eq!(
                at, end,
                "{storage:?} partition {p}: librdkafka's position passes the last marker"
            );
        }
        broker.stop().await;
    }
}
