//! The speed layer against the embedded broker: exact counts, dead letters,
//! published upserts, and the hand-off to a real batch layer.

use batch_layer::view::{verify_and_decode, Manifest};
use clap::Parser;
use common::dead_letter::headers;
use common::realtime::{route, RealtimeMessage};
use common::shutdown::CancellationToken;
use common::testkit::{
    consume_n, consume_until_idle, get, http, memory_broker, metric_sum, produce, wait_for,
};
use common::{BucketSize, Cut, Tokenizer};
use speed_layer::store::RealtimeStore;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::{common_flags, SpeedCli};

mod support;

#[derive(Parser)]
struct BatchCli {
    #[command(flatten)]
    args: batch_layer::config::BatchArgs,
}

/// Events with 1% poison pills: (all records, the good texts).
fn events(n: usize) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let vocab = ["ant", "Bee", "cat", "dög", "eel", "fox", "gnu"];
    let mut records = Vec::new();
    let mut good = Vec::new();
    for i in 0..n {
        if i % 100 == 37 {
            let bad = match (i / 100) % 3 {
                0 => b"\xc3\x28 invalid".to_vec(),
                1 => vec![b'y'; 501],
                _ => Vec::new(),
            };
            records.push((format!("k{i}"), bad));
            continue;
        }
        let text: Vec<&str> = (0..(i % 5) + 1)
            .map(|j| vocab[(i * 13 + j * 5) % vocab.len()])
            .collect();
        let text = text.join(" ");
        records.push((format!("k{i}"), text.clone().into_bytes()));
        good.push(text);
    }
    (records, good)
}

fn recount(texts: &[String]) -> HashMap<String, u64> {
    let mut t = Tokenizer::new();
    let mut out = HashMap::new();
    for text in texts {
        t.for_each_word(text, |w| *out.entry(w.to_owned()).or_insert(0) += 1);
    }
    out
}

fn wait_position(addr: SocketAddr, total: usize) {
    wait_for(
        "the speed layer to checkpoint every record",
        Duration::from_secs(90),
        || {
            let m = get(addr, "/metrics").ok()?.text();
            (metric_sum(&m, "lambda_speed_position") as usize == total).then_some(())
        },
    );
}

