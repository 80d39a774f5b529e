//! The three layers as `lambda` processes on the embedded broker (the
//! reliability suite's harness, `common::stack`, on a broker this test
//! starts): answers equal a recount before and after a forced recompute, no
//! sampled count ever goes down during the swap, every sample is exact at
//! its own `as_of`, every view swap reconciles, and with the batch layer
//! stopped the answers keep coming, marked stale. Then every compression
//! codec, and a broker behind mutual TLS and SASL.

use ::common::broker::{BrokerStorage, EmbeddedBroker};
use ::common::client::{ClientArgs, Compression, Connection};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::spec::{parse, StackSpec};
use common::stack::{cut_of, event, json, recompute, until, Options, Role, Sampler, Stack, Truth};
use common::{free_addr, spawn_role};
use testkit::{get, secured_broker, wait_metric};

const TIMEOUT: Duration = Duration::from_secs(60);

fn events(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(event).collect()
}

/// The stack on an in-memory embedded broker, recomputing only when asked.
async fn stack_on_memory_broker(name: &str) -> Stack {
    let broker = EmbeddedBroker::start(BrokerStorage::Memory)
        .await
        .expect("broker starts");
    let kafka = Connection::plaintext(&broker.bootstrap());
    Stack::start(name, Options::on(broker, kafka)).await
}

/// A 200 answer's JSON (panics otherwise).
fn answer(addr: SocketAddr, path: &str) -> Value {
    json(addr, path).unwrap_or_else(|| panic!("GET {path}: no 200 answer"))
}

/// [`recompute`] off the runtime (it waits for the batch layer), in the
/// batch layer's mode.
async fn recompute_now(serving: SocketAddr) -> Value {
    tokio::task::spawn_blocking(move || recompute(serving, None))
        .await
        .expect("recompute")
}

/// Waits until the batch layer has appended `n` events to its master log.
async fn ingested(batch: SocketAddr, n: usize) {
    tokio::task::spawn_blocking(move || {
        wait_metric(batch, "lambda_batch_log_end_offset", n as f64, TIMEOUT)
    })
    .await
    .expect("ingested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_equal_a_recount_across_a_recompute_and_never_decrease() {
    let stack = stack_on_memory_broker("e2e").await;
    let (first, total) = (3000, 5000);
    stack.produce(events(0..first)).await;
    stack.assert_exact().await;

    // Sample continuously while views swap and events keep coming.
    let sampler = Sampler::start(&stack, total);
    let (batch, serving) = (stack.addr(Role::Batch), stack.addr(Role::Serve));
    // The batch layer fetches in bulk (up to 250 ms); a recompute before it
    // has appended anything would rightly keep the version.
    ingested(batch, first).await;
    let before = answer(serving, "/v1/status")["batch"]["version"].as_u64();
    let r = recompute_now(serving).await;
    assert!(r["version"].as_u64() > before, "{r} after {before:?}");
    stack.produce(events(first..total)).await;
    // With the realtime counts covering every event, the next swap is
    // reconciled (not skipped): new − old must equal them between the cuts.
    until(
        "the realtime counts to cover every event",
        TIMEOUT,
        move || {
            let s = json(serving, "/v1/status")?;
            (cut_of(&s["realtime"]["as_of"]).total_offsets() == total as u64).then_some(())
        },
    )
    .await;
    ingested(batch, total).await;
    let checked_before = answer(serving, "/v1/status")["reconciliation"]["checked_swaps"].as_u64();
    recompute_now(serving).await;
    let reconciliation = answer(serving, "/v1/status")["reconciliation"].clone();
    assert!(
        reconciliation["checked_swaps"].as_u64() > checked_before,
        "the swap was reconciled: {reconciliation}"
    );
    assert_eq!(reconciliation["mismatches"], 0, "{reconciliation}");
    assert!(
        reconciliation["last"]["words"].as_u64() > Some(0),
        "words were compared: {reconciliation}"
    );
    // The first view was computed in full (nothing to build on), the second
    // as the first plus the events since its cut.
    let batch_status = answer(serving, "/v1/status")["batch"].clone();
    assert_eq!(
        batch_status["recompute"]["mode"], "incremental",
        "{batch_status}"
    );
    let base = batch_status["version"].as_u64().expect("version") - 1;
    assert_eq!(
        batch_status["recompute"]["base_version"], base,
        "{batch_status}"
    );
    // A full recompute asked for through the serving layer is compared with
    // the incremental chain at its cut: they agree.
    tokio::task::spawn_blocking(move || recompute(serving, Some("full")))
        .await
        .expect("full recompute");
    let batch_status = answer(serving, "/v1/status")["batch"].clone();
    let recomputed = &batch_status["recompute"];
    assert_eq!(recomputed["mode"], "full", "{batch_status}");
    assert_eq!(recomputed["check"]["agreed"], true, "{batch_status}");
    assert_eq!(recomputed["check"]["differing_words"], 0, "{batch_status}");
    assert_eq!(
        recomputed["check"]["chain_version"],
        base + 1,
        "{batch_status}"
    );
    let checks = ::testkit::metric_sum(
        &get(batch, "/metrics").expect("/metrics").text(),
        "lambda_batch_full_checks_total",
    );
    assert_eq!(checks, 1.0);

    let truth = stack.assert_exact().await;
    // Every sample is exact at the position it reported; none decreased.
    let samples = sampler.finish(&truth).await;
    assert!(samples.len() > 20, "only {} samples", samples.len());
    let status = answer(serving, "/v1/status");
    assert_eq!(status["batch"]["stale"], false, "{status}");
    stack.shutdown();
}

/// The sum of a metric family's `_count` samples labelled `label`.
fn histogram_count(addr: SocketAddr, family: &str, label: &str) -> u64 {
    let text = get(addr, "/metrics").expect("/metrics").text();
    let head = format!("{family}_count");
    text.lines()
        .filter(|l| l.starts_with(&head) && l.contains(label))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a count")
        })
        .sum()
}

