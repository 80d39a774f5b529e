//! The speed layer's hand-off to a real batch layer: when a recompute moves
//! the batch cut, every realtime bucket below it expires, and the batch view
//! plus what remains of the realtime counts still equal a recount.

use ::common::shutdown::CancellationToken;
use lambda_core::view::{verify_and_decode, Manifest};
use lambda_core::{BucketSize, Cut};
use realtime_store::RealtimeStore;
use std::time::Duration;
mod common;

use common::spec::{parse, Role, StackSpec};
use testkit::{
    get, http, memory_broker, metric_sum, poisoned_events, produce, realtime_per_word, recount,
    wait_for, wait_metric,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_below_a_new_batch_cut_expire_and_the_merge_stays_exact() {
    let (broker, brokers, topic) = memory_broker("handoff").await;
    let batch_dir = tempfile::tempdir().expect("tempdir");
    let speed_dir = tempfile::tempdir().expect("tempdir");
    let token = CancellationToken::new();

    // Buckets of 8, and records over 500 bytes (1 % of them) dead-lettered.
    let spec = StackSpec {
        bucket_size: 8,
        max_event_bytes: 500,
        ..StackSpec::new(&brokers, &topic)
    };
    let flags = |role, dir: &tempfile::TempDir, batch_url| {
        spec.flags(role, dir.path(), "127.0.0.1:0", batch_url)
    };
    let batch = batch_layer::start(parse(flags(Role::Batch, &batch_dir, None)), token.clone())
        .await
        .expect("batch starts");
    let batch_url = format!("http://{}", batch.http_addr);
    let speed = speed_layer::start(
        parse(flags(Role::Speed, &speed_dir, Some(&batch_url))),
        token.clone(),
    )
    .await
    .expect("speed starts");
    let (speed_addr, batch_addr) = (speed.http_addr, batch.http_addr);
    let auth = format!("Bearer {}", spec.admin_token);

    let (records, good) = poisoned_events(1500);
    let total = records.len();
    produce(&brokers, &topic, records).await;

    let manifest = tokio::task::spawn_blocking(move || {
        let (total, timeout) = (total as f64, Duration::from_secs(90));
        wait_metric(speed_addr, "lambda_speed_position", total, timeout);
        wait_metric(batch_addr, "lambda_batch_log_end_offset", total, timeout);
        let auth = [("Authorization", auth.as_str())];
        let r = http(batch_addr, "POST", "/recompute", &auth, b"").expect("recompute");
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
