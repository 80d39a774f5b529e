//! Crash test: SIGKILL a real `lambda speed` process several times while
//! events are produced, restart it each time, and check that its realtime
//! counts equal a recount exactly (0 lost, 0 duplicated), and that it stops
//! cleanly on SIGTERM.

mod common;

use ::common::realtime::RealtimeUpsert;
use ::common::testkit::consume_until_idle;
use ::common::Tokenizer;
use common::{finish_cleanly, kill_repeatedly, produce_in_bursts, spawn_role, CrashRig};
use speed_layer::store::RealtimeStore;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

const TOTAL: usize = 6000;

fn spawn_speed(brokers: &str, topic: &str, data_dir: &Path, addr: SocketAddr, log: &Path) -> Child {
    let (dlq, rt, addr) = (
        format!("{topic}.dlq"),
        format!("{topic}.rt"),
        addr.to_string(),
    );
    let args: Vec<String> = [
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--dead-letter-topic",
        &dlq,
        "--realtime-topic",
        &rt,
        "--data-dir",
        data_dir.to_str().expect("utf-8"),
        "--http-addr",
        &addr,
        "--partitions",
        "3",
        "--bucket-size",
        "16",
        "--micro-batch-records",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spawn_role("speed", &args, log)
}

fn event(i: usize) -> String {
    format!("event{} word{} Shared", i % 97, i % 13)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_streaming_loses_and_duplicates_nothing() {
    let mut rig = CrashRig::new("speed-crash").await;
    let (brokers, topic, data_dir, log_file, addr) = (
        rig.brokers.clone(),
        rig.topic.clone(),
        rig.data_dir.clone(),
        rig.log_file.clone(),
        rig.addr,
    );

    let producer = produce_in_bursts(&brokers, &topic, TOTAL, event);

    kill_repeatedly(5, &mut rig.rng, || {
        spawn_speed(&brokers, &topic, &data_dir, addr, &log_file)
    })
    .await;
    producer.await.expect("producer");

    let child = spawn_speed(&brokers, &topic, &data_dir, addr, &log_file);
    finish_cleanly(
        child,
        addr,
        "lambda_speed_position",
        TOTAL,
        &log_file,
        "Resuming from the checkpoint",
    )
    .await;

    let mut truth: HashMap<String, u64> = HashMap::new();
    let mut t = Tokenizer::new();
    for i in 0..TOTAL {
        t.for_each_word(&event(i), |w| *truth.entry(w.to_owned()).or_insert(0) += 1);
    }
    let store = RealtimeStore::open(&data_dir.join("realtime")).expect("store");
    let counts = store.load_counts().expect("counts");
    let mut per_word: HashMap<String, u64> = HashMap::new();
    for (k, c) in &counts {
        *per_word.entry(k.word.to_string()).or_insert(0) += c;
    }
    assert_eq!(
        per_word, truth,
        "realtime counts equal a recount: nothing lost, nothing twice"
    );
    assert_eq!(
        store.offsets().expect("offsets").total_offsets() as usize,
        TOTAL
    );

    // Published counts never exceed the checkpoint, and end equal to it.
    let upserts = consume_until_idle(
        &brokers,
        &format!("{topic}.rt"),
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await;
    let mut published: HashMap<String, u64> = HashMap::new();
    for m in &upserts {
        let u: RealtimeUpsert = serde_json::from_slice(&m.payload).expect("upsert");
        let c = published.entry(u.key()).or_insert(0);
        *c = (*c).max(u.count);
    }
    for (k, c) in &counts {
        let key = format!("{}/{}/{}", k.bucket.partition, k.bucket.bucket, k.word);
        assert_eq!(published.get(&key), Some(c), "published {key}");
    }
    rig.broker.stop().await;
}
