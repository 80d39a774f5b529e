//! The master dataset in the shared store (`--store-url`), written once and
//! run against a directory (`file://`) and a real S3-compatible server
//! (`moto`, started here): sealed chunks hold exactly their offsets' records,
//! CRC-checked; a batch layer on a new, empty data directory resumes at the
//! store's sealed end instead of re-ingesting, and its recompute, which reads
//! the sealed offsets from the store, is exact, and the views it publishes
//! are read back from the store as the other roles read them.

mod support;

use batch_layer::config::BatchArgs;
use batch_layer::master_log::record::{parse, Parsed};
use common::shutdown::CancellationToken;
use common::store::Store;
use common::views::source::ViewSource;
use lambda_core::view::verify_and_decode;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::{consume_n, get, memory_broker, metric_sum, produce, recount, wait_for};

const CHUNK: i64 = 40;
const TIMEOUT: Duration = Duration::from_secs(60);

fn batch_args(brokers: &str, topic: &str, dir: &std::path::Path, store_url: &str) -> BatchArgs {
    let chunk = CHUNK.to_string();
    let extra = [
        "--bucket-size",
        "1",
        "--store-url",
        store_url,
        "--chunk-offsets",
        &chunk,
        // Small segments, so sealed ones can be deleted locally.
        "--segment-bytes",
        "4096",
    ];
    support::batch_args(brokers, topic, dir, &extra)
}

/// The partition and offset bounds a chunk's key names (parsed here, not
/// by the code under test).
fn chunk_bounds(key: &str) -> (i32, i64, i64) {
    let (p, range) = key
        .strip_prefix("master/p-")
        .and_then(|rest| rest.split_once('/'))
        .expect("master/p-<p>/…");
    let (from, to) = range
        .strip_suffix(".chunk")
        .and_then(|r| r.split_once('-'))
        .expect("bounds");
    (
        p.parse().expect("partition"),
        from.parse().expect("first"),
        to.parse().expect("end"),
    )
}

/// Per partition, the end of the chunks `store` holds.
async fn sealed_ends(store: &Store) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for key in store.list("master").await.expect("list") {
        let (p, _, to) = chunk_bounds(&key);
        let end = ends.entry(p).or_default();
        *end = to.max(*end);
    }
    ends
}

/// The texts of [`events`].
fn texts(range: std::ops::Range<usize>) -> Vec<String> {
    events(range)
        .into_iter()
        .map(|(_, t)| String::from_utf8(t).expect("utf-8"))
        .collect()
}

/// The batch layer's metrics once `check` accepts them.
async fn metrics_when(
    addr: SocketAddr,
    what: &'static str,
    check: impl Fn(&str) -> bool + Send + 'static,
) -> String {
    tokio::task::spawn_blocking(move || {
        wait_for(what, TIMEOUT, || {
            let m = get(addr, "/metrics").ok()?.text();
            check(&m).then_some(m)
        })
    })
    .await
    .expect("join")
}

/// A recompute's view, checked against a recount of `texts`; a reader of
/// the store (what `lambda serve --store-url` and `lambda speed
/// --store-url` use) finds the same view there, byte for byte.
async fn assert_view_exact(addr: SocketAddr, store_url: &str, texts: &[String], offsets: usize) {
    let source = ViewSource::from_flags(None, Some(store_url), tokio::runtime::Handle::current())
        .expect("the store opens")
        .expect("a source");
    let (manifest, bytes) = tokio::task::spawn_blocking(move || {
        let manifest = support::recompute(addr);
        let bytes = get(addr, &format!("/views/{}", manifest.version))
            .expect("view")
            .body;
        let newest = source.latest().expect("the store's newest view");
        assert_eq!(
            newest.as_ref().map(|m| m.version),
            Some(manifest.version),
            "the store's newest view is the one the batch layer served"
        );
        let stored = source.read(manifest.version).expect("read").expect("kept");
        assert!(
            stored == bytes,
            "the store holds the view the batch layer served"
        );
        (manifest, bytes)
    })
    .await
    .expect("join");
    assert_eq!(manifest.header.cut.total_offsets() as usize, offsets);
    assert_eq!(manifest.header.events as usize, texts.len());
    let view = verify_and_decode(&manifest, &bytes).expect("verified");
    let truth = recount(texts);
    assert_eq!(view.plain_words().len(), truth.len());
    for (w, c) in view.plain_words() {
        assert_eq!(Some(c), truth.get(&**w), "word {w}");
    }
}

