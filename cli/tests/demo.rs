//! `lambda demo`: starts, ingests its sample events in both layers, stops
//! cleanly on SIGTERM, and resumes on the same data directory with nothing
//! lost (the embedded broker keeps its log in SQLite).

mod common;

use ::testkit::{get, metric_sum, wait_for};
use common::{free_addr, spawn_role, terminate};
use std::time::Duration;

fn metric(addr: std::net::SocketAddr, family: &str) -> Option<f64> {
    get(addr, "/metrics")
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| metric_sum(&r.text(), family))
}

#[test]
fn demo_runs_stops_cleanly_and_resumes_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("demo.log");
    let (broker, batch, speed, serving) = (free_addr(), free_addr(), free_addr(), free_addr());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--data-dir",
            dir.path().join("data").to_str().expect("utf-8"),
            "--broker-addr",
            &broker.to_string(),
            "--batch-addr",
            &batch.to_string(),
            "--speed-addr",
            &speed.to_string(),
            "--http-addr",
            &serving.to_string(),
            "--recompute-interval",
            "1s",
            "--partitions",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    let child = spawn_role("demo", &args(&["--rate", "200"]), &log);
    let produced = wait_for(
        "sample events in both layers",
        Duration::from_secs(90),
        || {
            let speed_pos = metric(speed, "lambda_speed_position")?;
            let batch_end = metric(batch, "lambda_batch_log_end_offset")?;
            (speed_pos >= 100.0 && batch_end >= 100.0).then_some(batch_end)
        },
    );
    assert!(
        terminate(child),
        "demo exits 0 on SIGTERM:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Again on the same directory, without the sample producer: everything
    // produced before the stop is still there and reaches both layers.
    let child = spawn_role("demo", &args(&["--no-sample"]), &log);
    let (speed_pos, batch_end) = wait_for(
        "both layers to catch up after restart",
        Duration::from_secs(90),
        || {
            let s = metric(speed, "lambda_speed_position")?;
            let b = metric(batch, "lambda_batch_log_end_offset")?;
            (s == b && b >= produced).then_some((s, b))
        },
    );
    assert_eq!(speed_pos, batch_end);
    let view = wait_for("a batch view", Duration::from_secs(30), || {
        let r = get(batch, "/views/latest").ok()?;
        (r.status == 200).then(|| r.text())
    });
    assert!(view.contains("\"version\""), "{view}");
    assert!(
        terminate(child),
        "second run exits 0:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