/// Each stage of an event's way to answers is measured where it happens,
/// and the serving layer reports how long events took to become visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stage_of_an_events_way_to_answers_is_measured() {
    let stack = stack_on_memory_broker("stages").await;
    stack.produce(events(0..400)).await;
    stack.assert_exact().await;
    let (serving, speed) = (stack.addr(Role::Serve), stack.addr(Role::Speed));
    tokio::task::spawn_blocking(move || {
        for stage in ["consume", "checkpoint", "publish"] {
            let n = histogram_count(speed, "lambda_stage_seconds", &format!("stage=\"{stage}\""));
            assert!(n >= 1, "speed stage {stage}: {n} observations");
        }
        let applied = histogram_count(serving, "lambda_stage_seconds", "stage=\"apply\"");
        assert!(applied >= 1, "serving stage apply: {applied}");
        let visible = histogram_count(serving, "lambda_serving_visible_seconds", "");
        let v = answer(serving, "/v1/status")["visibility"].clone();
        let samples = v["samples"].as_u64().expect("samples");
        assert!(
            samples >= 1 && samples <= visible,
            "{v} with {visible} observed"
        );
        let (p50, p99, max) = (
            v["p50_ms"].as_f64().expect("p50"),
            v["p99_ms"].as_f64().expect("p99"),
            v["max_ms"].as_f64().expect("max"),
        );
        assert!(p50 <= p99 && p99 <= max, "{v}");
        // Bounded by the test itself: every event was produced after it began.
        assert!(max < 120_000.0, "{v}");
    })
    .await
    .expect("measured");
    stack.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_batch_layer_down_answers_continue_marked_stale() {
    let mut stack = stack_on_memory_broker("degraded").await;
    stack.produce(events(0..500)).await;
    let (batch, serving) = (stack.addr(Role::Batch), stack.addr(Role::Serve));
    ingested(batch, 500).await;
    recompute_now(serving).await;

    stack.stop(Role::Batch);
    stack.produce(events(500..1000)).await;
    // Realtime counts keep the answers exact and current.
    stack.assert_exact().await;
    tokio::task::spawn_blocking(move || {
        let a = testkit::wait_for(
            "answers marked stale for the batch layer",
            Duration::from_secs(30),
            || {
                let a = json(serving, "/v1/words/w1")?;
                (a["stale"] == serde_json::json!(["batch"])).then_some(a)
            },
        );
        assert_eq!(a["batch"]["stale"], true, "{a}");
        assert_eq!(a["realtime"]["stale"], false, "{a}");
        let status = answer(serving, "/v1/status");
        assert!(
            status["batch"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot reach")),
            "{status}"
        );
    })
    .await
    .expect("degraded answers");
    stack.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_serving_layer_answers_exactly_from_its_own_stores() {
    let mut stack = stack_on_memory_broker("restart").await;
    stack.produce(events(0..800)).await;
    let serving = stack.addr(Role::Serve);
    ingested(stack.addr(Role::Batch), 800).await;
    let r = recompute_now(serving).await;

    // Stop the serving layer, and the batch layer too: the restarted one must
    // answer from its local view copy and realtime store, then catch up on
    // what was produced while it was down.
    stack.stop(Role::Serve);
    stack.stop(Role::Batch);
    stack.produce(events(800..1600)).await;
    stack.start_role(Role::Serve).await;
    // Ready from local state at once, with the view it had.
    let status = answer(serving, "/v1/status");
    assert_eq!(status["batch"]["version"], r["version"], "{status}");
    stack.assert_exact().await;
    stack.shutdown();
}

/// Produces `records` with librdkafka's `compression.type` set to `codec`,
/// lingering so that records share compressed batches.
async fn produce_with(kafka: &Connection, topic: &str, codec: Compression, records: &[Vec<u8>]) {
    let kafka = kafka.clone().with_compression(codec);
    let producer: rdkafka::producer::FutureProducer = ::common::kafka::producer_config(&kafka)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let records: Vec<(Option<String>, Vec<u8>)> =
        records.iter().map(|r| (None, r.clone())).collect();
    for (i, result) in ::common::kafka::send_all(&producer, topic, &records)
        .await
        .into_iter()
        .enumerate()
    {
        result.unwrap_or_else(|e| panic!("{codec:?}: record {i} not delivered: {e}"));
    }
}

/// Events produced with each codec Kafka defines, one codec after another
/// into one running system, are counted exactly, and so are the events that
/// follow each codec's (a codec that stalled a partition would leave the
/// next codec's events uncounted). The layers themselves publish realtime
/// counts with `layer_codec`, which the serving layer must read back.
async fn every_codec_is_counted_exactly(
    name: &str,
    mut options: Options,
    layer_codec: Compression,
) {
    let codec_flag = format!("{layer_codec:?}").to_lowercase();
    options.layer_flags = vec!["--compression".into(), codec_flag];
    options.recompute_on_demand = true;
    let stack = Stack::start(name, options).await;
    let mut produced = 0;
    for codec in Compression::ALL {
        let batch = events(produced..produced + 400);
        produce_with(&stack.kafka, &stack.topic, codec, &batch).await;
        produced += batch.len();
        eprintln!("after the {codec:?} events:");
        stack.assert_exact().await;
    }
    // A recompute moves the counts into a batch view: the batch layer read
    // every codec too.
    let serving = stack.addr(Role::Serve);
    ingested(stack.addr(Role::Batch), produced).await;
    recompute_now(serving).await;
    stack.assert_exact().await;
    let a = answer(serving, "/v1/words/w1");
    assert!(a["batch"]["count"].as_u64() > Some(0), "{a}");
    stack.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_codec_is_counted_exactly_on_memory_broker_storage() {
    let broker = EmbeddedBroker::start(BrokerStorage::Memory)
        .await
        .expect("broker starts");
    let kafka = Connection::plaintext(&broker.bootstrap());
    let options = Options::on(broker, kafka);
    every_codec_is_counted_exactly("codecs-memory", options, Compression::Zstd).await;
}

/// On the `lambda broker` process (SQLite storage).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_codec_is_counted_exactly_on_sqlite_broker_storage() {
    // Snappy for the layers' own output: the SQLite storage re-batches on
    // fetch, which is where snappy used to fail the whole fetch.
    every_codec_is_counted_exactly("codecs-sqlite", Options::default(), Compression::Snappy).await;
}

/// The three layers reach a broker behind mutual TLS that also requires
/// SASL/SCRAM, through their `--security-protocol`, `--ssl-*` and
/// `--sasl-*` flags (every client each of them creates: consumers,
/// producers, admin and metadata clients), and answer exactly, before and
/// after a recompute. A layer whose clients ignored a flag could not even
/// create its topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_layer_reaches_a_broker_over_mutual_tls_and_sasl_scram_through_its_flags() {
    const PASSWORD: &str = "e2e-scram-password";
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, brokers, certs) = secured_broker(dir.path(), "lambda", PASSWORD, true).await;
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let layer_flags: Vec<String> = [
        "--security-protocol",
        "sasl_ssl",
        "--ssl-ca-location",
        &path(&certs.ca),
        "--ssl-certificate-location",
        &path(&certs.client_cert),
        "--ssl-key-location",
        &path(&certs.client_key),
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "lambda",
        "--sasl-password",
        PASSWORD,
    ]
    .map(str::to_owned)
    .to_vec();
    let client: ClientArgs = parse(layer_flags.clone());
    client.validate().expect("valid flags");
    let kafka = client.connection(&brokers);
    let options = Options {
        layer_flags,
        keep: vec![dir],
        ..Options::on(broker, kafka)
    };
    let stack = Stack::start("secured", options).await;
    stack.produce(events(0..1000)).await;
    stack.assert_exact().await;
    let serving = stack.addr(Role::Serve);
    ingested(stack.addr(Role::Batch), 1000).await;
    recompute_now(serving).await;
    stack.assert_exact().await;
    stack.shutdown();
}

