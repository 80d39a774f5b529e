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

/// Transactions: a user's transactional producer commits and aborts
/// transactions between plain produces, into one running system on the
/// `lambda broker` process. Every layer reads committed records only, so
/// the words only aborted events carry are never counted, before or after
/// a recompute, and the transaction markers (one offset each, never
/// delivered, the last ones at every partition's end) stop no position:
/// the answers reach `as_of` == the topic's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_committed_transactions_are_counted_and_markers_stop_no_position() {
    type Records = Vec<(String, Vec<u8>, Option<i32>)>;
    let committed = |range: std::ops::Range<usize>| -> Records {
        range.map(|i| (format!("k{i}"), event(i), None)).collect()
    };
    let aborted = |range: std::ops::Range<usize>| -> Records {
        range
            .map(|i| {
                (
                    format!("k{i}"),
                    format!("abortedonly{i} w{} zzaborted", i % 200).into_bytes(),
                    None,
                )
            })
            .collect()
    };
    let options = Options {
        recompute_on_demand: true,
        ..Options::default()
    };
    let stack = Stack::start("txn", options).await;
    let txn = testkit::Transactional::new(&stack.kafka, &testkit::unique("e2e-txn")).await;
    txn.send(&stack.topic, &committed(0..300), true).await;
    txn.send(&stack.topic, &aborted(0..200), false).await;
    testkit::produce(
        &stack.kafka,
        &stack.topic,
        (300..400).map(|i| (format!("k{i}"), event(i))),
    )
    .await;
    txn.send(&stack.topic, &committed(400..500), true).await;
    // Every partition ends with an aborted transaction and its marker.
    txn.send(&stack.topic, &aborted(200..300), false).await;

    let truth = stack.assert_exact().await;
    assert_eq!(
        truth.good_events, 500,
        "the truth reads committed records only"
    );
    // The batch layer's master log reaches every partition's end too: a
    // marker record where its reader passed the last transaction marker.
    let (ends, _) = stack.topic_records().await;
    ingested(stack.addr(Role::Batch), ends.total_offsets() as usize).await;
    let serving = stack.addr(Role::Serve);
    let no_aborted_word = |when: &str| {
        for word in ["zzaborted", "abortedonly7", "abortedonly250"] {
            let a = answer(serving, &format!("/v1/words/{word}"));
            assert_eq!(a["count"].as_u64(), Some(0), "{when}: {word}: {a}");
        }
    };
    no_aborted_word("from the speed layer");
    recompute_now(serving).await;
    stack.assert_exact().await;
    no_aborted_word("after a recompute");
    let a = answer(serving, "/v1/words/w1");
    assert!(
        a["batch"]["count"].as_u64() > Some(0),
        "the batch view counts: {a}"
    );
    stack.shutdown();
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

/// One produced event: partition, timestamp, text.
type Timed = (i32, i64, String);

/// The count of `word` over the events with `from <= timestamp < to`, by
/// a recount of what was produced.
fn count_in(produced: &[Timed], word: &str, from: i64, to: i64) -> u64 {
    produced
        .iter()
        .filter(|(_, t, _)| (from..to).contains(t))
        .map(|(_, _, text)| text.split(' ').filter(|w| *w == word).count() as u64)
        .sum()
}

