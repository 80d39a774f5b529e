//! Crash test: SIGKILL a real `lambda speed` process several times while
//! events are produced, restart it each time, and check that its realtime
//! counts equal a recount exactly (0 lost, 0 duplicated), and that it stops
//! cleanly on SIGTERM.

mod common;

use ::testkit::{consume_until_idle, recount};
use common::{CrashRig, Scenario};
use lambda_core::realtime::RealtimeMessage;
use realtime_store::RealtimeStore;
use std::collections::HashMap;
use std::time::Duration;

const TOTAL: usize = 6000;

fn event(i: usize) -> String {
    format!("event{} word{} Shared", i % 97, i % 13)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_streaming_loses_and_duplicates_nothing() {
    let mut rig = CrashRig::new("speed-crash").await;
    rig.run(&Scenario {
        role: "speed",
        // Compacting every few kilobytes puts compactions among the kills.
        flags: &[
            "--bucket-size",
            "16",
            "--micro-batch-records",
            "200",
            "--realtime-compact-bytes",
            "2048",
        ],
        done_metric: "lambda_speed_position",
        resume_marker: "Resuming from the checkpoint",
        total: TOTAL,
        event,
    })
    .await;
    let (brokers, topic, data_dir) = (rig.brokers.clone(), rig.topic.clone(), rig.data_dir.clone());

    let truth = recount((0..TOTAL).map(event));
    let store = RealtimeStore::open(&data_dir.join("realtime")).expect("store");
    assert!(
        store.stats().snapshot_bytes > 0,
        "the store was compacted during the run: {:?}",
        store.stats()
    );
    let counts = store.load_counts().expect("counts");
    let per_word = ::testkit::PerWord::of(counts.clone());
    assert_eq!(
        per_word.all_time, truth,
        "realtime counts equal a recount: nothing lost, nothing twice"
    );
    assert_eq!(
        per_word.in_windows, truth,
        "summed over their windows too (every event has a timestamp)"
    );
    assert_eq!(per_word.late, 0, "events produced in order are not late");
    assert_eq!(
        (per_word.all_time_keys, per_word.untimed),
        (0, 0),
        "each occurrence is counted under its window only"
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
    let mut watermarks = 0;
    for m in &upserts {
        match RealtimeMessage::decode(m.key.as_deref(), Some(&m.payload)).expect("realtime message")
        {
            RealtimeMessage::Upserts { upserts: us, .. } => {
                for u in us {
                    let c = published.entry(u.key()).or_insert(0);
                    *c = (*c).max(u.count);
                }
            }
            RealtimeMessage::Watermark(_) => watermarks += 1,
        }
    }
    assert!(watermarks > 0, "micro-batches are closed by watermarks");
    for (k, c) in &counts {
        let key = format!("{}/{}/{}", k.bucket.partition, k.bucket.bucket, k.word);
        assert_eq!(published.get(&key), Some(c), "published {key}");
    }
    rig.broker.stop().await;
}
