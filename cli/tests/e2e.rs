//! The three layers on the embedded broker, in-process: answers equal a
//! recount before and after a forced recompute, no sampled count ever goes
//! down during the swap, every sample is exact at its own `as_of`, and with
//! the batch layer stopped the answers keep coming, marked stale.

use ::common::broker::{BrokerStorage, EmbeddedBroker};
use ::common::client::{ClientArgs, Compression, Connection};
use ::common::shutdown::CancellationToken;
use lambda_core::{Cut, Tokenizer};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::spec::{parse, Role, StackSpec};
use testkit::secured_broker;
use testkit::{consume_n, get, http, memory_broker, produce, wait_for, wait_metric};

const TOKEN: &str = "e2e-token";
const WORDS: &[&str] = &[
    "lambda", "kappa", "batch", "speed", "serving", "view", "kafka", "event", "count", "merge",
    "exact", "offset", "bucket", "cut", "swap", "crash", "replay", "sled", "rayon", "axum",
];

struct Stack {
    broker: EmbeddedBroker,
    /// How the test's own clients reach the broker (as the layers do).
    kafka: Connection,
    topic: String,
    batch: SocketAddr,
    speed: SocketAddr,
    serving: SocketAddr,
    batch_token: CancellationToken,
    token: CancellationToken,
    /// The serving layer alone, to restart it.
    serving_token: CancellationToken,
    serving_running: serving_layer::RunningServing,
    serve_args: serving_layer::config::ServeArgs,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_stack(name: &str) -> Stack {
    let (broker, brokers, topic) = memory_broker(name).await;
    start_stack_on(
        broker,
        Connection::plaintext(&brokers),
        topic,
        &[],
        Vec::new(),
    )
    .await
}

/// The three layers on `broker`, each also given `layer_flags`.
async fn start_stack_on(
    broker: EmbeddedBroker,
    kafka: Connection,
    topic: String,
    layer_flags: &[&str],
    mut dirs: Vec<tempfile::TempDir>,
) -> Stack {
    let first_dir = dirs.len();
    dirs.extend((0..3).map(|_| tempfile::tempdir().expect("tempdir")));
    let dirs = dirs;
    let spec = StackSpec {
        admin_token: TOKEN.to_owned(),
        stale_after: Some("2s".to_owned()),
        extra: layer_flags.iter().map(|f| f.to_string()).collect(),
        ..StackSpec::new(kafka.brokers(), &topic)
    };
    let flags = |role: Role, batch_url: Option<&str>| {
        let dir = dirs[first_dir + role as usize].path();
        spec.flags(role, dir, "127.0.0.1:0", batch_url)
    };
    let batch_token = CancellationToken::new();
    let token = CancellationToken::new();
    let batch = batch_layer::start(parse(flags(Role::Batch, None)), batch_token.clone())
        .await
        .expect("batch starts");
    let batch_url = format!("http://{}", batch.http_addr);
    let speed = speed_layer::start(parse(flags(Role::Speed, Some(&batch_url))), token.clone())
        .await
        .expect("speed starts");
    let serve_args: serving_layer::config::ServeArgs = parse(flags(Role::Serve, Some(&batch_url)));
    let serving_token = token.child_token();
    let running = serving_layer::start(serve_args.clone(), serving_token.clone())
        .await
        .expect("serving starts");
    let serving = running.http_addr;
    Stack {
        broker,
        kafka,
        topic,
        batch: batch.http_addr,
        speed: speed.http_addr,
        serving,
        batch_token,
        token,
        serving_token,
        serving_running: running,
        serve_args,
        _dirs: dirs,
    }
}

/// Events of 1–6 words with a skewed vocabulary, so the ranking is not flat.
fn events(seed: u64, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let words = 1 + next() % 6;
            let text: Vec<&str> = (0..words)
                .map(|_| {
                    let r = next() % 1000;
                    WORDS[((r * r) / 50_000) as usize % WORDS.len()]
                })
                .collect();
            (
                format!("{seed}-{i}"),
                text.join(" ").to_uppercase().into_bytes(),
            )
        })
        .collect()
}

fn json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    serde_json::from_slice(&r.body).expect("JSON")
}

fn cut_of(v: &Value) -> Cut {
    serde_json::from_value(v.clone()).expect("a cut")
}

/// Every event read back with its position: the ground truth.
struct Truth(BTreeMap<(i32, i64), String>);

impl Truth {
    async fn read(kafka: &Connection, topic: &str, n: usize) -> Self {
        let records = consume_n(kafka, topic, n, Duration::from_secs(60)).await;
        Self(
            records
                .into_iter()
                .map(|r| {
                    (
                        (r.partition, r.offset),
                        String::from_utf8(r.payload).expect("utf-8"),
                    )
                })
                .collect(),
        )
    }

