//! The partition reader in a consumer group, against the embedded broker:
//! assignment and revocation come as events before any record read after
//! them, each partition resumes where its user's durable position says, and
//! across a member joining and one leaving every record is read exactly once.

use ::common::client::Connection;
use ::common::kafka::{consumer_config, ensure_topic};
use ::common::reader::{Assignment, Limits, PartitionReader, ResumeAt};
use ::common::shutdown::CancellationToken;
use ::testkit::{memory_broker, produce_to_partitions};
use lambda_core::{Offset, Partition};
use rdkafka::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;
const TIMEOUT: Duration = Duration::from_secs(90);

const LIMITS: Limits = Limits {
    max_records: 7,
    max_bytes: 1 << 20,
    linger: Duration::ZERO,
    catch_up: None,
    idle: Some(Duration::from_millis(100)),
};

/// The test's stand-in for a layer's durable positions: the offset after
/// the last record processed, per partition.
type Durable = Arc<Mutex<BTreeMap<Partition, Offset>>>;

/// One member of the group, as a layer would run it.
struct Member {
    reader: PartitionReader,
    owned: BTreeSet<Partition>,
    changes: Vec<Assignment>,
}

impl Member {
    async fn join(kafka: &Connection, topic: &str, group: &str, durable: &Durable) -> Member {
        let positions = durable.clone();
        let resume_at: ResumeAt = Arc::new(move |p| positions.lock().expect("positions")[&p]);
        let reader = PartitionReader::join(consumer_config(kafka, group), kafka, topic, resume_at)
            .await
            .expect("joins the group");
        Member {
            reader,
            owned: BTreeSet::new(),
            changes: Vec::new(),
        }
    }

    /// Reads one batch: applies its changes, then processes its records
    /// (each recorded in `read` and made durable).
    async fn step(&mut self, durable: &Durable, read: &mut Vec<(Partition, Offset)>) {
        let token = CancellationToken::new();
        let batch = self
            .reader
            .next_batch(&LIMITS, &token)
            .await
            .expect("reads")
            .expect("not cancelled");
        assert!(
            batch.changes.is_empty() || batch.records.is_empty(),
            "changes come in a batch of their own, before any record read after them"
        );
        for change in &batch.changes {
            match change {
                Assignment::Assigned(placed) => {
                    for &(p, offset) in placed {
                        assert_eq!(
                            offset,
                            durable.lock().expect("positions")[&p],
                            "resumes at the durable position"
                        );
                        assert!(self.owned.insert(p), "partition {p} assigned twice");
                    }
                }
                Assignment::Revoked(revoked) => {
                    for p in revoked {
                        assert!(self.owned.remove(p), "partition {p} revoked but not owned");
                    }
                }
            }
            self.changes.push(change.clone());
        }
        for m in &batch.records {
            let (p, o) = (m.partition(), m.offset());
            assert!(
                self.owned.contains(&p),
                "record of partition {p}, not owned"
            );
            read.push((p, o));
            durable.lock().expect("positions").insert(p, o + 1);
        }
        assert_eq!(
            self.reader
                .positions()
                .keys()
                .copied()
                .collect::<BTreeSet<_>>(),
            self.owned,
            "the reader reads what the events say it owns"
        );
    }
}

async fn until(what: &str, mut step: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !step().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
    }
}

