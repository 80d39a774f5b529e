//! A record batch the consumer cannot read stops the speed layer loudly:
//! it is neither skipped (a lost event) nor retried in a warning loop while
//! the layer claims to be ready (a partition stalled for good).
//!
//! The batch is made unreadable on the wire
//! (`testkit::broker_behind_corrupting_proxy`): its CRC no longer matches,
//! exactly what a corrupt or foreign batch looks like to a consumer.

use clap::Parser;
use common::shutdown::CancellationToken;
use common::testkit::{broker_behind_corrupting_proxy, get, metric_sum, produce, unique, wait_for};
use std::time::Duration;

use support::{common_flags, SpeedCli};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_stops_the_speed_layer_with_the_reason() {
    let (broker, brokers) = broker_behind_corrupting_proxy().await;
    let topic = unique("unreadable");
    let (dlq, rt) = (format!("{topic}.dlq"), format!("{topic}.rt"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_str().expect("utf-8");
    let token = CancellationToken::new();
    let args = SpeedCli::try_parse_from(common_flags(&brokers, &topic, &dlq, &rt, dir_s))
        .expect("flags")
        .args;
    let running = speed_layer::start(args, token.clone())
        .await
        .expect("starts");
    let addr = running.http_addr;

    // Readable events are counted and the layer is ready.
    let good: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("k{i}"), b"alpha beta".to_vec()))
        .collect();
    produce(&brokers, &topic, good).await;
    tokio::task::spawn_blocking(move || {
        wait_for("the readable events", Duration::from_secs(60), || {
            let m = get(addr, "/metrics").ok()?.text();
            (metric_sum(&m, "lambda_speed_position") as usize == 20).then_some(())
        });
        assert_eq!(get(addr, "/readyz").expect("readyz").status, 200);
    })
    .await
    .expect("join");

    // Then a record the consumer will receive with a broken CRC.
    produce(
        &brokers,
        &topic,
        vec![(
            "poison".to_owned(),
            [b"a ", common::testkit::CORRUPT_MARKER].concat(),
        )],
    )
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the speed layer stops by itself instead of retrying forever");
    let error = outcome.expect_err("the speed layer reports a failure");
    let text = error.to_string();
    assert!(text.contains("cannot read records"), "{text}");
    assert!(text.contains(&topic), "{text}");

    // The events before the unreadable batch were checkpointed; the batch
    // itself was not skipped: it is still ahead of the checkpoint.
    let store = speed_layer::store::RealtimeStore::open(&dir.path().join("realtime"))
        .expect("store reopens");
    assert_eq!(store.offsets().expect("offsets").total_offsets(), 20);
    broker.stop().await;
}
