//! Crash test: SIGKILL a real `lambda serve` process several times while
//! events are produced and a `lambda speed` process publishes realtime
//! counts, restart it each time, and check that its realtime replica ends
//! equal to a recount exactly (0 lost, 0 duplicated) and that it stops
//! cleanly on SIGTERM. (No batch layer: the replica holds every count.)

mod common;

use common::{free_addr, spawn_role, terminate, CrashRig, Scenario};
use realtime_store::RealtimeStore;

const TOTAL: usize = 6000;

fn event(i: usize) -> String {
    format!("serve{} word{} Shared", i % 89, i % 11)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_serving_layer_loses_and_duplicates_nothing() {
    let mut rig = CrashRig::new("serving-crash").await;
    let speed_dir = rig.data_dir.with_file_name("speed");
    let speed_log = rig.log_file.with_file_name("speed.log");
    let mut speed_args = rig.role_args(&["--bucket-size", "16", "--micro-batch-records", "200"]);
    let at = speed_args
        .iter()
        .position(|a| a == "--data-dir")
        .expect("flag")
        + 1;
    speed_args[at] = speed_dir.to_str().expect("utf-8").into();
    let at = speed_args
        .iter()
        .position(|a| a == "--http-addr")
        .expect("flag")
        + 1;
    speed_args[at] = free_addr().to_string();
    let speed = spawn_role("speed", &speed_args, &speed_log);

    rig.run(&Scenario {
        role: "serve",
        flags: &["--bucket-size", "16", "--realtime-compact-bytes", "2048"],
        done_metric: "lambda_serving_as_of_offsets",
        resume_marker: "Resuming at a durable position",
        total: TOTAL,
        event,
    })
    .await;
    assert!(terminate(speed), "speed exits 0");

    let truth = ::testkit::recount((0..TOTAL).map(event));
    let store = RealtimeStore::open(&rig.data_dir.join("realtime")).expect("store");
    assert!(
        store.stats().snapshot_bytes > 0,
        "the replica's store was compacted during the run: {:?}",
        store.stats()
    );
    let per_word = ::testkit::PerWord::of(store.load_counts().expect("counts"));
    assert_eq!(
        per_word.all_time, truth,
        "the serving layer's realtime replica equals a recount: nothing lost, nothing twice"
    );
    assert_eq!(
        per_word.in_windows, truth,
        "summed over their windows too (every event has a timestamp)"
    );
    assert_eq!(per_word.late, 0, "events produced in order are not late");
    assert!(
        per_word.all_time_keys > 0,
        "the replica keeps the all-time counts it derives from the windowed ones"
    );
    assert_eq!(
        store.as_of().expect("as-of").total_offsets() as usize,
        TOTAL,
        "its stored as_of covers every event"
    );
    rig.broker.stop().await;
}
