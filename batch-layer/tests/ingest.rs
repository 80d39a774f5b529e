//! The batch layer end to end against the embedded broker: ingestion into the
//! master log, a recompute that matches a naive recount, dead letters.

use common::dead_letter::headers;
use lambda_core::view::{verify_and_decode, Manifest};
use std::time::Duration;
use testkit::{consume_n, get, http, memory_broker, metric_sum, produce, recount, wait_for};

mod support;

use support::{batch_args, recompute, wait_for_log_end};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_everything_once_and_recomputes_an_exact_view() {
    let (broker, brokers, topic) = memory_broker("batch-ingest").await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Bucket size 1: the cut is the whole log, so the view must equal a
    // recount of every good event.
    let token = common::shutdown::CancellationToken::new();
    let running = batch_layer::start(
        batch_args(&brokers, &topic, dir.path(), &["--bucket-size", "1"]),
        token.clone(),
    )
    .await
    .expect("batch layer starts");
    let addr = running.http_addr;

    let vocabulary = ["alpha", "Beta", "gamma", "délta", "ε", "zeta9"];
    let mut good = Vec::new();
    for i in 0..3000usize {
        let words: Vec<&str> = (0..(i % 7) + 1)
            .map(|j| vocabulary[(i * 31 + j * 7) % vocabulary.len()])
            .collect();
        good.push(words.join(" "));
    }
    let mut records: Vec<(String, Vec<u8>)> = good
        .iter()
        .enumerate()
        .map(|(i, t)| (i.to_string(), t.clone().into_bytes()))
        .collect();
    let bad: Vec<Vec<u8>> = vec![b"\xff\xfe not utf-8".to_vec(), vec![b'x'; 1001], Vec::new()];
    for (i, b) in bad.iter().enumerate() {
        records.insert(i * 1000 + 5, (format!("bad{i}"), b.clone()));
    }
    let total = records.len();
    produce(&brokers, &topic, records).await;

    let metrics = tokio::task::spawn_blocking(move || {
        wait_for(
            "every record in the master log",
            Duration::from_secs(60),
            || {
                let m = get(addr, "/metrics").ok()?.text();
                // The log's end is read live, the counter is added just after
                // the append returns: wait for both, then check the count.
                let logged = metric_sum(&m, "lambda_batch_log_end_offset") as usize == total;
                let counted =
                    metric_sum(&m, "lambda_batch_records_ingested_total") as usize >= total;
                (logged && counted).then_some(m)
            },
        )
    })
    .await
    .expect("join");
    assert_eq!(
        metric_sum(&metrics, "lambda_batch_records_ingested_total") as usize,
        total
    );

    let manifest = tokio::task::spawn_blocking(move || recompute(addr))
        .await
        .expect("join");
    assert_eq!(manifest.header.cut.total_offsets() as usize, total);
    assert_eq!(manifest.header.events as usize, good.len());
    assert_eq!(manifest.header.skipped_records as usize, bad.len());

    let version = manifest.version;
    let bytes = tokio::task::spawn_blocking(move || {
        get(addr, &format!("/views/{version}")).expect("view").body
    })
    .await
    .expect("join");
    let view = verify_and_decode(&manifest, &bytes).expect("verified");

    let truth = recount(&good);
    assert_eq!(view.plain_words().len(), truth.len());
    for (w, c) in view.plain_words() {
        assert_eq!(Some(c), truth.get(&**w), "word {w}");
    }

    // Every bad record is in the dead-letter topic with its origin and reason.
    let dead = consume_n(
        &brokers,
        &format!("{topic}.dlq"),
        bad.len(),
        Duration::from_secs(30),
    )
    .await;
    let mut reasons: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.header(headers::REASON))
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["empty", "invalid-utf8", "too-large"]);
    for d in &dead {
        assert_eq!(d.header(headers::ORIGIN_TOPIC), Some(topic.as_str()));
        assert!(d
            .header(headers::ORIGIN_OFFSET)
            .is_some_and(|o| o.parse::<i64>().is_ok()));
        assert_eq!(d.header(headers::LAYER), Some("batch"));
    }
    let metrics =
        tokio::task::spawn_blocking(move || get(addr, "/metrics").expect("metrics").text())
            .await
            .expect("join");
    assert_eq!(metric_sum(&metrics, "lambda_dead_letters_total"), 3.0);

    // Nothing new: a second recompute keeps the version.
    let again = tokio::task::spawn_blocking(move || recompute(addr))
        .await
        .expect("join");
    assert_eq!(again.version, manifest.version);

    token.cancel();
    running.wait().await.expect("the batch layer stops cleanly");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_are_bucket_aligned_and_recompute_needs_the_token() {
    let (broker, brokers, topic) = memory_broker("batch-cut").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = common::shutdown::CancellationToken::new();
    let args = batch_args(&brokers, &topic, dir.path(), &["--bucket-size", "16"]);
    let running = batch_layer::start(args, token.clone())
        .await
        .expect("starts");
    let addr = running.http_addr;

    produce(
        &brokers,
        &topic,
        (0..200).map(|i| (i.to_string(), format!("w{} common", i % 5).into_bytes())),
    )
    .await;
    tokio::task::spawn_blocking(move || {
        wait_for_log_end(addr, 200);
        assert_eq!(
            http(addr, "POST", "/recompute", &[], b"")
                .expect("post")
                .status,
            401
        );
        let wrong = http(
            addr,
            "POST",
            "/recompute",
            &[("Authorization", "Bearer nope")],
            b"",
        )
        .expect("post");
        assert_eq!(wrong.status, 401);
        let ok = http(
            addr,
            "POST",
            "/recompute",
            &[("Authorization", "Bearer s3cret")],
            b"",
        )
        .expect("post");
        assert_eq!(ok.status, 200, "{}", ok.text());
        let manifest: Manifest = serde_json::from_slice(&ok.body).expect("manifest");
        assert!(manifest
            .header
            .cut
            .is_aligned(lambda_core::BucketSize::new(16).expect("16")));
        for (_, o) in manifest.header.cut.iter() {
            assert_eq!(o % 16, 0);
        }
        assert_eq!(
            manifest.header.events,
            manifest.header.cut.total_offsets(),
            "one event per offset below the cut"
        );
        let latest: Manifest =
            serde_json::from_slice(&get(addr, "/views/latest").expect("latest").body)
                .expect("manifest");
        assert_eq!(latest, manifest);
        assert_eq!(get(addr, "/views/banana").expect("get").status, 400);
        assert_eq!(get(addr, "/views/999").expect("get").status, 404);
        assert_eq!(get(addr, "/nowhere").expect("get").status, 404);
    })
    .await
    .expect("join");

    token.cancel();
    running.wait().await.expect("the batch layer stops cleanly");
    broker.stop().await;
}

