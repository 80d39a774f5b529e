//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use std::collections::BTreeMap;
use std::time::Duration;

/// A name unique to this test run, so tests can share a broker without
/// sharing topics or groups.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A consumed record: partition, offset, key, payload.
pub type Record = (i32, i64, Option<Vec<u8>>, Vec<u8>);

/// Consumes from `topic` with a fresh group until `expected` records have
/// arrived, or panics after `timeout`.
pub async fn consume_n(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer: StreamConsumer = common::kafka::consumer_config(brokers, &unique("group"))
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < expected {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = tokio::time::timeout(remaining, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {expected} records", out.len()))
            .expect("consume");
        out.push((
            m.partition(),
            m.offset(),
            m.key().map(<[u8]>::to_vec),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    out
}

/// Offsets per partition, in arrival order.
pub fn offsets_by_partition(records: &[Record]) -> BTreeMap<i32, Vec<i64>> {
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o, _, _) in records {
        map.entry(*p).or_default().push(*o);
    }
    map
}