/// Realtime counts per word, summed over buckets at or above `cut`.
fn realtime_per_word(dir: &Path, cut: &Cut, size: BucketSize) -> (HashMap<String, u64>, usize) {
    let store = RealtimeStore::open(&dir.join("realtime")).expect("store reopens after stop");
    let counts = store.load_counts().expect("counts");
    let mut below = 0;
    let mut out = HashMap::new();
    for (k, c) in counts {
        if cut.is_realtime_bucket(size, k.bucket.partition, k.bucket.bucket) {
            *out.entry(k.word.to_string()).or_insert(0) += c;
        } else {
            below += 1;
        }
    }
    (out, below)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_and_poison_pills_are_dead_lettered() {
    let (broker, brokers, topic) = memory_broker("speed").await;
    let (dlq, rt) = (format!("{topic}.dlq"), format!("{topic}.rt"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_str().expect("utf-8").to_owned();

    let token = CancellationToken::new();
    let args = SpeedCli::try_parse_from(common_flags(&brokers, &topic, &dlq, &rt, &dir_s))
        .expect("flags")
        .args;
    let running = speed_layer::start(args, token.clone())
        .await
        .expect("starts");
    let addr = running.http_addr;

    let (records, good) = events(2000);
    let bad = records.len() - good.len();
    let total = records.len();
    produce(&brokers, &topic, records).await;
    tokio::task::spawn_blocking(move || wait_position(addr, total))
        .await
        .expect("join");
    let metrics =
        tokio::task::spawn_blocking(move || get(addr, "/metrics").expect("metrics").text())
            .await
            .expect("join");
    assert_eq!(
        metric_sum(&metrics, "lambda_dead_letters_total") as usize,
        bad
    );

    token.cancel();
    running.wait().await.expect("the speed layer stops cleanly");

    let (realtime, below) =
        realtime_per_word(dir.path(), &Cut::new(), BucketSize::new(8).expect("8"));
    assert_eq!(below, 0);
    assert_eq!(
        realtime,
        recount(&good),
        "realtime counts equal a recount of the good events"
    );

    // Every poison pill is in the dead-letter topic, with origin and reason.
    let dead = consume_n(&brokers, &dlq, bad, Duration::from_secs(30)).await;
    let mut origins: Vec<i64> = Vec::new();
    for d in &dead {
        assert_eq!(d.header(headers::LAYER), Some("speed"));
        assert!(matches!(
            d.header(headers::REASON),
            Some("invalid-utf8" | "too-large" | "empty")
        ));
        origins.push(
            d.header(headers::ORIGIN_OFFSET)
                .and_then(|o| o.parse().ok())
                .expect("origin offset"),
        );
    }
    assert_eq!(origins.len(), bad);

    // The published upserts end at the checkpointed counts.
    let store = RealtimeStore::open(&dir.path().join("realtime")).expect("store");
    let expected = store.load_counts().expect("counts");
    drop(store);
    let upserts = consume_until_idle(
        &brokers,
        &rt,
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await;
    let mut published: HashMap<String, u64> = HashMap::new();
    let mut last_watermark: BTreeMap<i32, Cut> = BTreeMap::new();
    let mut open_upserts: BTreeMap<i32, usize> = BTreeMap::new();
    for m in &upserts {
        match RealtimeMessage::decode(m.key.as_deref(), Some(&m.payload)).expect("realtime message")
        {
            RealtimeMessage::Upserts(us) => {
                for u in us {
                    assert_eq!(
                        m.partition,
                        route(&u.word, u.partition, u.bucket, 3),
                        "{} on the partition its key routes to",
                        u.key()
                    );
                    let c = published.entry(u.key()).or_insert(0);
                    *c = (*c).max(u.count);
                    *open_upserts.entry(m.partition).or_default() += 1;
                }
            }
            RealtimeMessage::Watermark(w) => {
                last_watermark.insert(m.partition, w.positions);
                open_upserts.insert(m.partition, 0);
            }
        }
    }
    // Every realtime partition ends with a watermark at the final checkpoint,
    // after the last upsert.
    let checkpointed = RealtimeStore::open(&dir.path().join("realtime"))
        .expect("store")
        .offsets()
        .expect("offsets");
    assert_eq!(
        last_watermark.len(),
        3,
        "a watermark on every realtime partition"
    );
    for (r, w) in &last_watermark {
        assert_eq!(w, &checkpointed, "last watermark of realtime partition {r}");
        assert_eq!(
            open_upserts.get(r),
            Some(&0),
            "upserts after the last watermark on {r}"
        );
    }
    for (k, c) in &expected {
        let key = format!("{}/{}/{}", k.bucket.partition, k.bucket.bucket, k.word);
        assert_eq!(published.get(&key), Some(c), "published count of {key}");
    }
    assert_eq!(published.len(), expected.len());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_below_a_new_batch_cut_expire_and_the_merge_stays_exact() {
    let (broker, brokers, topic) = memory_broker("handoff").await;
    let (dlq, rt) = (format!("{topic}.dlq"), format!("{topic}.rt"));
    let batch_dir = tempfile::tempdir().expect("tempdir");
    let speed_dir = tempfile::tempdir().expect("tempdir");
    let (b_s, s_s) = (
        batch_dir.path().to_str().expect("utf-8").to_owned(),
        speed_dir.path().to_str().expect("utf-8").to_owned(),
    );
    let token = CancellationToken::new();

    let mut flags = common_flags(&brokers, &topic, &dlq, &rt, &b_s);
    flags.extend(["--interval", "1h"]);
    let batch = batch_layer::start(
        BatchCli::try_parse_from(flags).expect("flags").args,
        token.clone(),
    )
    .await
    .expect("batch starts");
    let batch_addr = batch.http_addr.to_string();
    let mut flags = common_flags(&brokers, &topic, &dlq, &rt, &s_s);
    flags.extend(["--batch-url", &batch_addr, "--cut-poll-interval", "100ms"]);
    let speed = speed_layer::start(
        SpeedCli::try_parse_from(flags).expect("flags").args,
        token.clone(),
    )
    .await
    .expect("speed starts");
    let (speed_addr, batch_addr) = (speed.http_addr, batch.http_addr);

    let (records, good) = events(1500);
    let total = records.len();
    produce(&brokers, &topic, records).await;

    let manifest = tokio::task::spawn_blocking(move || {
        wait_position(speed_addr, total);
        wait_for(
            "the batch layer to ingest everything",
            Duration::from_secs(60),
            || {
                let m = get(batch_addr, "/metrics").ok()?.text();
                (metric_sum(&m, "lambda_batch_log_end_offset") as usize == total).then_some(())
            },
        );
        let r = http(batch_addr, "POST", "/recompute", &[], b"").expect("recompute");
        assert_eq!(r.status, 200, "{}", r.text());
        let manifest: Manifest = serde_json::from_slice(&r.body).expect("manifest");
        let cut = manifest.header.cut.clone();
        wait_for(
            "the speed layer to apply the new cut",
            Duration::from_secs(30),
            || {
                let m = get(speed_addr, "/metrics").ok()?.text();
                (metric_sum(&m, "lambda_speed_batch_cut") as u64 == cut.total_offsets())
                    .then_some(())
            },
        );
        let bytes = get(batch_addr, &format!("/views/{}", manifest.version))
            .expect("view")
            .body;
        (manifest, bytes)
    })
    .await
    .expect("join");
    let (manifest, bytes) = manifest;
    let view = verify_and_decode(&manifest, &bytes).expect("view verifies");
    assert!(manifest.header.cut.total_offsets() > 0, "the cut moved");

    token.cancel();
    speed.wait().await.expect("the speed layer stops cleanly");
    batch.wait().await.expect("the batch layer stops cleanly");

    let size = BucketSize::new(8).expect("8");
    let (realtime, below) = realtime_per_word(speed_dir.path(), &Cut::new(), size);
    assert_eq!(below, 0);
    let store = RealtimeStore::open(&speed_dir.path().join("realtime")).expect("store");
    for (k, _) in store.load_counts().expect("counts") {
        assert!(
            manifest
                .header
                .cut
                .is_realtime_bucket(size, k.bucket.partition, k.bucket.bucket),
            "bucket {:?} below the cut {} survived",
            k.bucket,
            manifest.header.cut
        );
    }
    // Merged totals equal the truth after the hand-off.
    let truth = recount(&good);
    for (word, count) in &truth {
        let merged = view.get(word) + realtime.get(word).copied().unwrap_or(0);
        assert_eq!(merged, *count, "word {word}");
    }
    broker.stop().await;
}
