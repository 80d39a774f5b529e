//! `lambda speed` configuration.

use clap::Args;
use common::config::{
    env, parse_duration, ConfigError, KafkaArgs, NodeArgs, RealtimeStoreArgs, StreamArgs,
};
use std::net::SocketAddr;
use std::time::Duration;

/// The records of a micro-batch, at most. A live stream's micro-batches
/// close when the consumer has nothing more buffered, so they stay far
/// smaller; this bounds those of a speed layer catching up (a restart, a
/// backlog). Larger bounds share each micro-batch's fixed cost (its
/// checkpoint's fsync, its publication's two acknowledged rounds, the
/// pipeline's turn) among more records: at 100,000 the speed layer caught
/// up at 0.79-0.86x a plain consumer against 0.55-0.77x at 20,000 and
/// 0.63-0.70x at 50,000 (`benches/throughput`, 500,000 events). One
/// micro-batch is one release at every serving replica, which applies a
/// large one in slices so that queries go in between (see
/// `serving_layer::replica::slices`).
pub const DEFAULT_MICRO_BATCH_RECORDS: usize = 100_000;

#[derive(Debug, Clone, Args)]
pub struct SpeedArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub store: RealtimeStoreArgs,

    /// Address of the speed layer's HTTP server (status, metrics).
    #[arg(long, env = env::HTTP_ADDR, default_value = "127.0.0.1:7072")]
    pub http_addr: SocketAddr,

    /// The batch layer's URL (`http://host:port`), whose view manifest gives
    /// the cut below which buckets expire; several batch instances
    /// comma-separated (any answers; the next is tried when one does not).
    /// Without it the speed layer counts everything from offset 0 and never
    /// expires.
    #[arg(long, env = env::BATCH_URL)]
    pub batch_url: Option<String>,

    /// Read the batch cut from the shared store the batch instances publish
    /// their views to (`file:///path`, `s3://bucket/prefix`), instead of
    /// through `--batch-url`.
    #[arg(long, env = env::STORE_URL)]
    pub store_url: Option<String>,

    /// `lambda` (with a batch layer) or `kappa` (none: every event counted
    /// from offset 0, never expired; `--batch-url` must be unset).
    #[arg(long, env = env::ARCHITECTURE, default_value = "lambda")]
    pub architecture: common::config::Architecture,

    /// How often to check the batch layer for a new cut.
    #[arg(long, env = env::CUT_POLL_INTERVAL, default_value = "1s", value_parser = parse_duration)]
    pub cut_poll_interval: Duration,

    /// A micro-batch closes at this many records …
    #[arg(long, env = env::MICRO_BATCH_RECORDS, default_value_t = DEFAULT_MICRO_BATCH_RECORDS)]
    pub micro_batch_records: usize,

    /// … or when its consumer has no more records buffered, after waiting
    /// at most this long from its first record for more. The default, zero,
    /// makes batching adaptive: one event at a time when idle (lowest
    /// latency), large batches under load (records pile up while the
    /// previous batch is checkpointed). A batch of events older than 100 ms
    /// (catching up) waits up to 50 ms for more whatever this says.
    #[arg(long, env = env::MICRO_BATCH_WAIT, default_value = "0ms", value_parser = parse_duration)]
    pub micro_batch_wait: Duration,

    /// Share the events partitions with the other speed layers started with
    /// this flag (same brokers and topic, each with its own data directory):
    /// Kafka's consumer group `lambda-speed` assigns them, and each instance
    /// resumes a partition from its own checkpoint or the batch cut. Without
    /// it this instance reads every partition: run exactly one.
    #[arg(long, env = env::SHARE_PARTITIONS)]
    pub share_partitions: bool,

    /// The consumer group the layer commits its positions under, for
    /// monitoring tools only (it resumes from its checkpoint): `lambda-speed`,
    /// or `lambda-replay` for `lambda replay`, so a replay does not
    /// overwrite the live layer's reported lag.
    #[arg(skip = crate::stream::GROUP.to_owned())]
    pub group: String,
}

impl SpeedArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.stream.validate()?;
        self.node.validate()?;
        if self.micro_batch_records == 0 || self.micro_batch_records > 1_000_000 {
            return Err(ConfigError {
                flag: "micro-batch-records",
                message: "must be between 1 and 1000000".into(),
            });
        }
        self.architecture
            .check_batch_sources(self.batch_url.as_deref(), self.store_url.as_deref())?;
        self.batch_bases()?;
        Ok(())
    }

    /// `--batch-url`'s instances (comma-separated), checked.
    pub fn batch_bases(&self) -> Result<Option<common::http::Bases>, ConfigError> {
        common::config::batch_bases(self.batch_url.as_deref())
    }
}
