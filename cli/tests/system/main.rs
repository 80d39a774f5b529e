//! The reliability suite: the broker and the three layers as separate
//! `lambda` processes, attacked the way a real deployment fails (SIGKILLs at
//! random moments, a broker restart, poison pills, a full disk, a view swap
//! under continuous queries), each scenario ending with every word of the
//! topic answered exactly (0 lost, 0 duplicated) by the serving layer.
//!
//! Short profile by default (CI); `LAMBDA_SUITE=full` runs 5× the events and
//! kills. Scenarios run one at a time (`.config/nextest.toml`), each with its
//! own broker process on SQLite storage.

#[path = "../common/mod.rs"]
mod common;
mod robustness;

use common::stack;

use ::common::dead_letter::headers;
use stack::{
    admin_recompute, batch_recompute, cut_of, event, json, recompute, scaled, until, Options, Role,
    Sampler, Stack,
};
use std::collections::BTreeMap;
use std::time::Duration;

fn events(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(event).collect()
}

/// Steady production for the kill scenarios: `n` events in bursts of 50
/// every 200 ms, so kills land while events keep arriving.
fn steady(stack: &Stack, n: usize) -> tokio::task::JoinHandle<usize> {
    stack.produce_in_background(events(0..n), 50, Duration::from_millis(200))
}