/// `n` records to every partition.
async fn produce_round(kafka: &Connection, topic: &str, round: usize, n: usize) {
    let records = (0..PARTITIONS)
        .flat_map(|p| (0..n).map(move |i| (p, format!("r{round} p{p} #{i}").into_bytes())));
    produce_to_partitions(kafka, topic, records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_partitions_and_read_every_record_once_across_rebalances() {
    let (_broker, brokers, topic) = memory_broker("group-reader").await;
    let kafka = Connection::plaintext(&brokers);
    ensure_topic(&kafka, &topic, PARTITIONS, TIMEOUT)
        .await
        .expect("topic");
    let group = format!("{topic}-group");
    produce_round(&kafka, &topic, 0, 10).await;
    // Durable positions inside each partition: records before them were
    // processed before this test's members started.
    let durable: Durable = Arc::new(Mutex::new(
        (0..PARTITIONS).map(|p| (p, 2 * p as Offset)).collect(),
    ));
    let expected_start = durable.lock().expect("positions").clone();
    let mut read = Vec::new();

    // One member: the group gives it every partition, at its positions.
    let mut a = Member::join(&kafka, &topic, &group, &durable).await;
    until(
        "the first member owns every partition and read them to the end",
        async || {
            a.step(&durable, &mut read).await;
            a.owned.len() == PARTITIONS as usize && read.len() >= 30 - 6
        },
    )
    .await;
    assert_eq!(
        a.changes[0],
        Assignment::Assigned(expected_start.clone().into_iter().collect()),
        "the first event is the whole assignment, at the durable positions"
    );

    // A second member joins while records keep arriving: the group splits
    // the partitions between them.
    let mut b = Member::join(&kafka, &topic, &group, &durable).await;
    produce_round(&kafka, &topic, 1, 10).await;
    until("both members own a share", async || {
        a.step(&durable, &mut read).await;
        b.step(&durable, &mut read).await;
        !a.owned.is_empty()
            && !b.owned.is_empty()
            && a.owned.len() + b.owned.len() == PARTITIONS as usize
    })
    .await;
    assert!(
        a.owned.is_disjoint(&b.owned),
        "no partition owned twice: {:?} {:?}",
        a.owned,
        b.owned
    );
    assert!(
        a.changes
            .iter()
            .any(|c| matches!(c, Assignment::Revoked(_))),
        "the first member was told of its revocation: {:?}",
        a.changes
    );
    produce_round(&kafka, &topic, 2, 10).await;
    until("both members read to the end", async || {
        a.step(&durable, &mut read).await;
        b.step(&durable, &mut read).await;
        read.len() >= 90 - 6
    })
    .await;

    // The second member leaves: its partitions come back to the first.
    b.reader.close().await;
    produce_round(&kafka, &topic, 3, 10).await;
    until(
        "the first member owns every partition again and read to the end",
        async || {
            a.step(&durable, &mut read).await;
            a.owned.len() == PARTITIONS as usize && read.len() >= 120 - 6
        },
    )
    .await;

    let mut expected: Vec<(Partition, Offset)> = (0..PARTITIONS)
        .flat_map(|p| (expected_start[&p]..40).map(move |o| (p, o)))
        .collect();
    expected.sort_unstable();
    read.sort_unstable();
    assert_eq!(
        read, expected,
        "every record from the durable positions on, exactly once"
    );
    a.reader.close().await;
}

/// Reads `topic` with a reader opened at `from` until its positions reach
/// `ends`; returns the payloads read and whether any batch reported
/// positions passed without records.
async fn read_to(
    kafka: &Connection,
    topic: &str,
    from: &BTreeMap<Partition, Offset>,
    ends: &BTreeMap<Partition, Offset>,
) -> (Vec<String>, bool) {
    let mut reader = PartitionReader::open(
        consumer_config(kafka, &::testkit::unique("markers")),
        kafka,
        topic,
        from.iter().map(|(&p, &o)| (p, o)),
    )
    .await
    .expect("opens");
    let (token, deadline) = (CancellationToken::new(), Instant::now() + TIMEOUT);
    let (mut payloads, mut passed) = (Vec::new(), false);
    while reader.positions() != ends {
        assert!(
            Instant::now() < deadline,
            "stuck at {:?}, the partitions end at {ends:?}",
            reader.positions()
        );
        let batch = reader
            .next_batch(&LIMITS, &token)
            .await
            .expect("reads")
            .expect("not cancelled");
        for m in &batch.records {
            payloads.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
        passed |= !batch.passed.is_empty();
    }
    reader.close().await;
    (payloads, passed)
}

/// A transactional producer's markers and aborted records hold no record
/// for a read-committed reader; its positions still reach each partition's
/// end, the last marker included (`ReadBatch::passed`), and it reads every
/// committed record once and no aborted one, from the start and resuming
/// right after a committed transaction (where its marker sits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_pass_transaction_markers_to_each_partitions_end() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (broker, brokers, topic) = memory_broker("markers").await;
    let kafka = Connection::plaintext(&brokers);
    ensure_topic(&kafka, &topic, 2, TIMEOUT)
        .await
        .expect("topic");
    let records = |what: &str, n: i32| -> Vec<(String, Vec<u8>, Option<i32>)> {
        (0..n)
            .map(|i| {
                (
                    format!("k{i}"),
                    format!("{what} {i}").into_bytes(),
                    Some(i % 2),
                )
            })
            .collect()
    };
    let txn = ::testkit::Transactional::new(&kafka, &::testkit::unique("markers-id")).await;
    txn.send(&topic, &records("first", 4), true).await;
    // Each partition now holds 2 records and a commit marker.
    let after_first: BTreeMap<Partition, Offset> = [(0, 2), (1, 2)].into();
    txn.send(&topic, &records("aborted", 4), false).await;
    txn.send(&topic, &records("second", 2), true).await;
    txn.send(&topic, &records("aborted", 2), false).await;
    let client: BaseConsumer = ::common::kafka::client_config(&kafka)
        .create()
        .expect("client");
    let ends: BTreeMap<Partition, Offset> = (0..2)
        .map(|p| {
            let (_, end) = client.fetch_watermarks(&topic, p, TIMEOUT).expect("ends");
            (p, end)
        })
        .collect();
    // 2 + 1 + 2 + 1 + 1 + 1 + 1 + 1 offsets per partition, 3 of them records.
    assert_eq!(ends, [(0, 10), (1, 10)].into(), "markers take offsets");

    let start: BTreeMap<Partition, Offset> = [(0, 0), (1, 0)].into();
    let (mut read, passed) = read_to(&kafka, &topic, &start, &ends).await;
    read.sort();
    assert_eq!(
        read,
        ["first 0", "first 1", "first 2", "first 3", "second 0", "second 1"]
    );
    assert!(passed, "the last markers were passed without a record");

    let (mut read, _) = read_to(&kafka, &topic, &after_first, &ends).await;
    read.sort();
    assert_eq!(
        read,
        ["second 0", "second 1"],
        "resumed after the first transaction"
    );
    broker.stop().await;
}

/// A batch read while the user's previous batch is still on its way stays
/// open until that one lands (`next_batch_while`): records produced
/// meanwhile join it instead of starting a batch of their own; once it
/// lands, the batch closes with what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stays_open_while_busy_and_takes_what_arrives_meanwhile() {
    let (_broker, brokers, topic) = memory_broker("busy").await;
    let kafka = Connection::plaintext(&brokers);
    ensure_topic(&kafka, &topic, 1, TIMEOUT)
        .await
        .expect("topic");
    let mut reader = PartitionReader::open(
        consumer_config(&kafka, &::testkit::unique("busy")),
        &kafka,
        &topic,
        [(0, 0)],
    )
    .await
    .expect("opens");
    produce_to_partitions(&kafka, &topic, [(0, b"first".to_vec())]).await;
    let limits = Limits {
        max_records: 100,
        idle: None,
        ..LIMITS
    };
    let token = CancellationToken::new();
    let (produced_tx, produced) = tokio::sync::oneshot::channel::<()>();
    // Busy until the later records are produced and have had ample time
    // to arrive (the consumer waits at most 100 ms per fetch).
    let busy = async move {
        let _ = produced.await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let more = [(0, b"second".to_vec()), (0, b"third".to_vec())];
        produce_to_partitions(&kafka, &topic, more).await;
        let _ = produced_tx.send(());
    };
    let (batch, ()) = tokio::join!(reader.next_batch_while(&limits, &token, busy), later);
    let batch = batch.expect("reads").expect("not cancelled");
    let payloads: Vec<&str> = batch
        .records
        .iter()
        .map(|m| std::str::from_utf8(m.payload().unwrap_or_default()).expect("utf-8"))
        .collect();
    assert_eq!(payloads, ["first", "second", "third"], "one batch");
    drop(batch);
    // Nothing holding it open: what is at hand, at once.
    produce_to_partitions(&kafka, &topic, [(0, b"fourth".to_vec())]).await;
    let batch = reader
        .next_batch(&limits, &token)
        .await
        .expect("reads")
        .expect("not cancelled");
    assert_eq!(batch.records.len(), 1);
}
