//! `lambda replay`: reprocessing the Kappa way. A speed layer in the Kappa
//! architecture (no batch layer: every event from offset 0, no bucket ever
//! expired) reads the events topic from its start into a fresh store and
//! its own realtime topic, printing its progress. Once it has caught up
//! with the batch view it is compared with (`--compare-with`), it stops,
//! counts its store's buckets below that view's cut (the cut is
//! bucket-aligned, so those are exactly the events the view covers), and
//! reports whether every word agrees. Then it runs on as a Kappa speed
//! layer (a serving layer started with `--architecture kappa` and its
//! `--realtime-topic` answers from it), or exits (`--exit-after-check`:
//! status 0 when the two agree).

use anyhow::{anyhow, bail, Context};
use clap::Args;
use common::config::{env, Architecture};
use common::shutdown::CancellationToken;
use lambda_core::lineage::differences;
use lambda_core::view::{verify_and_decode, BatchView, Manifest, WordCount};
use lambda_core::window::{all_time_counts, Key};
use lambda_core::{BucketSize, Cut, Positions};
use speed_layer::config::SpeedArgs;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The replaying speed layer's flags. Give it its own `--data-dir` and
    /// `--realtime-topic`: it must not share a live speed layer's.
    #[command(flatten)]
    pub speed: SpeedArgs,

    /// The batch layer (`http://host:port`) whose newest view the replay is
    /// compared with once it has caught up.
    #[arg(long, env = env::COMPARE_WITH)]
    pub compare_with: Option<String>,

    /// Exit once caught up and compared (status 0 when every word agrees)
    /// instead of running on as a Kappa speed layer.
    #[arg(long, env = env::EXIT_AFTER_CHECK)]
    pub exit_after_check: bool,
}

/// The consumer group a replay reports its positions under (the live speed
/// layer's is `lambda-speed`).
const REPLAY_GROUP: &str = "lambda-replay";

/// The realtime topic of a live Lambda deployment (the flag's default): a
/// replay publishing there would mix its counts into the live ones.
const LIVE_REALTIME_TOPIC: &str = "lambda.realtime";

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let mut speed = args.speed.clone();
    if speed.batch_url.is_some() {
        bail!("invalid --batch-url: a replay has no batch layer to follow (use --compare-with to check against one)");
    }
    if speed.kafka.realtime_topic == LIVE_REALTIME_TOPIC {
        bail!("invalid --realtime-topic: a replay publishes to its own (e.g. {LIVE_REALTIME_TOPIC}.replay), never the live `{LIVE_REALTIME_TOPIC}`");
    }
    speed.architecture = Architecture::Kappa;
    speed.group = REPLAY_GROUP.to_owned();
    speed.validate()?;
    super::runtime()?.block_on(async move {
        let token = common::shutdown::on_signals();
        let view = match &args.compare_with {
            Some(url) => Some(fetch_view(url).await?),
            None => None,
        };
        let target = catch_up_target(&speed, view.as_ref()).await?;
        let replay = token.child_token();
        let running = speed_layer::start(speed.clone(), replay.clone()).await?;
        eprintln!(
            "replay: reading `{}` from offset 0 into {} and `{}`",
            speed.kafka.topic,
            speed.node.data_dir.display(),
            speed.kafka.realtime_topic
        );
        match follow_progress(running.http_addr, &target, &token).await {
            Ok(true) => {}
            stopped => {
                // Stopped by the user, or the speed layer stopped answering:
                // its own failure, if it failed, is the reason to report.
                replay.cancel();
                running.wait().await?;
                return stopped.map(|_| ());
            }
        }
        let Some(view) = view else {
            println!("replay: caught up with {target}; nothing to compare with");
            return run_on(args.exit_after_check, token, running, replay).await;
        };
        // The store is the speed layer's while it runs: stop it to read.
        replay.cancel();
        running.wait().await?;
        let data_dir = speed.node.data_dir.clone();
        let (cut, size) = (view.header.cut.clone(), speed.stream.bucket_size);
        let mut counts =
            tokio::task::spawn_blocking(move || counts_below(&data_dir, &cut, size)).await??;
        // Windowed counts compare where the view keeps them (its retention).
        if let Some(windows) = &view.header.windows {
            windows.retain(&mut counts);
        }
        let (differing, examples) =
            differences(view.words(), &counts, ("batch view", "replay"), 10);
        if differing == 0 {
            println!(
                "replay: agrees with batch view v{} at {}: {} words, {} occurrences",
                view.header.version,
                view.header.cut,
                view.header.distinct_words,
                view.header.total_words
            );
        } else {
            println!(
                "replay: DIFFERS from batch view v{} at {} in {differing} words, e.g.:\n  {}",
                view.header.version,
                view.header.cut,
                examples.join("\n  ")
            );
        }
        if args.exit_after_check {
            return match differing {
                0 => Ok(()),
                n => Err(anyhow!("the replay and the batch view differ in {n} words")),
            };
        }
        // It resumes from its checkpoint.
        let replay = token.child_token();
        let running = speed_layer::start(speed, replay.clone()).await?;
        run_on(false, token, running, replay).await
    })
}