/// The Kappa architecture: no batch layer; the speed layer counts every
/// event from offset 0 and the serving layer answers from it alone, with
/// the same API, exactly (every word, the top 100, every sample at its own
/// `as_of`, none decreasing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kappa_architecture_answers_exactly_from_the_speed_layer_alone() {
    let broker = EmbeddedBroker::start(BrokerStorage::Memory)
        .await
        .expect("broker starts");
    let kafka = Connection::plaintext(&broker.bootstrap());
    let options = Options {
        kappa: true,
        ..Options::on(broker, kafka)
    };
    let stack = Stack::start("kappa", options).await;
    assert_eq!(stack.roles(), [Role::Speed, Role::Serve]);
    let sampler = Sampler::start(&stack, 2000);
    stack.produce(events(0..1000)).await;
    stack.assert_exact().await;
    stack.produce(events(1000..2000)).await;
    let truth = stack.assert_exact().await;
    sampler.finish(&truth).await;
    let serving = stack.addr(Role::Serve);
    let status = answer(serving, "/v1/status");
    assert_eq!(status["batch"]["version"], Value::Null, "{status}");
    assert_eq!(
        status["batch"]["lag"], 0,
        "no batch layer to wait for: {status}"
    );
    assert_eq!(status["stale"], serde_json::json!([]), "{status}");
    stack.shutdown();
}