    fn ends(&self) -> Cut {
        let mut ends = Cut::new();
        for &(p, o) in self.0.keys() {
            ends.set(p, ends.get(p).max(o + 1));
        }
        ends
    }

    /// Counts of the events below `as_of`.
    fn counts_at(&self, as_of: &Cut) -> HashMap<String, u64> {
        let mut t = Tokenizer::new();
        let mut counts = HashMap::new();
        for ((p, o), text) in &self.0 {
            if as_of.includes(*p, *o) {
                t.for_each_word(text, |w| *counts.entry(w.to_owned()).or_insert(0) += 1);
            }
        }
        counts
    }
}

/// Waits until answers cover every event, then checks every word and the
/// top 10 against the recount.
fn assert_exact(serving: SocketAddr, truth: &Truth) {
    let ends = truth.ends();
    wait_for(
        "answers to cover every event",
        Duration::from_secs(60),
        || {
            let s = json(serving, "/v1/status");
            (cut_of(&s["as_of"]) == ends).then_some(())
        },
    );
    let counts = truth.counts_at(&ends);
    for w in WORDS {
        let a = json(serving, &format!("/v1/words/{w}"));
        assert_eq!(
            a["count"].as_u64(),
            Some(counts.get(*w).copied().unwrap_or(0)),
            "{w}: {a}"
        );
        assert_eq!(
            a["batch"]["count"].as_u64().unwrap_or(0)
                + a["realtime"]["count"].as_u64().unwrap_or(0),
            a["count"].as_u64().unwrap_or(0),
        );
    }
    let mut expected: Vec<(String, u64)> = counts.into_iter().collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    expected.truncate(10);
    let top = json(serving, "/v1/top?k=10");
    let got = testkit::top_words(&top);
    assert_eq!(got, expected);
    // Every view swap so far, checked against the realtime counts.
    let status = json(serving, "/v1/status");
    let reconciliation = &status["reconciliation"];
    assert_eq!(reconciliation["mismatches"], 0, "{reconciliation}");
}