/// The served answers over event-time ranges against a recount of what
/// was produced; `late` is how many events of the first range arrived late.
fn check_windows(serving: SocketAddr, produced: &[Timed], base: i64, late: u64) {
    const MINUTE: i64 = 60_000;
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "omega",
    ];
    let (from, to) = (base, base + 10 * MINUTE);
    let query = format!("from={from}&to={to}");
    for word in words {
        let a = answer(serving, &format!("/v1/words/{word}?{query}"));
        assert_eq!(
            a["count"].as_u64(),
            Some(count_in(produced, word, from, to)),
            "{word} in the first ten minutes: {a}"
        );
        assert_eq!(a["range"]["from_ms"].as_i64(), Some(from), "{a}");
        assert_eq!(a["range"]["to_ms"].as_i64(), Some(to), "{a}");
        assert_eq!(
            a["range"]["complete"], true,
            "every partition's watermark passed the range: {a}"
        );
        assert_eq!(a["range"]["late_events"].as_u64(), Some(late), "{a}");
    }
    // Ranged top-K: the recount's ranking over the range.
    let mut want: Vec<(String, u64)> = words
        .iter()
        .map(|w| (w.to_string(), count_in(produced, w, from, to)))
        .filter(|(_, c)| *c > 0)
        .collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top = answer(serving, &format!("/v1/top?k=10&{query}"));
    assert_eq!(testkit::top_words(&top), want, "{top}");
    // The series: one point per window holding the word.
    let series = answer(serving, &format!("/v1/words/alpha/series?{query}"));
    let got: Vec<(i64, u64)> = series["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|p| {
            (
                p["start_ms"].as_i64().expect("start"),
                p["count"].as_u64().expect("count"),
            )
        })
        .collect();
    let want: Vec<(i64, u64)> = (0..10)
        .map(|m| base + m * MINUTE)
        .map(|s| (s, count_in(produced, "alpha", s, s + MINUTE)))
        .filter(|(_, c)| *c > 0)
        .collect();
    assert_eq!(got, want, "{series}");
    // The newest window is not complete: the watermark trails the newest
    // timestamp by the allowed lateness (1 min).
    let newest = answer(
        serving,
        &format!(
            "/v1/words/epsilon?from={}&to={}",
            base + 20 * MINUTE,
            base + 21 * MINUTE
        ),
    );
    assert_eq!(
        newest["count"].as_u64(),
        Some(count_in(
            produced,
            "epsilon",
            base + 20 * MINUTE,
            base + 21 * MINUTE
        )),
        "{newest}"
    );
    assert_eq!(newest["range"]["complete"], false, "{newest}");
    assert_eq!(newest["range"]["late_events"].as_u64(), Some(0), "{newest}");
    // The far-future event is counted in its own window, and did not move
    // any watermark past it.
    let (_, future, _) = produced
        .iter()
        .find(|(_, _, t)| t == "omega")
        .expect("omega");
    let f = answer(
        serving,
        &format!(
            "/v1/words/omega?from={}&to={}",
            future - MINUTE,
            future + MINUTE
        ),
    );
    assert_eq!(f["count"].as_u64(), Some(1), "{f}");
    assert_eq!(f["range"]["complete"], false, "{f}");
    // All-time answers are unchanged by windows.
    let all = answer(serving, "/v1/words/alpha");
    assert_eq!(
        all["count"].as_u64(),
        Some(count_in(produced, "alpha", 0, i64::MAX))
    );
    assert!(all.get("range").is_none(), "{all}");
    // Unreadable times are refused with a reason; a range without a whole
    // window counts nothing; `to` alone counts from the first window kept.
    for bad in ["from=yesterday", "from=", "to=2026-13-01T00:00:00Z"] {
        let r = get(serving, &format!("/v1/top?{bad}")).expect("answer");
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let all = answer(serving, "/v1/words/alpha/series");
    let total: u64 = all["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|p| p["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(
        total,
        count_in(produced, "alpha", 0, i64::MAX),
        "every window kept: {all}"
    );
    for empty in [
        format!("from={to}&to={from}"),
        format!("from={from}&to={}", from + 1),
    ] {
        let a = answer(serving, &format!("/v1/words/alpha?{empty}"));
        assert_eq!(a["count"].as_u64(), Some(0), "{empty}: {a}");
    }
    let before = answer(serving, &format!("/v1/words/alpha?to={to}"));
    assert_eq!(
        before["count"].as_u64(),
        Some(count_in(produced, "alpha", 0, to)),
        "{before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windowed_answers_count_late_events_and_say_when_a_range_is_complete() {
    const MINUTE: i64 = 60_000;
    let stack = stack_on_memory_broker("windows").await;
    let now = ::common::now_ms();
    // Two hours ago, on a window boundary: far inside the retention.
    let base = (now / MINUTE - 120) * MINUTE;
    let words = ["alpha", "beta", "gamma", "delta"];
    let mut waves: Vec<Vec<Timed>> = Vec::new();
    // Ten minutes of events on every partition, in timestamp order.
    let mut on_time = Vec::new();
    for m in 0..10i64 {
        for p in 0..3i32 {
            for i in 0..(1 + (m as usize + p as usize) % 3) {
                let text = format!(
                    "{} {}",
                    words[(m as usize + i) % 4],
                    words[(p as usize + i) % 4]
                );
                on_time.push((p, base + m * MINUTE + i as i64 * 1_000, text));
            }
        }
    }
    waves.push(on_time);
    // The watermark moves on: every partition sees minute 20.
    waves.push(
        (0..3)
            .map(|p| (p, base + 20 * MINUTE, "epsilon".to_owned()))
            .collect(),
    );
    // A late wave: minute 2 again, long after its window was complete.
    waves.push(
        (0..3)
            .flat_map(|p| [0, 1].map(|_| (p, base + 2 * MINUTE + 30_000, "alpha zeta".to_owned())))
            .collect(),
    );
    // A producer with a clock a day ahead.
    waves.push(vec![(1, now + 24 * 60 * MINUTE, "omega".to_owned())]);
    // More on-time events, so that the batch cut (aligned to the stack's
    // buckets of 16 offsets) passes the late wave on every partition.
    waves.push(
        (0..3)
            .flat_map(|p| {
                (0..12).map(move |i| (p, base + 20 * MINUTE + i * 1_000, "epsilon".to_owned()))
            })
            .collect(),
    );
    let late = 6;
    let mut produced = Vec::new();
    for wave in waves {
        let records = wave
            .iter()
            .map(|(p, t, text)| ::common::kafka::TimedRecord {
                partition: *p,
                timestamp_ms: *t,
                payload: text.clone().into_bytes(),
            });
        testkit::produce_timed(&stack.kafka, &stack.topic, records).await;
        produced.extend(wave);
    }
    stack.assert_exact().await;
    let (speed, batch, serving) = (
        stack.addr(Role::Speed),
        stack.addr(Role::Batch),
        stack.addr(Role::Serve),
    );
    let speed_metrics = get(speed, "/metrics").expect("metrics").text();
    assert_eq!(
        testkit::metric_sum(&speed_metrics, "lambda_speed_late_events_total"),
        late as f64
    );
    assert_eq!(
        testkit::metric_sum(&speed_metrics, "lambda_speed_future_timestamps_total"),
        1.0
    );
    let p = produced.clone();
    tokio::task::spawn_blocking(move || check_windows(serving, &p, base, late))
        .await
        .expect("from the realtime counts");

    // The batch layer counts the same windows and late events on its own:
    // after a recompute the answers come from the view, unchanged, and the
    // swap reconciles windowed counts too.
    ingested(batch, produced.len()).await;
    let r = recompute_now(serving).await;
    assert!(r["version"].as_u64().is_some(), "{r}");
    let version = r["version"].clone();
    until(
        "the serving layer to hold the new view",
        TIMEOUT,
        move || {
            let s = json(serving, "/v1/status")?;
            (s["batch"]["version"] == version).then_some(())
        },
    )
    .await;
    let batch_metrics = get(batch, "/metrics").expect("metrics").text();
    let manifest = answer(batch, "/views/latest");
    assert_eq!(
        manifest["header"]["windows"]["late_events"].as_u64(),
        Some(late),
        "the view's cut is past the late wave: {manifest}"
    );
    assert_eq!(
        testkit::metric_sum(&batch_metrics, "lambda_batch_view_late_events"),
        late as f64
    );
    assert_eq!(
        testkit::metric_sum(&batch_metrics, "lambda_batch_future_timestamps_total"),
        1.0
    );
    let p = produced.clone();
    tokio::task::spawn_blocking(move || check_windows(serving, &p, base, late))
        .await
        .expect("from the batch view");
    stack.assert_exact().await;
    stack.shutdown();
}
