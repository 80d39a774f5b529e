//! `lambda demo` as users meet it: within a minute `/v1/top` equals a recount
//! of the sample events produced so far; events from a plain Kafka client
//! appear in `/v1/words`; and the dashboard, rendered by a real headless
//! browser (Debian `chromium`), shows the top words and a looked-up total.
//! The screenshot is saved to `target/dashboard.png`.

mod common;

use ::testkit::{consume_below, get, produce, top_words, wait_for};
use common::{free_addr, spawn_role, terminate};
use lambda_core::{Cut, Tokenizer};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn json(addr: SocketAddr, path: &str) -> Option<Value> {
    let r = get(addr, path).ok().filter(|r| r.status == 200)?;
    serde_json::from_slice(&r.body).ok()
}

/// Runs headless chromium on `url`, returning the DOM after scripts ran.
fn chromium(args: &[&str], url: &str) -> String {
    // A profile of its own and no background networking: this machine's
    // network is closed, and a first start that phones home can stall.
    // `timeout` turns a hung browser into a failure that says so.
    let profile = tempfile::tempdir().expect("profile dir");
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let out = Command::new("timeout")
        .args(["120", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            &profile_arg,
        ])
        .args([
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            "--window-size=1280,900",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (Debian package `chromium`; .ci/run installs it)");
    assert!(
        out.status.success(),
        "chromium failed ({}; 124 is a 120 s timeout): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_answers_match_the_corpus_external_events_and_the_dashboard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("demo.log");
    let (broker, serving) = (free_addr(), free_addr());
    let args: Vec<String> = [
        "--data-dir",
        dir.path().join("data").to_str().expect("utf-8"),
        "--broker-addr",
        &broker.to_string(),
        "--batch-addr",
        &free_addr().to_string(),
        "--speed-addr",
        &free_addr().to_string(),
        "--http-addr",
        &serving.to_string(),
        "--recompute-interval",
        "2s",
        "--rate",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = spawn_role("demo", &args, &log);

    // Within a minute: a batch view and realtime counts, and the top words
    // equal a recount of exactly the events below the answer's position.
    let (top, as_of) = tokio::task::spawn_blocking(move || {
        wait_for(
            "a batch view and sample events",
            Duration::from_secs(60),
            || {
                let top = json(serving, "/v1/top?k=10")?;
                let as_of: Cut = serde_json::from_value(top["as_of"].clone()).ok()?;
                let cut = sum_of(&top["batch"]["cut"]);
                (cut > 0 && as_of.total_offsets() > cut).then_some((top, as_of))
            },
        )
    })
    .await
    .expect("join");
    let brokers = broker.to_string();
    let events = consume_below(&brokers, "events", &as_of, Duration::from_secs(60)).await;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut tokenizer = Tokenizer::new();
    for e in &events {
        tokenizer.for_each_word(std::str::from_utf8(&e.payload).expect("utf-8"), |w| {
            *counts.entry(w.to_owned()).or_insert(0) += 1
        });
    }
    let mut expected: Vec<(String, u64)> = counts.into_iter().collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    expected.truncate(10);
    assert_eq!(top_words(&top), expected, "top 10 at {as_of}");

    // A plain Kafka client (librdkafka, like most clients) produces to the
    // demo's broker; the events show up in /v1/words.
    let sent = Instant::now();
    produce(
        &brokers,
        "events",
        (0..3).map(|i| (format!("ext-{i}"), b"Zyxwvut from outside".to_vec())),
    )
    .await;
    let seen = tokio::task::spawn_blocking(move || {
        wait_for(
            "external events in /v1/words",
            Duration::from_secs(30),
            || {
                let a = json(serving, "/v1/words/zyxwvut")?;
                (a["count"] == 3).then(|| sent.elapsed())
            },
        )
    })
    .await
    .expect("join");
    eprintln!(
        "external events visible {} ms after their acknowledgement",
        seen.as_millis()
    );

    // The dashboard in a real browser: top words of all time and of the
    // last five minutes (the events were just produced), and the lookup box
    // with the word's series per window.
    let url = format!("http://{serving}/#lookup=Zyxwvut");
    let dom = tokio::task::spawn_blocking(move || chromium(&["--dump-dom"], &url))
        .await
        .expect("join");
    assert!(
        dom.contains("class=\"top-word\""),
        "no top words rendered:\n{dom}"
    );
    assert!(
        dom.contains(&format!(">{}</td>", expected[0].0)),
        "top word missing:\n{dom}"
    );
    assert!(
        dom.contains("<b id=\"lookup-total\">3</b>"),
        "lookup total missing:\n{dom}"
    );
    assert!(
        dom.contains("class=\"recent-word\""),
        "no top words of the last five minutes rendered:\n{dom}"
    );
    assert!(
        dom.contains("class=\"series-point\""),
        "no series of the looked-up word rendered:\n{dom}"
    );
    // The instances of the batch and speed layers, with their partitions.
    assert!(
        dom.matches("<span>instance ").count() >= 2 && dom.contains("<span>partitions 0, 1"),
        "the layers' instances are not shown:\n{dom}"
    );
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../dashboard.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    let url = format!("http://{serving}/#lookup=Zyxwvut");
    tokio::task::spawn_blocking(move || chromium(&[&shot_arg], &url))
        .await
        .expect("join");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is a real image"
    );

    assert!(
        terminate(child),
        "demo exits 0:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

fn sum_of(cut: &Value) -> u64 {
    cut.as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}