/// Forces a recompute through the serving layer's admin endpoint and checks
/// the serving layer answers from the new view when it returns.
async fn recompute(serving: SocketAddr) -> Value {
    let r: Value = tokio::task::spawn_blocking(move || {
        let r = http(
            serving,
            "POST",
            "/v1/admin/recompute",
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
        .expect("POST");
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("JSON")
    })
    .await
    .expect("recompute");
    assert_eq!(r["loaded"], true, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_equal_a_recount_across_a_recompute_and_never_decrease() {
    let stack = start_stack("e2e").await;
    let first = events(1, 3000);
    produce(&stack.kafka, &stack.topic, first.clone()).await;
    let truth = Truth::read(&stack.kafka, &stack.topic, first.len()).await;
    let serving = stack.serving;
    tokio::task::spawn_blocking(move || assert_exact(serving, &truth))
        .await
        .expect("exact");

    // Sample continuously while views swap and events keep coming.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut samples: Vec<(String, u64, Cut)> = Vec::new();
            let mut last: HashMap<String, u64> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                for w in ["lambda", "kappa", "batch", "axum"] {
                    let a = json(serving, &format!("/v1/words/{w}"));
                    let c = a["count"].as_u64().expect("count");
                    let before = last.insert(w.to_owned(), c).unwrap_or(0);
                    assert!(c >= before, "{w} went down from {before} to {c}: {a}");
                    samples.push((w.to_owned(), c, cut_of(&a["as_of"])));
                }
            }
            samples
        })
    };

    // The batch layer fetches in bulk (up to 250 ms); a recompute before it
    // has appended anything would rightly keep the version.
    let (batch, total) = (stack.batch, first.len());
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(30);
        wait_metric(batch, "lambda_batch_log_end_offset", total as f64, timeout)
    })
    .await
    .expect("ingested");
    let before = json(serving, "/v1/status")["batch"]["version"].as_u64();
    let r = recompute(serving).await;
    assert!(r["version"].as_u64() > before, "{r} after {before:?}");
    let second = events(2, 2000);
    produce(&stack.kafka, &stack.topic, second.clone()).await;
    // With the realtime counts covering every event, the next swap is
    // reconciled (not skipped): new − old must equal them between the cuts.
    let total = first.len() + second.len();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "the realtime counts to cover every event",
            Duration::from_secs(60),
            || {
                let s = json(serving, "/v1/status");
                let covered = cut_of(&s["realtime"]["as_of"]).total_offsets();
                (covered == total as u64).then_some(())
            },
        );
        let timeout = Duration::from_secs(30);
        wait_metric(batch, "lambda_batch_log_end_offset", total as f64, timeout);
    })
    .await
    .expect("covered");
    let checked_before = json(serving, "/v1/status")["reconciliation"]["checked_swaps"].as_u64();
    recompute(serving).await;
    let reconciliation = json(serving, "/v1/status")["reconciliation"].clone();
    assert!(
        reconciliation["checked_swaps"].as_u64() > checked_before,
        "the swap was reconciled: {reconciliation}"
    );
    assert_eq!(reconciliation["mismatches"], 0, "{reconciliation}");
    assert!(
        reconciliation["last"]["words"].as_u64() > Some(0),
        "words were compared: {reconciliation}"
    );

    let truth = Truth::read(&stack.kafka, &stack.topic, first.len() + second.len()).await;
    let truth = tokio::task::spawn_blocking(move || {
        assert_exact(serving, &truth);
        truth
    })
    .await
    .expect("exact after the swaps");
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("no count went down");
    assert!(samples.len() > 20, "only {} samples", samples.len());
    // Every sample is exact at the position it reported.
    let mut checked = 0;
    let mut memo: HashMap<Cut, HashMap<String, u64>> = HashMap::new();
    for (word, count, as_of) in samples.iter().step_by(samples.len() / 200 + 1) {
        let counts = memo
            .entry(as_of.clone())
            .or_insert_with(|| truth.counts_at(as_of));
        assert_eq!(
            counts.get(word).copied().unwrap_or(0),
            *count,
            "{word} at {as_of}"
        );
        checked += 1;
    }
    assert!(checked > 10);
    let status = json(serving, "/v1/status");
    assert_eq!(status["batch"]["stale"], false, "{status}");
    stack.token.cancel();
    stack.batch_token.cancel();
    stack.broker.stop().await;
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
    let stack = start_stack("stages").await;
    let evs = events(7, 400);
    produce(&stack.kafka, &stack.topic, evs.clone()).await;
    let truth = Truth::read(&stack.kafka, &stack.topic, evs.len()).await;
    let (serving, speed) = (stack.serving, stack.speed);
    tokio::task::spawn_blocking(move || {
        assert_exact(serving, &truth);
        for stage in ["consume", "checkpoint", "publish"] {
            let n = histogram_count(speed, "lambda_stage_seconds", &format!("stage=\"{stage}\""));
            assert!(n >= 1, "speed stage {stage}: {n} observations");
        }
        let applied = histogram_count(serving, "lambda_stage_seconds", "stage=\"apply\"");
        assert!(applied >= 1, "serving stage apply: {applied}");
        let visible = histogram_count(serving, "lambda_serving_visible_seconds", "");
        let v = json(serving, "/v1/status")["visibility"].clone();
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
    stack.token.cancel();
    stack.batch_token.cancel();
    stack.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_batch_layer_down_answers_continue_marked_stale() {
    let stack = start_stack("degraded").await;
    let first = events(3, 500);
    produce(&stack.kafka, &stack.topic, first.clone()).await;
    let serving = stack.serving;
    recompute(serving).await;

    stack.batch_token.cancel();
    let batch = stack.batch;
    wait_for(
        "the batch layer to stop answering",
        Duration::from_secs(30),
        || get(batch, "/healthz").is_err().then_some(()),
    );
    let second = events(4, 500);
    produce(&stack.kafka, &stack.topic, second.clone()).await;
    let truth = Truth::read(&stack.kafka, &stack.topic, first.len() + second.len()).await;
    tokio::task::spawn_blocking(move || {
        // Realtime counts keep the answers exact and current.
        assert_exact(serving, &truth);
        let a = wait_for(
            "answers marked stale for the batch layer",
            Duration::from_secs(30),
            || {
                let a = json(serving, "/v1/words/lambda");
                (a["stale"] == serde_json::json!(["batch"])).then_some(a)
            },
        );
        assert_eq!(a["batch"]["stale"], true, "{a}");
        assert_eq!(a["realtime"]["stale"], false, "{a}");
        let status = json(serving, "/v1/status");
        assert!(
            status["batch"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot reach")),
            "{status}"
        );
    })
    .await
    .expect("degraded answers");
    stack.token.cancel();
    stack.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_serving_layer_answers_exactly_from_its_own_stores() {
    let stack = start_stack("restart").await;
    let first = events(5, 800);
    produce(&stack.kafka, &stack.topic, first.clone()).await;
    let serving = stack.serving;
    let r = recompute(serving).await;

    // Stop the serving layer, and the batch layer too: the restarted one must
    // answer from its local view copy and realtime store, then catch up on
    // what was produced while it was down.
    stack.serving_token.cancel();
    stack
        .serving_running
        .wait()
        .await
        .expect("the serving layer stops cleanly");
    stack.batch_token.cancel();
    let second = events(6, 800);
    produce(&stack.kafka, &stack.topic, second.clone()).await;
    let token = stack.token.child_token();
    let mut args = stack.serve_args.clone();
    args.http_addr = "127.0.0.1:0".parse().expect("addr");
    let running = serving_layer::start(args, token)
        .await
        .expect("serving restarts");
    let serving = running.http_addr;
    let version = r["version"].clone();
    let truth = Truth::read(&stack.kafka, &stack.topic, first.len() + second.len()).await;
    tokio::task::spawn_blocking(move || {
        // Ready from local state at once, with the view it had.
        let status = json(serving, "/v1/status");
        assert_eq!(status["batch"]["version"], version, "{status}");
        assert_exact(serving, &truth);
    })
    .await
    .expect("exact after the restart");
    stack.token.cancel();
    stack.broker.stop().await;
}

/// Produces `records` with librdkafka's `compression.type` set to `codec`,
/// lingering so that records share compressed batches.
async fn produce_with(
    kafka: &Connection,
    topic: &str,
    codec: Compression,
    records: &[(String, Vec<u8>)],
) {
    let kafka = kafka.clone().with_compression(codec);
    let producer: rdkafka::producer::FutureProducer = ::common::kafka::producer_config(&kafka)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    for (i, result) in ::common::kafka::send_all(&producer, topic, records)
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
    broker: EmbeddedBroker,
    layer_codec: Compression,
    dirs: Vec<tempfile::TempDir>,
) {
    let brokers = broker.bootstrap();
    let topic = testkit::unique("codecs");
    let codec_flag = format!("{layer_codec:?}").to_lowercase();
    let stack = start_stack_on(
        broker,
        Connection::plaintext(&brokers),
        topic,
        &["--compression", &codec_flag],
        dirs,
    )
    .await;
    let mut produced = 0;
    for (seed, codec) in Compression::ALL.into_iter().enumerate() {
        let batch = events(100 + seed as u64, 400);
        produce_with(&stack.kafka, &stack.topic, codec, &batch).await;
        produced += batch.len();
        let truth = Truth::read(&stack.kafka, &stack.topic, produced).await;
        let serving = stack.serving;
        tokio::task::spawn_blocking(move || assert_exact(serving, &truth))
            .await
            .unwrap_or_else(|_| panic!("exact after the {codec:?} events"));
    }
    // A recompute moves the counts into a batch view: the batch layer read
    // every codec too.
    recompute(stack.serving).await;
    let truth = Truth::read(&stack.kafka, &stack.topic, produced).await;
    let serving = stack.serving;
    tokio::task::spawn_blocking(move || {
        assert_exact(serving, &truth);
        let a = json(serving, "/v1/words/lambda");
        assert!(a["batch"]["count"].as_u64() > Some(0), "{a}");
    })
    .await
    .expect("exact after a recompute");
    stack.token.cancel();
    stack.batch_token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_codec_is_counted_exactly_on_memory_broker_storage() {
    let broker = EmbeddedBroker::start(BrokerStorage::Memory)
        .await
        .expect("broker starts");
    every_codec_is_counted_exactly(broker, Compression::Zstd, Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_codec_is_counted_exactly_on_sqlite_broker_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::start(BrokerStorage::Sqlite(dir.path().join("broker.db")))
        .await
        .expect("broker starts");
    // Snappy for the layers' own output: the SQLite storage re-batches on
    // fetch, which is where snappy used to fail the whole fetch.
    every_codec_is_counted_exactly(broker, Compression::Snappy, vec![dir]).await;
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
    let (ca, cert, key) = (
        path(&certs.ca),
        path(&certs.client_cert),
        path(&certs.client_key),
    );
    let layer_flags = [
        "--security-protocol",
        "sasl_ssl",
        "--ssl-ca-location",
        &ca,
        "--ssl-certificate-location",
        &cert,
        "--ssl-key-location",
        &key,
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "lambda",
        "--sasl-password",
        PASSWORD,
    ];
    let client: ClientArgs = parse(layer_flags.iter().map(|f| f.to_string()));
    client.validate().expect("valid flags");
    let kafka = client.connection(&brokers);
    let topic = testkit::unique("secured");
    let stack = start_stack_on(broker, kafka, topic, &layer_flags, vec![dir]).await;
    let batch = events(7, 1000);
    produce(&stack.kafka, &stack.topic, batch.clone()).await;
    let truth = Truth::read(&stack.kafka, &stack.topic, batch.len()).await;
    let serving = stack.serving;
    let truth = tokio::task::spawn_blocking(move || {
        assert_exact(serving, &truth);
        truth
    })
    .await
    .expect("exact through TLS and SASL");
    recompute(serving).await;
    tokio::task::spawn_blocking(move || assert_exact(serving, &truth))
        .await
        .expect("exact after a recompute");
    stack.token.cancel();
    stack.batch_token.cancel();
}
