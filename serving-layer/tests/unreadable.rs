//! A realtime-topic batch the serving layer cannot read stops it loudly,
//! instead of a follower that retries forever while answers claim to be
//! current. The batch is made unreadable on the wire
//! (`testkit::broker_behind_corrupting_proxy`).

use clap::Parser;
use common::shutdown::CancellationToken;
use std::time::Duration;
use testkit::{broker_behind_corrupting_proxy, produce, unique, CORRUPT_MARKER};

#[derive(Parser)]
struct ServeCli {
    #[command(flatten)]
    args: serving_layer::config::ServeArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_realtime_batch_stops_the_serving_layer_with_the_reason() {
    let (broker, brokers) = broker_behind_corrupting_proxy().await;
    let topic = unique("unreadable");
    let rt = format!("{topic}.rt");
    let dlq = format!("{topic}.dlq");
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ServeCli::try_parse_from([
        "x",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--dead-letter-topic",
        &dlq,
        "--realtime-topic",
        &rt,
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--http-addr",
        "127.0.0.1:0",
        "--partitions",
        "2",
    ])
    .expect("flags")
    .args;
    let running = serving_layer::start(args, CancellationToken::new())
        .await
        .expect("starts");
    produce(
        &brokers,
        &rt,
        vec![("k".to_owned(), [b"x ", CORRUPT_MARKER].concat())],
    )
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the serving layer stops by itself instead of retrying forever");
    let text = outcome
        .expect_err("the serving layer reports a failure")
        .to_string();
    assert!(text.contains("cannot read records"), "{text}");
    assert!(text.contains(&rt), "{text}");
    broker.stop().await;
}
