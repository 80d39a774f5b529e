//! A record batch the consumer cannot read is neither skipped (a lost
//! event) nor retried in a warning loop while the layer claims to be ready
//! (a partition stalled for good): the speed layer holds that partition,
//! says so in `/readyz`, `/status` and `/metrics`, and keeps counting the
//! others, events produced after the bad one included.
//!
//! The batch is made unreadable on the wire
//! (`testkit::broker_behind_corrupting_proxy`): its CRC no longer matches,
//! exactly what a corrupt or foreign batch looks like to a consumer.

use clap::Parser;
use common::shutdown::CancellationToken;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::{
    broker_behind_corrupting_proxy, get, metric_sum, produce_to_partitions, unique, wait_for,
    CORRUPT_MARKER,
};

use support::{common_flags, SpeedCli};

mod support;

/// `n` records of `text` on each of `partitions`.
fn on(partitions: &[i32], n: usize, text: &[u8]) -> Vec<(i32, Vec<u8>)> {
    partitions
        .iter()
        .flat_map(|&p| (0..n).map(move |_| (p, text.to_vec())))
        .collect()
}

fn json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = get(addr, path).expect("GET");
    (r.status, serde_json::from_slice(&r.body).expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_holds_its_partition_and_the_others_go_on() {
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

    // Five readable events on each of the three partitions, then one that
    // arrives unreadable on partition 1, then ten more readable ones on
    // every partition.
    let poison = [b"a ".as_slice(), CORRUPT_MARKER].concat();
    produce_to_partitions(&brokers, &topic, on(&[0, 1, 2], 5, b"alpha beta")).await;
    produce_to_partitions(&brokers, &topic, on(&[1], 1, &poison)).await;
    produce_to_partitions(&brokers, &topic, on(&[0, 1, 2], 10, b"alpha gamma")).await;

    let status = tokio::task::spawn_blocking(move || {
        // Both: the other partitions can reach their ends before partition
        // 1's bad batch is even met.
        wait_for(
            "partitions 0 and 2 to be read to the end and partition 1 held",
            Duration::from_secs(60),
            || {
                let (_, s) = json(addr, "/status");
                let ends = s["positions"]["0"] == 15 && s["positions"]["2"] == 15;
                (ends && !s["held"]["1"].is_null()).then_some(s)
            },
        )
    })
    .await
    .expect("join");
    // Partition 1 is held at the unreadable batch, not past it.
    assert_eq!(status["positions"]["1"], 5, "{status}");
    assert_eq!(status["held"]["1"]["offset"], 5, "{status}");
    assert_eq!(status["ready"], false, "{status}");
    let reason = status["held"]["1"]["reason"].as_str().expect("a reason");
    assert!(reason.contains("cannot read records"), "{reason}");
    tokio::task::spawn_blocking(move || {
        let (code, body) = json(addr, "/readyz");
        assert_eq!(code, 503, "{body}");
        let error = body["error"].as_str().expect("an error");
        assert!(
            error.contains("partition 1") && error.contains("offset 5"),
            "{error}"
        );
        let m = get(addr, "/metrics").expect("metrics").text();
        assert_eq!(metric_sum(&m, "lambda_speed_held_partitions"), 1.0);
        assert!(metric_sum(&m, "lambda_speed_unreadable_batches_total") >= 1.0);
    })
    .await
    .expect("join");

    // Still running until asked to stop; then it stops cleanly.
    token.cancel();
    running
        .wait()
        .await
        .expect("the speed layer stops cleanly when asked");
    // The checkpoint has the held partition where it stopped: the bad batch
    // and what follows it stay unread, not skipped.
    let store =
        realtime_store::RealtimeStore::open(&dir.path().join("realtime")).expect("store reopens");
    let offsets = store.offsets().expect("offsets");
    assert_eq!(
        (offsets.get(0), offsets.get(1), offsets.get(2)),
        (15, 5, 15)
    );
    broker.stop().await;
}