/// `lambda replay` reads the events topic from its start into its own store
/// and realtime topic, catches up past the batch view's cut, and reports
/// that its counts below that cut agree with the view, word for word; a
/// serving layer switched over to the replay's topic answers exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kappa_replay_agrees_with_the_batch_view() {
    let stack = stack_on_memory_broker("replay").await;
    stack.produce(events(0..3000)).await;
    let (batch, serving) = (stack.addr(Role::Batch), stack.addr(Role::Serve));
    ingested(batch, 3000).await;
    let view = recompute_now(serving).await;
    // Events past the view's cut too: the replay reads them, the
    // comparison stops at the cut.
    stack.produce(events(3000..3500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = stack.topic.clone();
    let args: Vec<String> = [
        "replay",
        "--brokers",
        stack.kafka.brokers(),
        "--topic",
        &topic,
        "--dead-letter-topic",
        &format!("{topic}.dlq"),
        "--realtime-topic",
        &format!("{topic}.replay"),
        "--partitions",
        "3",
        "--bucket-size",
        "16",
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--http-addr",
        "127.0.0.1:0",
        "--compare-with",
        &format!("http://{batch}"),
        "--exit-after-check",
    ]
    .map(str::to_owned)
    .to_vec();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lambda"))
            .args(&args)
            .output()
            .expect("lambda replay runs")
    })
    .await
    .expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let version = view["version"].as_u64().expect("version");
    assert!(
        stdout.contains(&format!("replay: agrees with batch view v{version}")),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("records/s"), "progress is shown: {stderr}");

    // Switch a serving layer over: Kappa, reading the replay's topic.
    let serve_dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let mut flags = StackSpec::new(stack.kafka.brokers(), &topic).flags(
        Role::Serve,
        serve_dir.path(),
        &addr.to_string(),
        None,
    );
    let i = flags
        .iter()
        .position(|f| f == "--realtime-topic")
        .expect("the flag is set")
        + 1;
    flags[i] = format!("{topic}.replay");
    flags.extend(["--architecture".to_owned(), "kappa".to_owned()]);
    let _serve = spawn_role("serve", &flags, &serve_dir.path().join("serve.log"));
    let (ends, records) = stack.topic_records().await;
    let truth = Truth::of(&records);
    until(
        "the switched serving layer to cover the topic",
        TIMEOUT,
        move || {
            let s = json(addr, "/v1/status")?;
            (cut_of(&s["as_of"]) == ends).then_some(())
        },
    )
    .await;
    let words: Vec<(String, u64)> = truth.counts.clone().into_iter().collect();
    tokio::task::spawn_blocking(move || {
        for (word, count) in words {
            let a = answer(addr, &format!("/v1/words/{word}"));
            assert_eq!(a["count"], count, "{word}: {a}");
        }
    })
    .await
    .expect("exact from the replay");
    stack.shutdown();
}
