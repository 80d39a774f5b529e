//! Crash test: SIGKILL a real `lambda batch` process several times while
//! events are produced, restart it each time, and check that the master log
//! holds every produced record exactly once.

use ::common::views::SharedViews;
use batch_layer::master_log::{LogOptions, MasterLog};
use std::collections::{BTreeMap, HashSet};

mod common;

use common::{CrashRig, Scenario};

const TOTAL: usize = 6000;

fn payload(i: usize) -> String {
    format!("event-{i} word{}", i % 50)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingestion_loses_and_duplicates_nothing() {
    let mut rig = CrashRig::new("crash").await;
    rig.run(&Scenario {
        role: "batch",
        flags: &[
            "--recompute-interval",
            "300ms",
            "--bucket-size",
            "8",
            "--segment-bytes",
            "8192",
        ],
        done_metric: "lambda_batch_log_end_offset",
        resume_marker: "Resuming at a durable position",
        total: TOTAL,
        event: payload,
    })
    .await;
    let data_dir = rig.data_dir.clone();

    // Every produced record exactly once, offsets dense per partition.
    let log = MasterLog::open(&data_dir, LogOptions::default()).expect("master log opens cleanly");
    let ends = log.end_offsets();
    assert_eq!(ends.total_offsets() as usize, TOTAL);
    let mut seen = HashSet::new();
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for seg in log.segments_below(&ends.as_cut()) {
        let bytes = seg.load().expect("load");
        for r in seg.records(&bytes) {
            let r = r.expect("record");
            let payload = String::from_utf8(r.payload.to_vec()).expect("utf-8");
            assert!(seen.insert(payload.clone()), "duplicate record {payload}");
            offsets.entry(seg.partition).or_default().push(r.offset);
        }
    }
    assert_eq!(
        seen.len(),
        TOTAL,
        "every produced record is in the master log"
    );
    for (p, o) in &offsets {
        assert_eq!(
            o,
            &(0..o.len() as i64).collect::<Vec<_>>(),
            "partition {p} is dense and in order"
        );
    }

    // Whatever recompute was interrupted, the newest published view is
    // intact (recomputes every 300 ms: there is one), and so is every part
    // it lists.
    let views = SharedViews::in_directory(
        &data_dir.join("store"),
        tokio::runtime::Handle::current(),
        3,
    )
    .expect("views");
    tokio::task::spawn_blocking(move || {
        let (manifest, view) = views
            .load_latest()
            .expect("the newest view verifies")
            .expect("a view was published");
        assert_eq!(manifest.parts.len(), view.header.cut.iter().count());
        for part in manifest.parts.values() {
            views.load_part(part).expect("every part verifies");
        }
    })
    .await
    .expect("checked");
    rig.broker.stop().await;
}
