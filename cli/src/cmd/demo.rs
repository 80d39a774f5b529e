//! `lambda demo`: the embedded broker and the layers in one process, with a
//! sample producer, so the system runs with one command and no Kafka install.

use super::produce::Pacer;
use anyhow::Context;
use batch_layer::config::BatchArgs;
use clap::Args;
use common::broker::{BrokerStorage, EmbeddedBroker};
use common::config::{env, Architecture, KafkaArgs, NodeArgs, RealtimeStoreArgs, StreamArgs};
use common::kafka::{ensure_layer_topics, producer_config, send_all};
use common::shutdown::CancellationToken;
use lambda_core::BucketSize;
use serving_layer::config::ServeArgs;
use speed_layer::config::SpeedArgs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The demo's realtime bucket size: small, so that at the sample's modest
/// rate each recompute visibly moves the cut and the hand-off from speed to
/// batch shows (the other roles default to [`BucketSize::DEFAULT`]).
const DEMO_BUCKET_SIZE: &str = "64";

/// The built-in sample corpus, streamed line by line.
const CORPUS: &str = include_str!("../corpus.txt");

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the broker's log (SQLite) and every layer's state live; running
    /// again on the same directory resumes.
    #[arg(long, env = env::DATA_DIR, default_value = "./lambda-demo")]
    pub data_dir: PathBuf,
    /// The serving layer's address: the HTTP API and the dashboard.
    #[arg(long, env = env::HTTP_ADDR, default_value = "127.0.0.1:7070")]
    pub http_addr: SocketAddr,
    /// The embedded broker's listen (and advertised) address.
    #[arg(long, env = env::BROKER_ADDR, default_value = "127.0.0.1:9092")]
    pub broker_addr: SocketAddr,
    /// The batch layer's HTTP address.
    #[arg(long, env = env::BATCH_ADDR, default_value = "127.0.0.1:7071")]
    pub batch_addr: SocketAddr,
    /// The speed layer's HTTP address.
    #[arg(long, env = env::SPEED_ADDR, default_value = "127.0.0.1:7072")]
    pub speed_addr: SocketAddr,
    /// Partitions of the events topic.
    #[arg(long, env = env::PARTITIONS, default_value_t = 4)]
    pub partitions: i32,
    /// Sample events per second.
    #[arg(long, env = env::RATE, default_value_t = 20)]
    pub rate: u32,
    /// Do not run the sample producer.
    #[arg(long, env = env::NO_SAMPLE)]
    pub no_sample: bool,
    /// Bearer token for admin endpoints (recompute).
    #[arg(long, env = env::ADMIN_TOKEN, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Time between batch recomputes.
    #[arg(long, env = env::RECOMPUTE_INTERVAL, default_value = "10s", value_parser = common::config::parse_duration)]
    pub recompute_interval: Duration,
    /// How recomputes build a view: incremental or full.
    #[arg(long, env = env::RECOMPUTE_MODE, default_value = "incremental")]
    pub recompute_mode: lambda_core::lineage::RecomputeMode,
    /// A full recompute, checked against the incremental chain, at least
    /// this often (short in the demo, so both roads show; `0s`: never).
    #[arg(long, env = env::FULL_RECOMPUTE_EVERY, default_value = "2m", value_parser = common::config::parse_duration)]
    pub full_recompute_every: Duration,
    /// `lambda` (batch, speed and serving layers) or `kappa` (no batch
    /// layer: the speed layer counts every event from offset 0, the serving
    /// layer answers from it alone).
    #[arg(long, env = env::ARCHITECTURE, default_value = "lambda")]
    pub architecture: Architecture,
    /// Realtime bucket size B in offsets (batch cuts are aligned to it). The
    /// demo's small default shows the hand-off at the sample's rate; under
    /// heavy load larger buckets mean fewer realtime counts to hold, swap
    /// and expire. Do not change it on existing data.
    #[arg(long, env = env::BUCKET_SIZE, default_value = DEMO_BUCKET_SIZE)]
    pub bucket_size: BucketSize,
    /// The speed layer's micro-batches, at most this many records (see
    /// `lambda speed --help`): what its catch-up after a backlog trades
    /// against the size of each release the serving layer applies.
    #[arg(long, env = env::MICRO_BATCH_RECORDS, default_value_t = speed_layer::config::DEFAULT_MICRO_BATCH_RECORDS)]
    pub micro_batch_records: usize,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0,
        "invalid --rate: must be at least 1 event per second"
    );
    super::runtime()?.block_on(async move {
        let token = common::shutdown::on_signals();
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        let db = args.data_dir.join("kafka").join("tansu.db");
        let broker = EmbeddedBroker::start_on(args.broker_addr, BrokerStorage::Sqlite(db))
            .await
            .with_context(|| format!("cannot start the embedded broker on {}", args.broker_addr))?;
        let brokers = broker.bootstrap();
        let kafka = KafkaArgs {
            brokers: brokers.clone(),
            topic: "events".into(),
            dead_letter_topic: "lambda.dead-letter".into(),
            // Kappa's counts never expire and Lambda's do: the two must not
            // share a realtime stream or a layer's state (one data directory
            // can hold a run of each).
            realtime_topic: match args.architecture {
                Architecture::Lambda => "lambda.realtime".into(),
                Architecture::Kappa => "lambda.realtime.kappa".into(),
            },
            partitions: args.partitions,
            client: Default::default(),
        };
        ensure_layer_topics(&kafka)
            .await
            .with_context(|| format!("cannot create the topics on {brokers}"))?;
        let stream = StreamArgs::with_bucket_size(args.bucket_size);
        let store = RealtimeStoreArgs {
            realtime_compact_bytes: common::config::DEFAULT_REALTIME_COMPACT_BYTES,
        };
        let node = |role: &str| NodeArgs {
            data_dir: match args.architecture {
                Architecture::Lambda => args.data_dir.join(role),
                Architecture::Kappa => args.data_dir.join("kappa").join(role),
            },
            shutdown_grace: Duration::from_secs(5),
        };
        let batch = match args.architecture {
            Architecture::Kappa => None,
            Architecture::Lambda => Some(
                batch_layer::start(
                    BatchArgs {
                        kafka: kafka.clone(),
                        stream: stream.clone(),
                        node: node("batch"),
                        http_addr: args.batch_addr,
                        admin_token: args.admin_token.clone(),
                        recompute_interval: args.recompute_interval,
                        recompute_mode: args.recompute_mode,
                        full_recompute_every: args.full_recompute_every,
                        keep_views: 3,
                        segment_bytes: 64 << 20,
                        fsync: Default::default(),
                        repair: false,
                        threads: 0,
                        store_url: None,
                        share_partitions: false,
                        advertised_url: None,
                        chunk_offsets: batch_layer::config::DEFAULT_CHUNK_OFFSETS,
                        fault_recompute_pause: None,
                    },
                    token.clone(),
                )
                .await
                .context("cannot start the batch layer")?,
            ),
        };
        let batch_url = batch.as_ref().map(|b| b.http_addr.to_string());
        let speed = speed_layer::start(
            SpeedArgs {
                kafka: kafka.clone(),
                stream: stream.clone(),
                node: node("speed"),
                store: store.clone(),
                http_addr: args.speed_addr,
                batch_url: batch_url.clone(),
                store_url: None,
                architecture: args.architecture,
                cut_poll_interval: Duration::from_secs(1),
                micro_batch_records: args.micro_batch_records,
                micro_batch_wait: Duration::ZERO,
                group: speed_layer::stream::GROUP.to_owned(),
                share_partitions: false,
            },
            token.clone(),
        )
        .await
        .context("cannot start the speed layer")?;
        let serving = serving_layer::start(
            ServeArgs {
                kafka: kafka.clone(),
                stream,
                node: node("serving"),
                store,
                http_addr: args.http_addr,
                batch_url,
                store_url: None,
                architecture: args.architecture,
                admin_token: args.admin_token.clone(),
                view_poll_interval: Duration::from_millis(500),
                stale_after: Duration::from_secs(5),
                max_concurrency: 1024,
                request_timeout: Duration::from_secs(10),
                max_body_bytes: 64 * 1024,
                apply_slice_counts: serving_layer::replica::SLICE_COUNTS,
            },
            token.clone(),
        )
        .await
        .context("cannot start the serving layer")?;

        println!(
            "Lambda demo running, {} architecture (ctrl-c to stop).",
            args.architecture
        );
        println!(
            "  dashboard:       http://{}/   (API: /v1/words/{{word}}, /v1/top?k=10, /v1/status)",
            serving.http_addr
        );
        println!(
            "  Kafka bootstrap: {brokers}   (produce to topic `events` with any Kafka client)"
        );
        match &batch {
            Some(batch) => println!(
                "  batch layer:     http://{}/views/latest   /metrics",
                batch.http_addr
            ),
            None => println!("  batch layer:     none (kappa: reprocess with `lambda replay`)"),
        }
        println!(
            "  speed layer:     http://{}/status         /metrics",
            speed.http_addr
        );
        println!("  data directory:  {}", args.data_dir.display());

        let producer = (!args.no_sample).then(|| {
            let (kafka, token, rate) = (kafka.connection(), token.clone(), args.rate);
            tokio::spawn(sample_producer(kafka, rate, token))
        });
        token.cancelled().await;
        if let Some(p) = producer {
            let _ = p.await;
        }
        let serving = serving.wait().await;
        let speed = speed.wait().await;
        let batch = match batch {
            Some(batch) => batch.wait().await,
            None => Ok(()),
        };
        broker.stop().await;
        println!("Lambda demo stopped.");
        // A layer that failed makes the demo exit non-zero with its reason.
        serving?;
        speed?;
        batch?;
        Ok(())
    })
}

/// Streams the corpus, one line per event, at about `rate` events per second,
/// looping until cancelled.
async fn sample_producer(kafka: common::client::Connection, rate: u32, token: CancellationToken) {
    let producer: rdkafka::producer::FutureProducer = match producer_config(&kafka).create() {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "Cannot create the sample producer.");
            return;
        }
    };
    let mut lines = CORPUS.lines().filter(|l| !l.trim().is_empty()).cycle();
    let mut pacer = Pacer::new(Some(rate));
    loop {
        let records: Vec<(Option<String>, Vec<u8>)> = (0..pacer.chunk())
            .filter_map(|_| lines.next())
            .map(|l| (None, l.as_bytes().to_vec()))
            .collect();
        if common::shutdown::until_cancelled(&token, pacer.wait(records.len()))
            .await
            .is_none()
        {
            return;
        }
        for result in send_all(&producer, "events", &records).await {
            if let Err(error) = result {
                tracing::warn!(%error, "Sample event not delivered.");
            }
        }
    }
}