/// Runs the replay on as a Kappa speed layer until ctrl-c, or stops it now.
async fn run_on(
    exit: bool,
    token: CancellationToken,
    running: speed_layer::RunningSpeed,
    replay: CancellationToken,
) -> anyhow::Result<()> {
    if exit {
        replay.cancel();
    } else {
        eprintln!("replay: running on as a Kappa speed layer (ctrl-c to stop)");
        token.cancelled().await;
    }
    running.wait().await?;
    Ok(())
}

/// Where the replay must get to: the batch view's cut (to be compared at
/// it) and the topic's end when the replay started.
async fn catch_up_target(speed: &SpeedArgs, view: Option<&BatchView>) -> anyhow::Result<Positions> {
    let (kafka, topic) = (speed.kafka.connection(), speed.kafka.topic.clone());
    let ends = tokio::task::spawn_blocking(move || -> anyhow::Result<Positions> {
        common::kafka::topic_partitions(&kafka, &topic, Duration::from_secs(30))
            .with_context(|| format!("cannot find topic `{topic}`"))?;
        let client: rdkafka::consumer::BaseConsumer =
            common::kafka::client_config(&kafka).create()?;
        common::kafka::topic_ends(&client, &topic, Duration::from_secs(30)).map_err(|e| anyhow!(e))
    })
    .await??;
    let cut = view.map(|v| v.header.cut.clone()).unwrap_or_default();
    Ok(ends
        .iter()
        .map(|(p, end)| (p, end.max(cut.get(p))))
        .collect())
}

/// Prints progress every second until the replay's positions reach
/// `target` (true) or the user stops it (false).
async fn follow_progress(
    addr: std::net::SocketAddr,
    target: &Positions,
    token: &CancellationToken,
) -> anyhow::Result<bool> {
    let total: i64 = target.iter().map(|(_, o)| o).sum();
    let started = Instant::now();
    loop {
        let positions = tokio::task::spawn_blocking(move || speed_positions(addr)).await??;
        let done: i64 = target
            .iter()
            .map(|(p, end)| positions.get(p).min(end))
            .sum();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        eprintln!(
            "replay: {done} of {total} records ({:.0} %), {rate:.0} records/s",
            100.0 * done as f64 / total.max(1) as f64
        );
        if done >= total {
            return Ok(true);
        }
        let tick = tokio::time::sleep(Duration::from_secs(1));
        if common::shutdown::until_cancelled(token, tick)
            .await
            .is_none()
        {
            return Ok(false);
        }
    }
}

/// The replaying speed layer's checkpointed positions (`GET /status`).
fn speed_positions(addr: std::net::SocketAddr) -> anyhow::Result<Positions> {
    let response = common::http::get(addr, "/status").context("the replay's status")?;
    let status: serde_json::Value = serde_json::from_slice(&response.body)?;
    Ok(serde_json::from_value(status["positions"].clone())?)
}

/// The newest view of the batch layer at `url`, verified.
async fn fetch_view(url: &str) -> anyhow::Result<BatchView> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let addr =
            common::http::resolve(&url).with_context(|| format!("--compare-with `{url}`"))?;
        let body = |path: &str| -> anyhow::Result<Vec<u8>> {
            let r = common::http::get(addr, path)
                .with_context(|| format!("cannot reach the batch layer at {url}"))?;
            if r.status != 200 {
                bail!(
                    "the batch layer at {url} answered {} to {path}: {}",
                    r.status,
                    r.text()
                );
            }
            Ok(r.body)
        };
        let manifest: Manifest = serde_json::from_slice(&body("/views/latest")?)?;
        let bytes = body(&format!("/views/{}", manifest.version))?;
        Ok(verify_and_decode(&manifest, &bytes)?)
    })
    .await?
}

/// Per key, the replay's counts of the events below `cut` (every bucket
/// below it: the cut is bucket-aligned) as a batch view holds them: all-time
/// counts derived from the windowed ones (see `lambda_core::window`), the
/// windowed ones, and no count of events without a timestamp apart.
fn counts_below(data_dir: &Path, cut: &Cut, size: BucketSize) -> anyhow::Result<Vec<WordCount>> {
    let store = realtime_store::RealtimeStore::open(&data_dir.join("realtime"))
        .context("cannot open the replay's realtime store")?;
    let below: Vec<_> = store
        .load_counts()?
        .into_iter()
        .filter(|(key, _)| !cut.is_realtime_bucket(size, key.bucket.partition, key.bucket.bucket))
        .collect();
    let mut counts: BTreeMap<Box<str>, u64> = BTreeMap::new();
    for (key, count) in below.iter().filter(|(key, _)| !Key::is_word(&key.word)) {
        if !matches!(Key::parse(&key.word), Some(Key::Untimed(_))) {
            *counts.entry(key.word.clone()).or_insert(0) += count;
        }
    }
    for (key, count) in all_time_counts(below) {
        *counts.entry(key.word).or_insert(0) += count;
    }
    Ok(counts
        .into_iter()
        .filter(|&(_, c)| c > 0)
        .map(|(w, c)| (w.as_ref().into(), c))
        .collect())
}