fn assert_resumed_mid_stream(stack: &Stack, role: Role, marker: &str) {
    let log = stack.log(role);
    let resumed = log
        .lines()
        .filter(|l| l.contains(marker))
        .any(|l| !l.contains("offset=0"));
    assert!(
        resumed,
        "no restart of {} resumed mid-stream; the kills proved nothing:\n{}",
        role.name(),
        stack.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_layer_sigkilled_during_production() {
    let mut s = Stack::start("sys-speed", Options::default()).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let sampler = Sampler::start(&s, n);
    s.kill(Role::Speed);
    s.kill_repeatedly(Role::Speed, 2).await;
    // Before the batch layer goes, the speed layer must have checkpointed
    // every partition once: a partition it never checkpointed resumes at
    // the batch cut, so with the batch layer gone a restart waits for it
    // for good (seen when both kills above landed within ~200 ms of a start).
    let partitions: Vec<i32> = s.topic_ends().await.iter().map(|(p, _)| p).collect();
    s.start_role(Role::Speed).await;
    let speed = s.addr(Role::Speed);
    until(
        "the speed layer checkpointed every partition",
        Duration::from_secs(60),
        move || {
            let st = json(speed, "/status")?;
            let (at, cut) = (cut_of(&st["positions"]), cut_of(&st["batch_cut"]));
            partitions
                .iter()
                .all(|&p| at.get(p) > cut.get(p))
                .then_some(())
        },
    )
    .await;
    s.kill(Role::Speed);
    // Without the batch layer the rest of the stream is counted by the
    // speed layer alone, so the final answers check its counts too (a batch
    // recompute would otherwise absorb, and hide, its errors).
    s.stop(Role::Batch);
    s.kill_repeatedly(Role::Speed, scaled(5) - 2).await;
    s.start_role(Role::Speed).await;
    producer.await.expect("producer");
    let truth = s.assert_exact().await;
    sampler.finish(&truth).await;
    assert_resumed_mid_stream(&s, Role::Speed, "Resuming from the checkpoint");
    s.shutdown();
}

/// Two speed layers (`--share-partitions`) share the partitions through
/// the consumer group `lambda-speed`. While events arrive, the second is
/// SIGKILLed over and over (each start and death a rebalance), then the
/// first stops (leaving the group) and later dies: each time the survivor
/// takes every partition over — a dead member after the group's session
/// timeout — resuming each from its own checkpoint or the batch cut, and
/// hands some back when the other returns; last, the first is paused past
/// its session timeout (a zombie) and resumed. Every sampled answer equals
/// the truth at its `as_of`, every swap reconciles (the batch layer checks
/// the speed layers' counts), and the end is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_speed_layers_share_the_partitions_exactly_through_kills_and_rebalances() {
    let options = Options {
        second_speed: true,
        ..Options::default()
    };
    let mut s = Stack::start("sys-speed2", options).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let sampler = Sampler::start(&s, n);
    let (a, b) = (s.addr(Role::Speed), s.addr(Role::Speed2));
    let owned = |addr| -> Option<Vec<i32>> {
        let st = json(addr, "/status")?;
        Some(cut_of(&st["positions"]).iter().map(|(p, _)| p).collect())
    };
    let shared = move || {
        let (pa, pb) = (owned(a)?, owned(b)?);
        let disjoint = pa.iter().all(|p| !pb.contains(p));
        (!pa.is_empty() && !pb.is_empty() && disjoint && pa.len() + pb.len() == 3).then_some(())
    };
    let owns_all = move |addr| move || (owned(addr)?.len() == 3).then_some(());
    // The session timeout is 10 s; evicting a dead member takes up to one
    // more heartbeat, and each of several dead members its own.
    let wait = Duration::from_secs(90);
    until("the two speed layers share the partitions", wait, shared).await;
    let serve = s.addr(Role::Serve);
    until(
        "the serving layer shows both, with their partitions",
        wait,
        move || {
            let st = json(serve, "/v1/status")?;
            let writers = st["realtime"]["writers"].as_array()?.clone();
            let named: Vec<i32> = writers
                .iter()
                .flat_map(|w| {
                    cut_of(&w["positions"])
                        .iter()
                        .map(|(p, _)| p)
                        .collect::<Vec<_>>()
                })
                .collect();
            (writers.len() == 2 && named.len() == 3).then_some(())
        },
    )
    .await;
    s.kill(Role::Speed2);
    s.kill_repeatedly(Role::Speed2, 2).await;
    until(
        "the first owns every partition after the kills",
        wait,
        owns_all(a),
    )
    .await;
    s.start_role(Role::Speed2).await;
    until("the two share them again", wait, shared).await;
    s.stop(Role::Speed);
    until(
        "the second owns every partition once the first left",
        wait,
        owns_all(b),
    )
    .await;
    s.start_role(Role::Speed).await;
    until("the two share them once more", wait, shared).await;
    s.kill(Role::Speed);
    until(
        "the second owns every partition once the first died",
        wait,
        owns_all(b),
    )
    .await;
    s.start_role(Role::Speed).await;
    until("the two share them after the restart", wait, shared).await;
    producer.await.expect("producer");
    // A zombie: the first instance paused past its session timeout while
    // more events arrive; the second takes everything over; resumed, the
    // first counts and publishes what it had before it notices (two
    // writers of the same partitions at once), then rejoins.
    let more = s.produce_in_background(events(n..n + scaled(1000)), 50, Duration::from_millis(200));
    s.signal(Role::Speed, "STOP");
    until(
        "the second owns every partition while the first is paused",
        wait,
        owns_all(b),
    )
    .await;
    s.signal(Role::Speed, "CONT");
    until("the two share them after the zombie rejoined", wait, shared).await;
    more.await.expect("producer");
    let truth = s.assert_exact().await;
    sampler.finish(&truth).await;
    let logs = format!("{}{}", s.log(Role::Speed), s.log(Role::Speed2));
    assert!(
        logs.contains("handed back to the group"),
        "no partition changed hands:\n{}",
        s.logs()
    );
    s.shutdown();
}

/// Two batch layers (`--share-partitions`, one store) share the partitions
/// through the consumer group `lambda-batch`: each ingests its own, seals
/// them into the store in chunks of 200 offsets and recomputes them into
/// parts, and every view is the sum of each partition's newest part. While
/// events arrive, the second is SIGKILLed over and over, then paused past
/// its session timeout (a zombie, which on waking may still publish parts
/// of partitions it lost) and resumed; the first takes every partition
/// over each time, from the store's chunks and Kafka. Every swap the
/// serving layer makes reconciles (a partition counted twice or not at all
/// in a view would not), every sampled answer equals the truth at its
/// `as_of`, and the last view counts exactly the events below its cut,
/// composed from both instances' parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batch_layers_share_the_partitions_exactly_through_kills_and_a_zombie() {
    let options = Options {
        second_batch: true,
        ..Options::default()
    };
    let mut s = Stack::start("sys-batch2", options).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let sampler = Sampler::start(&s, n);
    let (a, b) = (s.addr(Role::Batch), s.addr(Role::Batch2));
    let owned = |addr| -> Option<Vec<i64>> {
        let st = json(addr, "/status")?;
        st["owned"]
            .as_array()?
            .iter()
            .map(|p| p.as_i64())
            .collect::<Option<Vec<_>>>()
    };
    let shared = move || {
        let (pa, pb) = (owned(a)?, owned(b)?);
        let disjoint = pa.iter().all(|p| !pb.contains(p));
        (!pa.is_empty() && !pb.is_empty() && disjoint && pa.len() + pb.len() == 3).then_some(())
    };
    let owns_all = move |addr| move || (owned(addr)?.len() == 3).then_some(());
    let wait = Duration::from_secs(90);
    until("the two batch layers share the partitions", wait, shared).await;
    s.kill(Role::Batch2);
    s.kill_repeatedly(Role::Batch2, 2).await;
    until(
        "the first owns every partition after the kills",
        wait,
        owns_all(a),
    )
    .await;
    s.start_role(Role::Batch2).await;
    until("the two share them again", wait, shared).await;
    s.signal(Role::Batch2, "STOP");
    until(
        "the first owns every partition while the second is paused",
        wait,
        owns_all(a),
    )
    .await;
    s.signal(Role::Batch2, "CONT");
    until("the two share them after the zombie rejoined", wait, shared).await;
    producer.await.expect("producer");
    // More events for every partition once they share: each instance's
    // partitions move, so the last view takes a part from each.
    s.produce_to_every_partition(events(n..n + 300)).await;
    let truth = s.assert_exact().await;
    sampler.finish(&truth).await;

    // The last view: once both instances recomputed to the end, its cut is
    // the aligned end of every partition, it sums parts of both, and it
    // counts exactly the events below its cut.
    let ends = s.topic_ends().await;
    let aligned: ::lambda_core::Cut = ends.iter().map(|(p, e)| (p, e - e % 16)).collect();
    let want = aligned.clone();
    let manifest = until("a view at the aligned ends", wait, move || {
        let m = json(a, "/views/latest")?;
        (cut_of(&m["header"]["cut"]) == want).then_some(m)
    })
    .await;
    let writers: std::collections::BTreeSet<String> = manifest["parts"]
        .as_object()
        .expect("parts")
        .values()
        .map(|p| {
            p["key"]
                .as_str()
                .expect("key")
                .rsplit('-')
                .next()
                .expect("writer")
                .to_owned()
        })
        .collect();
    assert_eq!(
        writers.len(),
        2,
        "the view sums parts of both instances: {manifest}"
    );
    let version = manifest["version"].as_u64().expect("version");
    let bytes = ::testkit::get(b, &format!("/views/{version}"))
        .expect("the view from the other instance")
        .body;
    let view = ::lambda_core::view::BatchView::decode(&bytes).expect("decodes");
    let mut wrong = Vec::new();
    for word in truth.counts.keys() {
        let (got, want) = (view.get(word), truth.at(word, &aligned));
        if got != want {
            wrong.push(format!("{word}: view {got}, truth {want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the composed view is wrong at {aligned}: {wrong:?}"
    );
    assert!(
        s.log(Role::Batch)
            .contains("Partitions owned by this batch instance changed"),
        "no partition changed hands:\n{}",
        s.logs()
    );
    s.shutdown();
}

/// Two of each layer: two batch layers and two speed layers sharing the
/// partitions, two serving replicas (the second pulling views from the
/// second batch layer). Every recompute pauses 1 s before it publishes, and
/// the second batch layer is SIGKILLed in such a pause (the first is
/// assigned its partitions while recomputing its own), the second speed
/// layer at the same time; both come back; then the first speed layer is
/// paused past its session timeout (a zombie) and resumed. Both replicas
/// sample answers throughout and end exact at the topic's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_each_layer_stay_exact_through_kills_a_zombie_and_a_rebalance_mid_recompute() {
    let options = Options {
        second_batch: true,
        second_speed: true,
        second_serve: true,
        batch_flags: vec!["--fault-recompute-pause".into(), "1s".into()],
        ..Options::default()
    };
    let mut s = Stack::start("sys-2x2x2", options).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let samplers = [
        Sampler::start_on(&s, Role::Serve, n),
        Sampler::start_on(&s, Role::Serve2, n),
    ];
    // Who owns what: a batch layer's `owned`, a speed layer's positions.
    let owned = |role: Role, addr| -> Option<Vec<i32>> {
        let st = json(addr, "/status")?;
        Some(match role {
            Role::Batch | Role::Batch2 => st["owned"]
                .as_array()?
                .iter()
                .map(|p| p.as_i64().map(|p| p as i32))
                .collect::<Option<Vec<_>>>()?,
            _ => cut_of(&st["positions"]).iter().map(|(p, _)| p).collect(),
        })
    };
    let addrs: BTreeMap<Role, std::net::SocketAddr> =
        s.roles().into_iter().map(|r| (r, s.addr(r))).collect();
    let pair = |one: Role, two: Role| {
        let (a, b) = (addrs[&one], addrs[&two]);
        move || {
            let (pa, pb) = (owned(one, a)?, owned(two, b)?);
            let disjoint = pa.iter().all(|p| !pb.contains(p));
            (!pa.is_empty() && !pb.is_empty() && disjoint && pa.len() + pb.len() == 3).then_some(())
        }
    };
    let all = |role: Role| {
        let addr = addrs[&role];
        move || (owned(role, addr)?.len() == 3).then_some(())
    };
    let wait = Duration::from_secs(90);
    until(
        "the batch layers share the partitions",
        wait,
        pair(Role::Batch, Role::Batch2),
    )
    .await;
    until(
        "the speed layers share the partitions",
        wait,
        pair(Role::Speed, Role::Speed2),
    )
    .await;
    // Kill the second batch layer while a recompute of its pauses.
    let pauses = |s: &Stack| s.log(Role::Batch2).matches("Fault injection").count();
    let before = pauses(&s);
    let deadline = std::time::Instant::now() + wait;
    while pauses(&s) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no recompute paused:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.kill(Role::Batch2);
    s.kill(Role::Speed2);
    until(
        "the first batch layer owns every partition",
        wait,
        all(Role::Batch),
    )
    .await;
    until(
        "the first speed layer owns every partition",
        wait,
        all(Role::Speed),
    )
    .await;
    s.start_role(Role::Batch2).await;
    s.start_role(Role::Speed2).await;
    until(
        "the batch layers share them again",
        wait,
        pair(Role::Batch, Role::Batch2),
    )
    .await;
    until(
        "the speed layers share them again",
        wait,
        pair(Role::Speed, Role::Speed2),
    )
    .await;
    s.signal(Role::Speed, "STOP");
    until(
        "the second speed layer owns every partition",
        wait,
        all(Role::Speed2),
    )
    .await;
    s.signal(Role::Speed, "CONT");
    until(
        "the speed layers share them after the zombie",
        wait,
        pair(Role::Speed, Role::Speed2),
    )
    .await;
    producer.await.expect("producer");
    let truth = s.assert_exact().await;
    for sampler in samplers {
        sampler.finish(&truth).await;
    }
    // The second replica, reading views from the store, swapped views in
    // and lists both batch instances with their partitions.
    let serve2 = s.addr(Role::Serve2);
    let st = json(serve2, "/v1/status").expect("status");
    assert!(
        st["batch"]["version"].as_u64() > Some(1)
            && st["reconciliation"]["checked_swaps"].as_u64() > Some(0),
        "the second replica has no view from the store: {st}"
    );
    until(
        "the second replica lists both batch instances",
        wait,
        move || {
            let st = json(serve2, "/v1/status")?;
            let instances = st["batch"]["instances"].as_array()?.clone();
            let owned: usize = instances
                .iter()
                .filter_map(|i| i["owned"].as_array())
                .map(Vec::len)
                .sum();
            (instances.len() == 2 && owned == 3).then_some(())
        },
    )
    .await;
    s.shutdown();
}

/// The speed layer restarts past its checkpoint — at a batch cut it had
/// not reached — while a serving layer holds the view before that cut: the
/// events between the checkpoint and the cut are then in neither its view
/// nor its realtime counts. Applying the speed layer's new counts would
/// claim them at `as_of` (seen in CI: answers missed them until the next
/// view, and the layers disagreed at that swap), so the serving layer
/// waits, exact at its old `as_of`, until it serves a view reaching there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speed_layer_started_past_its_checkpoint_waits_for_a_view_reaching_it() {
    let (mut s, checkpointed) = stack_serving_a_first_view("sys-start").await;
    let (serve, speed) = (s.addr(Role::Serve), s.addr(Role::Speed));
    // The serving layer keeps that view (v1); the speed layer stops with
    // its checkpoint at `checkpointed`.
    s.stop(Role::Serve);
    s.kill(Role::Speed);
    s.produce(events(150..600)).await;
    let cut = batch_view_of_everything(&s).await;
    assert!(
        cut.iter().any(|(p, c)| c > checkpointed.get(p)),
        "the new cut {cut} must pass the checkpoint {checkpointed} somewhere"
    );
    s.start_role(Role::Speed).await;
    s.produce(events(600..700)).await;
    let ends = s.topic_ends().await;
    let want = ends.clone();
    until(
        "the speed layer counted to the end",
        Duration::from_secs(60),
        move || (cut_of(&json(speed, "/status")?["positions"]) == want).then_some(()),
    )
    .await;
    assert!(
        s.log(Role::Speed).contains("past the checkpoint"),
        "the speed layer did not start past its checkpoint:\n{}",
        s.logs()
    );
    // Without the batch layer the serving layer cannot get the new view.
    s.stop(Role::Batch);
    s.start_role(Role::Serve).await;
    let status = exact_at_as_of_once_waiting_or_at(&s, &ends).await;
    assert_eq!(
        cut_of(&status["as_of"]),
        checkpointed,
        "answers stay exact where the replica was: {status}"
    );
    // The view reaching the speed layer's start arrives: everything applies.
    s.start_role(Role::Batch).await;
    s.assert_exact().await;
    let st = json(serve, "/v1/status").expect("status");
    assert!(
        cut_of(&st["realtime"]["waiting_for_view"]).is_empty(),
        "{st}"
    );
    s.shutdown();
}

/// A running speed layer falls behind the batch layer and a new cut
/// overtakes its position (in CI: the poison-pill scenario, whose dead
/// letters the speed layer sends one at a time, let the batch layer get
/// ahead). It skips to the cut, so the events up to there are in no
/// realtime count: a serving layer holding an older view must wait for one
/// reaching the cut, as after a restart past a checkpoint, instead of
/// claiming them at its `as_of` (seen in CI: the layers disagreed at the
/// next swap, and answers missed those events until it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_speed_layer_overtaken_by_a_batch_cut_is_waited_for() {
    let (mut s, _) = stack_serving_a_first_view("sys-overtaken").await;
    let speed = s.addr(Role::Speed);
    // Paused, the speed and serving layers fall behind while the batch
    // layer reads on and publishes a view of it all.
    s.signal(Role::Speed, "STOP");
    s.signal(Role::Serve, "STOP");
    s.produce(events(150..3150)).await;
    let ends = s.topic_ends().await;
    let cut = batch_view_of_everything(&s).await;
    // Resumed, the speed layer counts one micro-batch (500 records at
    // most), then finds the cut ahead of it and skips the rest up to it.
    s.signal(Role::Speed, "CONT");
    let want = ends.clone();
    until(
        "the speed layer took the cut and counted to the end",
        Duration::from_secs(60),
        move || {
            let st = json(speed, "/status")?;
            (cut_of(&st["batch_cut"]) == cut && cut_of(&st["positions"]) == want).then_some(())
        },
    )
    .await;
    let metrics = ::testkit::get(speed, "/metrics").expect("metrics").text();
    assert!(
        ::testkit::metric_sum(&metrics, "lambda_speed_below_cut_skipped_total") > 0.0,
        "the cut did not overtake the speed layer; the scenario did not happen:\n{}",
        s.logs()
    );
    // Without the batch layer the serving layer cannot get the new view.
    s.stop(Role::Batch);
    s.signal(Role::Serve, "CONT");
    let status = exact_at_as_of_once_waiting_or_at(&s, &ends).await;
    assert!(
        !cut_of(&status["realtime"]["waiting_for_view"]).is_empty(),
        "the serving layer must wait for a view reaching the cut: {status}"
    );
    // The view reaching the cut arrives: everything applies, and the swap's
    // reconciliation finds no disagreement (`assert_exact` checks it).
    s.start_role(Role::Batch).await;
    s.assert_exact().await;
    s.shutdown();
}

