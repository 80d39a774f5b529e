//! What the batch layer's integration tests share: its flags, a wait for
//! its master log to reach an end, and a forced recompute over HTTP.
#![allow(dead_code)]

use batch_layer::config::BatchArgs;
use clap::Parser;
use lambda_core::view::Manifest;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::{get, http, metric_sum, wait_for};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    batch: BatchArgs,
}

/// The admin token every test's batch layer is started with.
pub const TOKEN: &str = "s3cret";

pub fn batch_args(
    brokers: &str,
    topic: &str,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> BatchArgs {
    let dlq = format!("{topic}.dlq");
    let dir = data_dir.to_str().expect("utf-8 path");
    let mut argv = vec![
        "batch",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--dead-letter-topic",
        &dlq,
        "--data-dir",
        dir,
        "--http-addr",
        "127.0.0.1:0",
        "--partitions",
        "3",
        "--recompute-interval",
        "1h",
        "--max-event-bytes",
        "1000",
        "--admin-token",
        TOKEN,
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("valid flags").batch
}

pub fn recompute(addr: SocketAddr) -> Manifest {
    let auth = format!("Bearer {TOKEN}");
    let r = http(addr, "POST", "/recompute", &[("Authorization", &auth)], b"").expect("recompute");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("manifest")
}

/// Waits (up to 60 s, then fails) until the master log holds `records`.
pub fn wait_for_log_end(addr: SocketAddr, records: usize) {
    wait_for(
        &format!("{records} records"),
        Duration::from_secs(60),
        || {
            let m = get(addr, "/metrics").ok()?.text();
            (metric_sum(&m, "lambda_batch_log_end_offset") as usize == records).then_some(())
        },
    );
}