fn events(range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            (
                format!("k{i}"),
                format!("word{} common e{i}", i % 13).into_bytes(),
            )
        })
        .collect()
}

async fn the_master_dataset_is_sealed_into_the_store_and_read_back(store_url: &str) {
    let (broker, brokers, topic) = memory_broker("store").await;
    let (first_dir, second_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );

    let token = CancellationToken::new();
    let first = batch_layer::start(
        batch_args(&brokers, &topic, first_dir.path(), store_url),
        token.clone(),
    )
    .await
    .expect("batch layer starts");
    const N: usize = 600;
    produce(&brokers, &topic, events(0..N)).await;
    let records = consume_n(&brokers, &topic, N, TIMEOUT).await;
    let mut by_offset: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    for r in &records {
        by_offset.insert((r.partition, r.offset), r.payload.clone());
    }
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for &(p, o) in by_offset.keys() {
        let end = ends.entry(p).or_default();
        *end = (*end).max(o + 1);
    }
    let sealed: i64 = ends.values().map(|end| end / CHUNK).sum();
    assert!(sealed >= 4, "the test seals several chunks: {ends:?}");
    metrics_when(
        first.http_addr,
        "every record logged and every full chunk sealed",
        move |m| {
            metric_sum(m, "lambda_batch_log_end_offset") as usize == N
                && metric_sum(m, "lambda_batch_chunks_sealed_total") as i64 == sealed
        },
    )
    .await;

    // The local log keeps only what the store does not hold: every
    // partition's first segments are gone.
    let log_dir = first_dir.path().join("master-log");
    tokio::task::spawn_blocking(move || {
        wait_for("sealed local segments deleted", TIMEOUT, || {
            let first_bases: Vec<i64> = (0..3)
                .map(|p| {
                    std::fs::read_dir(log_dir.join(format!("p-{p}")))
                        .expect("partition dir")
                        .filter_map(|e| {
                            e.ok()?
                                .file_name()
                                .to_str()?
                                .strip_suffix(".log")?
                                .parse()
                                .ok()
                        })
                        .min()
                        .expect("a segment")
                })
                .collect();
            first_bases.iter().all(|&base| base > 0).then_some(())
        })
    })
    .await
    .expect("join");

    // Each chunk holds exactly the records of its offsets, as the topic does.
    let store = Store::open(store_url).expect("store");
    let keys = store.list("master").await.expect("list");
    assert_eq!(keys.len() as i64, sealed, "{keys:?}");
    for key in &keys {
        let (p, from, to) = chunk_bounds(key);
        assert_eq!((from % CHUNK, to - from), (0, CHUNK), "{key}");
        let bytes = store.get(key).await.expect("read").expect("listed");
        let (mut at, mut offsets) = (0, Vec::new());
        while at < bytes.len() {
            match parse(&bytes[at..]) {
                Parsed::Record(record, len) => {
                    assert_eq!(
                        Some(&record.payload.to_vec()),
                        by_offset.get(&(p, record.offset)),
                        "{key} @{}",
                        record.offset
                    );
                    offsets.push(record.offset);
                    at += len;
                }
                other => panic!("{key} at byte {at}: {other:?}"),
            }
        }
        assert_eq!(offsets, (from..to).collect::<Vec<_>>(), "{key}");
    }
    let sealed_end = sealed_ends(&store).await;
    let addr = first.http_addr;
    let m = tokio::task::spawn_blocking(move || get(addr, "/metrics").expect("metrics").text())
        .await
        .expect("join");
    assert_eq!(
        metric_sum(&m, "lambda_batch_sealed_end_offset") as i64,
        sealed_end.values().sum::<i64>(),
        "the sealed ends are reported"
    );
    // Sealed means immutable: a second writer of a key (a zombie owner)
    // changes nothing.
    let original = store.get(&keys[0]).await.expect("read");
    let again = store
        .put_new(&keys[0], b"something else".to_vec())
        .await
        .expect("put");
    assert!(!again, "the store refused to overwrite {}", keys[0]);
    assert_eq!(store.get(&keys[0]).await.expect("read"), original);
    let texts = texts(0..N);
    assert_view_exact(first.http_addr, store_url, &texts, N).await;
    token.cancel();
    first.wait().await.expect("stops cleanly");

    // A new instance on an empty data directory: it resumes at the sealed
    // end, ingests only the tail, and reads the rest from the store.
    let token = CancellationToken::new();
    let second = batch_layer::start(
        batch_args(&brokers, &topic, second_dir.path(), store_url),
        token.clone(),
    )
    .await
    .expect("second batch layer starts");
    let tail = N - sealed_end.values().sum::<i64>() as usize;
    let m = metrics_when(second.http_addr, "the tail ingested", move |m| {
        metric_sum(m, "lambda_batch_log_end_offset") as usize == N
            && metric_sum(m, "lambda_batch_records_ingested_total") as usize >= tail
    })
    .await;
    assert_eq!(
        metric_sum(&m, "lambda_batch_records_ingested_total") as usize,
        tail,
        "only the tail came from Kafka"
    );
    assert_view_exact(second.http_addr, store_url, &texts, N).await;

    // More events: the new instance seals the next chunks, and nothing it
    // could not read again is lost.
    produce(&brokers, &topic, events(N..N + 150)).await;
    let all = self::texts(0..N + 150);
    metrics_when(second.http_addr, "the new events logged", |m| {
        metric_sum(m, "lambda_batch_log_end_offset") as usize == N + 150
            && metric_sum(m, "lambda_batch_chunks_sealed_total") > 0.0
    })
    .await;
    assert_view_exact(second.http_addr, store_url, &all, N + 150).await;
    token.cancel();
    second.wait().await.expect("stops cleanly");

    // The first instance again, on its trimmed data directory, which the
    // second one's chunks have overtaken: it drops what the store holds,
    // resumes at the sealed end, and reads everything below from the store.
    let token = CancellationToken::new();
    let again = batch_layer::start(
        batch_args(&brokers, &topic, first_dir.path(), store_url),
        token.clone(),
    )
    .await
    .expect("the first batch layer restarts");
    let m = metrics_when(again.http_addr, "the new events logged again", |m| {
        metric_sum(m, "lambda_batch_log_end_offset") as usize == N + 150
            && metric_sum(m, "lambda_batch_records_ingested_total") > 0.0
    })
    .await;
    let sealed_now: i64 = sealed_ends(&store).await.values().sum();
    assert_eq!(
        metric_sum(&m, "lambda_batch_records_ingested_total") as i64,
        (N + 150) as i64 - sealed_now,
        "only what the store does not hold came from Kafka"
    );
    assert_view_exact(again.http_addr, store_url, &all, N + 150).await;
    token.cancel();
    again.wait().await.expect("stops cleanly");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = Store::file_url(&dir.path().join("store")).expect("url");
    the_master_dataset_is_sealed_into_the_store_and_read_back(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_s3_compatible_server() {
    let server = testkit::s3::S3Server::start("lambda-store");
    for (var, value) in server.env() {
        // Read by object_store when the layer opens the store; this test
        // binary's other test sets none of them.
        std::env::set_var(var, value);
    }
    the_master_dataset_is_sealed_into_the_store_and_read_back(&server.url("prefix/of/it")).await;
}
