//! Failures that stop a role: it exits non-zero on its own and says why,
//! rather than running on half-alive.

use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{memory_broker, produce, wait_metric};

mod common;

use common::{free_addr, spawn_role, terminate};

/// The flags of a one-partition batch layer on `brokers`.
fn batch_flags(brokers: &str, topic: &str, data_dir: &Path, http: &str) -> Vec<String> {
    let dir = data_dir.to_str().expect("utf-8 path");
    [
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--data-dir",
        dir,
        "--http-addr",
        http,
        "--partitions",
        "1",
        "--recompute-interval",
        "1h",
        "--shutdown-grace",
        "2s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The master log holds offsets 0..40 of the events topic; the topic is then
/// recreated empty (here: a fresh broker). Resuming at 40 of a partition that
/// holds nothing would silently skip the next 40 events (librdkafka's
/// `auto.offset.reset` would jump to an end), so ingestion fails and the
/// layer exits non-zero, naming the partition, its position and the range
/// the topic holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_layer_whose_topic_no_longer_holds_its_position_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("batch");
    let (broker, brokers, topic) = memory_broker("recreated").await;
    let http = free_addr();
    let batch = spawn_role(
        "batch",
        &batch_flags(&brokers, &topic, &data_dir, &http.to_string()),
        &dir.path().join("first.log"),
    );
    produce(
        &brokers,
        &topic,
        (0..40).map(|i| (i.to_string(), format!("event {i}").into_bytes())),
    )
    .await;
    tokio::task::spawn_blocking(move || {
        wait_metric(
            http,
            "lambda_batch_log_end_offset",
            40.0,
            Duration::from_secs(60),
        )
    })
    .await
    .expect("join");
    assert!(terminate(batch), "the first run stops cleanly on SIGTERM");
    broker.stop().await;

    let (fresh, brokers, _) = memory_broker("unused").await;
    let log = dir.path().join("second.log");
    let mut batch = spawn_role(
        "batch",
        &batch_flags(&brokers, &topic, &data_dir, &free_addr().to_string()),
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = batch.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the batch layer is still running: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(&log).expect("log");
    assert!(!status.success(), "exit status {status}; log:\n{stderr}");
    for says in [
        "partition 0",
        "resumes at offset 40",
        "holds offsets 0..0",
        "recreated",
    ] {
        assert!(
            stderr.contains(says),
            "the reason does not say `{says}`:\n{stderr}"
        );
    }
    fresh.stop().await;
}
