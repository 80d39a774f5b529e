//! The speed layer against the embedded broker: exact counts, dead letters,
//! published upserts. (Its hand-off to a real batch layer is tested with the
//! whole stack, in the `cli` crate's `handoff` test.)

use clap::Parser;
use common::dead_letter::headers;
use common::shutdown::CancellationToken;
use lambda_core::realtime::{route, RealtimeMessage};
use lambda_core::{BucketSize, Cut, Positions};
use realtime_store::RealtimeStore;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use support::{common_flags, SpeedCli};
use testkit::{
    consume_n, consume_until_idle, get, memory_broker, metric_sum, poisoned_events, produce,
    realtime_per_word, recount, wait_metric,
};

mod support;

/// Waits until the speed layer has checkpointed `total` records.
fn wait_position(addr: SocketAddr, total: usize) {
    let timeout = Duration::from_secs(90);
    wait_metric(addr, "lambda_speed_position", total as f64, timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_and_poison_pills_are_dead_lettered() {
    let (broker, brokers, topic) = memory_broker("speed").await;
    let (dlq, rt) = (format!("{topic}.dlq"), format!("{topic}.rt"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_str().expect("utf-8").to_owned();

    let token = CancellationToken::new();
    let args = SpeedCli::try_parse_from(common_flags(&brokers, &topic, &dlq, &rt, &dir_s))
        .expect("flags")
        .args;
    let running = speed_layer::start(args, token.clone())
        .await
        .expect("starts");
    let addr = running.http_addr;

    let (records, good) = poisoned_events(2000);
    let bad = records.len() - good.len();
    let total = records.len();
    produce(&brokers, &topic, records).await;
    tokio::task::spawn_blocking(move || wait_position(addr, total))
        .await
        .expect("join");
    let metrics =
        tokio::task::spawn_blocking(move || get(addr, "/metrics").expect("metrics").text())
            .await
            .expect("join");
    assert_eq!(
        metric_sum(&metrics, "lambda_dead_letters_total") as usize,
        bad
    );

    token.cancel();
    running.wait().await.expect("the speed layer stops cleanly");

    let (realtime, below) =
        realtime_per_word(dir.path(), &Cut::new(), BucketSize::new(8).expect("8"));
    assert_eq!(below, 0);
    assert_eq!(
        realtime,
        recount(&good),
        "realtime counts equal a recount of the good events"
    );

    // Every poison pill is in the dead-letter topic, with origin and reason.
    let dead = consume_n(&brokers, &dlq, bad, Duration::from_secs(30)).await;
    let mut origins: Vec<i64> = Vec::new();
    for d in &dead {
        assert_eq!(d.header(headers::LAYER), Some("speed"));
        assert!(matches!(
            d.header(headers::REASON),
            Some("invalid-utf8" | "too-large" | "empty")
        ));
        origins.push(
            d.header(headers::ORIGIN_OFFSET)
                .and_then(|o| o.parse().ok())
                .expect("origin offset"),
        );
    }
    assert_eq!(origins.len(), bad);

    // The published upserts end at the checkpointed counts.
    let store = RealtimeStore::open(&dir.path().join("realtime")).expect("store");
    let expected = store.load_counts().expect("counts");
    drop(store);
    let upserts = consume_until_idle(
        &brokers,
        &rt,
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await;
    let mut published: HashMap<String, u64> = HashMap::new();
    let mut last_watermark: BTreeMap<i32, Positions> = BTreeMap::new();
    let mut open_upserts: BTreeMap<i32, usize> = BTreeMap::new();
    for m in &upserts {
        match RealtimeMessage::decode(m.key.as_deref(), Some(&m.payload)).expect("realtime message")
        {
            RealtimeMessage::Upserts { upserts: us, .. } => {
                for u in us {
                    assert_eq!(
                        m.partition,
                        route(&u.word, u.partition, u.bucket, 3),
                        "{} on the partition its key routes to",
                        u.key()
                    );
                    let c = published.entry(u.key()).or_insert(0);
                    *c = (*c).max(u.count);
                    *open_upserts.entry(m.partition).or_default() += 1;
                }
            }
            RealtimeMessage::Watermark(w) => {
                last_watermark.insert(m.partition, w.positions);
                open_upserts.insert(m.partition, 0);
            }
        }
    }
    // Every realtime partition ends with a watermark at the final checkpoint,
    // after the last upsert.
    let checkpointed = RealtimeStore::open(&dir.path().join("realtime"))
        .expect("store")
        .offsets()
        .expect("offsets");
    assert_eq!(
        last_watermark.len(),
        3,
        "a watermark on every realtime partition"
    );
    for (r, w) in &last_watermark {
        assert_eq!(w, &checkpointed, "last watermark of realtime partition {r}");
        assert_eq!(
            open_upserts.get(r),
            Some(&0),
            "upserts after the last watermark on {r}"
        );
    }
    for (k, c) in &expected {
        let key = format!("{}/{}/{}", k.bucket.partition, k.bucket.bucket, k.word);
        assert_eq!(published.get(&key), Some(c), "published count of {key}");
    }
    assert_eq!(published.len(), expected.len());
    broker.stop().await;
}