/// All of a recompute runs at background priority, not only its MapReduce
/// pool: composing, encoding and publishing the view at normal priority
/// took a core for a few hundred milliseconds when the serving layer swaps
/// views in too, and freshness suffered (README, *Freshness*).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recompute_runs_at_background_priority() {
    use common::background::{this_threads_nice, threads_nice, BACKGROUND_NICE};
    let (broker, brokers, topic) = memory_broker("batch-nice").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = common::shutdown::CancellationToken::new();
    // Paused before it publishes, the recompute's thread can be looked at.
    let args = batch_args(
        &brokers,
        &topic,
        dir.path(),
        &["--fault-recompute-pause", "3s"],
    );
    let running = batch_layer::start(args, token.clone())
        .await
        .expect("starts");
    let addr = running.http_addr;
    produce(
        &brokers,
        &topic,
        (0..30).map(|i| (i.to_string(), b"a b".to_vec())),
    )
    .await;
    let here = this_threads_nice();
    tokio::task::spawn_blocking(move || {
        wait_for_log_end(addr, 30);
        let asked = std::thread::spawn(move || recompute(addr));
        let seen = wait_for("the recompute's thread", Duration::from_secs(30), || {
            let nice = threads_nice("recompute");
            (!nice.is_empty()).then_some(nice)
        });
        assert_eq!(seen, vec![(here + BACKGROUND_NICE).min(19)]);
        asked.join().expect("the recompute answers");
    })
    .await
    .expect("join");
    token.cancel();
    running.wait().await.expect("the batch layer stops cleanly");
    broker.stop().await;
}

/// A batch the consumer cannot read (corrupted on the wire) holds its
/// partition: `/readyz` says which and from where, the metrics count it,
/// and the other partitions go on into the master log, events produced
/// after the bad one included. The bad batch is not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_holds_its_partition_and_the_others_go_on() {
    use testkit::{broker_behind_corrupting_proxy, produce_to_partitions, CORRUPT_MARKER};
    let (broker, brokers) = broker_behind_corrupting_proxy().await;
    let topic = testkit::unique("batch-unreadable");
    let dir = tempfile::tempdir().expect("tempdir");
    let token = common::shutdown::CancellationToken::new();
    let running = batch_layer::start(batch_args(&brokers, &topic, dir.path(), &[]), token.clone())
        .await
        .expect("starts");
    let addr = running.http_addr;
    let on = |partitions: &[i32], n: usize, text: &[u8]| -> Vec<(i32, Vec<u8>)> {
        partitions
            .iter()
            .flat_map(|&p| (0..n).map(move |_| (p, text.to_vec())))
            .collect()
    };
    let poison = [b"a ".as_slice(), CORRUPT_MARKER].concat();
    produce_to_partitions(&brokers, &topic, on(&[0, 1, 2], 5, b"alpha beta")).await;
    produce_to_partitions(&brokers, &topic, on(&[1], 1, &poison)).await;
    produce_to_partitions(&brokers, &topic, on(&[0, 1, 2], 10, b"alpha gamma")).await;

    tokio::task::spawn_blocking(move || {
        let end = |m: &str, p: i32| {
            metric_sum(
                m,
                &format!("lambda_batch_log_end_offset{{partition=\"{p}\"}}"),
            )
        };
        // The partitions are read in no set order: partitions 0 and 2 can
        // reach their ends before partition 1's bad batch is met and held.
        let held = |m: &str| metric_sum(m, "lambda_batch_held_partitions");
        let m = wait_for(
            "partitions 0 and 2 in the master log, partition 1 held",
            Duration::from_secs(60),
            || {
                let m = get(addr, "/metrics").ok()?.text();
                (end(&m, 0) == 15.0 && end(&m, 2) == 15.0 && held(&m) >= 1.0).then_some(m)
            },
        );
        assert_eq!(end(&m, 1), 5.0, "held at the unreadable batch, not past it");
        assert_eq!(held(&m), 1.0);
        assert!(metric_sum(&m, "lambda_batch_unreadable_batches_total") >= 1.0);
        let r = get(addr, "/readyz").expect("readyz");
        assert_eq!(r.status, 503, "{}", r.text());
        let text = r.text();
        assert!(
            text.contains("partition 1") && text.contains("offset 5"),
            "{text}"
        );
        assert!(text.contains("cannot read records"), "{text}");
    })
    .await
    .expect("join");
    token.cancel();
    running
        .wait()
        .await
        .expect("the batch layer stops cleanly when asked");
    broker.stop().await;
}