/// A stack recomputing only when asked, whose serving layer answers from a
/// view of the first 150 events; with the topic's ends there.
async fn stack_serving_a_first_view(name: &str) -> (Stack, ::lambda_core::Cut) {
    let options = Options {
        recompute_on_demand: true,
        ..Options::default()
    };
    let s = Stack::start(name, options).await;
    let serve = s.addr(Role::Serve);
    s.produce(events(0..150)).await;
    let ends = s.topic_ends().await;
    s.wait_served(&ends, Duration::from_secs(60)).await;
    tokio::task::spawn_blocking(move || recompute(serve, None))
        .await
        .expect("join");
    (s, ends)
}

/// Once the batch layer has ingested everything produced so far, a view of
/// it all (computed by the batch layer, no serving layer asked); its cut.
async fn batch_view_of_everything(s: &Stack) -> ::lambda_core::Cut {
    let batch = s.addr(Role::Batch);
    let total = s.topic_ends().await.total_offsets() as f64;
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(60);
        ::testkit::wait_metric(batch, "lambda_batch_log_end_offset", total, timeout);
        batch_recompute(batch)
    })
    .await
    .expect("join")
}

/// Once the serving layer waits for a view reaching a speed layer's start,
/// or serves up to `ends`: asserts that it answers every word of the topic
/// with the truth at the answer's own `as_of`. Returns its status after.
async fn exact_at_as_of_once_waiting_or_at(
    s: &Stack,
    ends: &::lambda_core::Cut,
) -> serde_json::Value {
    let serve = s.addr(Role::Serve);
    let end = ends.clone();
    until(
        "the serving layer waits for a view, or serves the speed layer's end",
        Duration::from_secs(60),
        move || {
            let st = json(serve, "/v1/status")?;
            let waiting = !cut_of(&st["realtime"]["waiting_for_view"]).is_empty();
            (waiting || cut_of(&st["as_of"]) == end).then_some(())
        },
    )
    .await;
    let (_, records) = s.topic_records().await;
    let truth = stack::Truth::of(&records);
    let words: Vec<String> = truth.counts.keys().cloned().collect();
    let answers = tokio::task::spawn_blocking(move || {
        let answers: Vec<(String, u64, ::lambda_core::Cut)> = words
            .into_iter()
            .map(|w| {
                let a = json(serve, &format!("/v1/words/{w}")).expect("answer");
                (w, a["count"].as_u64().expect("count"), cut_of(&a["as_of"]))
            })
            .collect();
        (answers, json(serve, "/v1/status").expect("status"))
    });
    let (answers, status) = answers.await.expect("join");
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(word, count, as_of)| *count != truth.at(word, as_of))
        .map(|(word, count, as_of)| {
            format!(
                "{word}: {count} at {as_of}, truth {}",
                truth.at(word, as_of)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} answers inexact at their as_of (status {status}), first: {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(5)]
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_layer_sigkilled_during_ingestion_and_recompute() {
    // Every recompute pauses 1.5 s between counting and publishing, so a
    // kill can be aimed inside one.
    let options = Options {
        batch_flags: vec!["--fault-recompute-pause".into(), "1500ms".into()],
        ..Options::default()
    };
    let mut s = Stack::start("sys-batch", options).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let sampler = Sampler::start(&s, n);
    s.kill(Role::Batch);
    s.kill_repeatedly(Role::Batch, scaled(3)).await;

    // Aim one kill inside a recompute: wait for a recompute to start after
    // a view was already published, and kill while it is paused.
    s.start_role(Role::Batch).await;
    let serve = s.addr(Role::Serve);
    let version_of =
        move || json(serve, "/v1/status").and_then(|st| st["batch"]["version"].as_u64());
    until(
        "a first batch view served",
        Duration::from_secs(60),
        move || version_of().filter(|&v| v > 0).map(|_| ()),
    )
    .await;
    let log_path = s.dir.path().join("batch.log");
    until(
        "a recompute in progress",
        Duration::from_secs(60),
        move || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log
                .lines()
                .rev()
                .find(|l| l.contains("Fault injection") || l.contains("Published batch view"))?;
            last.contains("Fault injection").then_some(())
        },
    )
    .await;
    let before = version_of().expect("version");
    s.kill(Role::Batch);
    eprintln!("batch: killed inside a recompute; serving view v{before}");

    // The previous view keeps serving.
    let a = json(serve, "/v1/words/w1").expect("answer with the batch layer down");
    assert_eq!(a["batch"]["version"].as_u64(), Some(before), "{a}");

    s.start_role(Role::Batch).await;
    producer.await.expect("producer");
    until(
        "the next recompute served",
        Duration::from_secs(60),
        move || version_of().filter(|&v| v > before).map(|_| ()),
    )
    .await;
    let truth = s.assert_exact().await;
    sampler.finish(&truth).await;
    assert_resumed_mid_stream(&s, Role::Batch, "Resuming at a durable position");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_layer_sigkilled_and_restarted() {
    let mut s = Stack::start("sys-serve", Options::default()).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let sampler = Sampler::start(&s, n);
    s.kill(Role::Serve);
    s.kill_repeatedly(Role::Serve, scaled(3)).await;
    s.start_role(Role::Serve).await;
    producer.await.expect("producer");
    let truth = s.assert_exact().await;
    sampler.finish(&truth).await;
    assert_resumed_mid_stream(&s, Role::Serve, "Resuming at a durable position");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_restarted_during_production() {
    let mut s = Stack::start("sys-broker", Options::default()).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let sampler = Sampler::start(&s, n);
    for round in 0..scaled(1) {
        tokio::time::sleep(Duration::from_millis(2000 + s.rng.next(2000))).await;
        s.stop_broker();
        eprintln!("broker: stopped (round {round})");
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.start_broker().await;
    }
    let retried = producer.await.expect("producer");
    eprintln!("producer: {retried} sends retried across the broker restart");
    let truth = s.assert_exact().await;
    sampler.finish(&truth).await;
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_swaps_under_continuous_queries_are_exact_at_their_as_of() {
    // Releases of more than 8 counts are applied in slices while the
    // sampler queries (`replica::slices`): its answers come from the
    // positions between slices too.
    let options = Options {
        serve_flags: vec!["--apply-slice-counts".into(), "8".into()],
        ..Options::default()
    };
    let s = Stack::start("sys-swap", options).await;
    let n = scaled(3000);
    let producer = steady(&s, n);
    let serve = s.addr(Role::Serve);
    let sampler = Sampler::start(&s, n);
    // Forced swaps on top of the 2 s interval.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ok = tokio::task::spawn_blocking(move || admin_recompute(serve))
            .await
            .expect("join");
        assert!(ok, "admin recompute failed:\n{}", s.logs());
    }
    producer.await.expect("producer");
    let truth = s.assert_exact().await;
    let samples = sampler.finish(&truth).await;
    let versions: std::collections::BTreeSet<u64> = samples.iter().map(|x| x.3).collect();
    assert!(
        versions.len() >= 3,
        "samples saw only batch versions {versions:?}: no swap happened under queries"
    );
    let metrics = ::testkit::get(serve, "/metrics").expect("metrics").text();
    assert!(
        ::testkit::metric_sum(&metrics, "lambda_serving_release_slices_total") > 0.0,
        "no release was applied in slices under queries; the scenario did not happen"
    );
    eprintln!("samples spanned batch versions {versions:?}");
    s.shutdown();
}

/// 1% poison pills, a third each of invalid UTF-8, oversized and empty.
fn poisoned(i: usize) -> Vec<u8> {
    match i % 300 {
        17 => [b"\xff\xfe u".as_slice(), i.to_string().as_bytes()].concat(),
        117 => format!("u{i} {}", "x".repeat(stack::MAX_EVENT_BYTES)).into_bytes(),
        217 => Vec::new(),
        _ => event(i),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pills_are_dead_lettered_and_good_counts_exact() {
    // The view is recomputed once both layers have read every record: a
    // cut that overtook the speed layer would have it skip records unread
    // (see `a_running_speed_layer_overtaken_by_a_batch_cut_is_waited_for`),
    // and this scenario checks that each layer dead-letters every bad one.
    let options = Options {
        recompute_on_demand: true,
        ..Options::default()
    };
    let s = Stack::start("sys-poison", options).await;
    let n = scaled(3000);
    s.produce((0..n).map(poisoned).collect()).await;
    let ends = s.topic_ends().await;
    s.wait_served(&ends, Duration::from_secs(120)).await;
    let serve = s.addr(Role::Serve);
    let status = tokio::task::spawn_blocking(move || {
        recompute(serve, None);
        json(serve, "/v1/status").expect("status")
    })
    .await
    .expect("join");
    let last = &status["reconciliation"]["last"];
    assert!(
        last["to_version"] == status["batch"]["version"]
            && last["skipped_partitions"] == serde_json::json!([])
            && last["words"].as_u64() > Some(0),
        "the swap to a view of every record was reconciled: {status}"
    );
    let truth = s.assert_exact().await;
    assert_eq!(truth.bad.len(), n / 100, "1% of the records are bad");

    // Both consuming layers dead-letter every bad record, naming its origin
    // and reason; no good record is dead-lettered.
    let dlq = ::testkit::consume_n(
        &s.kafka,
        &format!("{}.dlq", s.topic),
        2 * truth.bad.len(),
        Duration::from_secs(60),
    )
    .await;
    let mut seen: BTreeMap<(i32, i64), Vec<(String, String)>> = BTreeMap::new();
    for d in &dlq {
        assert_eq!(d.header(headers::ORIGIN_TOPIC), Some(s.topic.as_str()));
        let p: i32 = d
            .header(headers::ORIGIN_PARTITION)
            .expect("partition")
            .parse()
            .expect("int");
        let o: i64 = d
            .header(headers::ORIGIN_OFFSET)
            .expect("offset")
            .parse()
            .expect("int");
        seen.entry((p, o)).or_default().push((
            d.header(headers::LAYER).expect("layer").to_owned(),
            d.header(headers::REASON).expect("reason").to_owned(),
        ));
    }
    let want: BTreeMap<(i32, i64), &str> = truth.bad.iter().map(|&(p, o, r)| ((p, o), r)).collect();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "dead-lettered records are exactly the bad ones"
    );
    for (origin, entries) in &seen {
        let mut layers: Vec<&str> = entries.iter().map(|(l, _)| l.as_str()).collect();
        layers.sort_unstable();
        assert_eq!(layers, ["batch", "speed"], "{origin:?}: {entries:?}");
        assert!(
            entries.iter().all(|(_, r)| r == want[origin]),
            "{origin:?}: {entries:?}"
        );
    }
    for (role, family) in [
        (Role::Batch, "lambda_dead_letters_total"),
        (Role::Speed, "lambda_dead_letters_total"),
    ] {
        let m = ::testkit::get(s.addr(role), "/metrics")
            .expect("metrics")
            .text();
        assert_eq!(
            ::testkit::metric_sum(&m, family),
            truth.bad.len() as f64,
            "{family}"
        );
    }
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_writes_keeps_reads_and_loses_nothing() {
    let mount_point = std::env::temp_dir().join(::testkit::unique("lambda-fs"));
    let fs = ::testkit::Tmpfs::mount(mount_point.clone(), "512k");
    let options = Options {
        batch_data_dir: Some(mount_point.join("batch")),
        ..Options::default()
    };
    let s = Stack::start("sys-disk", options).await;
    let batch = s.addr(Role::Batch);
    let serve = s.addr(Role::Serve);
    // Each event takes about 55 bytes of master log (30 of text, 24 of record
    // header), so 16,000 of them need about twice the 512 KiB disk: the log
    // itself must run out of space, whenever the views' writes happen to
    // land. (With 8,000, a view written after ingestion could take the last
    // space first, and the log never saw an error.)
    let n = scaled(16_000);
    let producer = s.produce_in_background(events(0..n), 500, Duration::from_millis(50));
    until(
        "the batch layer's disk to fill up",
        Duration::from_secs(120),
        move || {
            let m = ::testkit::get(batch, "/metrics").ok()?.text();
            (::testkit::metric_sum(&m, "lambda_batch_log_write_errors_total") > 0.0).then_some(())
        },
    )
    .await;
    eprintln!("batch: disk full");
    // The stalled write surfaces: not ready, degraded, with the reason.
    until(
        "the batch layer's readiness to name the failing master-log write",
        Duration::from_secs(30),
        move || {
            let r = ::testkit::get(batch, "/readyz").ok()?;
            (r.status == 503 && r.text().contains("cannot write the master log")).then_some(())
        },
    )
    .await;
    let health = ::testkit::get(batch, "/healthz").expect("healthz");
    assert_eq!(health.status, 200, "alive while degraded");
    assert!(health.text().contains("degraded"), "{}", health.text());
    // Reads keep working: the batch layer publishes its last view, the
    // serving layer answers (from its own copy and the speed layer's counts).
    let latest = ::testkit::get(batch, "/views/latest").expect("manifest");
    assert_eq!(latest.status, 200, "{}", latest.text());
    let a = json(serve, "/v1/words/w1").expect("serving answers while the batch disk is full");
    assert!(a["count"].as_u64().expect("count") > 0);
    producer.await.expect("producer");
    tokio::time::sleep(Duration::from_secs(1)).await;

    fs.resize("64m");
    eprintln!("batch: space is back");
    until(
        "the batch layer to be ready again",
        Duration::from_secs(60),
        move || (::testkit::get(batch, "/readyz").ok()?.status == 200).then_some(()),
    )
    .await;
    s.assert_exact().await;
    // The serving layer's answers were exact, but the speed layer may be
    // covering the tail; now the batch layer's own log must hold every record
    // once (it retries with a backoff of up to 5 s).
    let ingested = move || {
        let m = ::testkit::get(batch, "/metrics").ok()?.text();
        Some(::testkit::metric_sum(
            &m,
            "lambda_batch_records_ingested_total",
        ))
    };
    until(
        "the batch layer to ingest every record",
        Duration::from_secs(60),
        move || ingested().filter(|&got| got >= n as f64).map(drop),
    )
    .await;
    assert_eq!(
        ingested(),
        Some(n as f64),
        "every record reached the master log once"
    );
    // And a view recomputed from that log counts exactly the events below its cut.
    let ok = tokio::task::spawn_blocking(move || admin_recompute(serve))
        .await
        .expect("join");
    assert!(ok, "admin recompute failed:\n{}", s.logs());
    let manifest = json(batch, "/views/latest").expect("manifest");
    let cut = cut_of(&manifest["header"]["cut"]);
    let (_, records) = s.topic_records().await;
    let below = records
        .iter()
        .filter(|r| r.offset < cut.get(r.partition))
        .count();
    assert!(below > 0, "the recomputed view covers nothing: cut {cut}");
    assert_eq!(
        manifest["header"]["events"].as_u64(),
        Some(below as u64),
        "the view's events below its cut {cut}"
    );
    s.shutdown();
    drop(fs);
}
