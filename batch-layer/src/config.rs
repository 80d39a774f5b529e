//! `lambda batch` configuration.

use crate::master_log::{FsyncPolicy, LogOptions};
use clap::Args;
use common::config::{env, parse_duration, ConfigError, KafkaArgs, NodeArgs, StreamArgs};
use lambda_core::lineage::RecomputeMode;
use std::net::SocketAddr;
use std::time::Duration;

/// Offsets per sealed chunk of the master dataset, by default.
pub const DEFAULT_CHUNK_OFFSETS: i64 = 100_000;

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    #[command(flatten)]
    pub node: NodeArgs,

    /// Address of the batch layer's HTTP server (views, recompute, metrics).
    #[arg(long, env = env::HTTP_ADDR, default_value = "127.0.0.1:7071")]
    pub http_addr: SocketAddr,

    /// Bearer token required by `POST /recompute`; unset disables the
    /// endpoint (as in every role). Serving layers forward recomputes with it.
    #[arg(long, env = env::ADMIN_TOKEN, hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Time between recomputes (e.g. 30s, 5m).
    #[arg(long, env = env::RECOMPUTE_INTERVAL, default_value = "30s", value_parser = parse_duration)]
    pub recompute_interval: Duration,

    /// How the periodic recompute builds a view: `incremental` (the previous
    /// view plus the events since its cut; its cost follows the new events)
    /// or `full` (every event again).
    #[arg(long, env = env::RECOMPUTE_MODE, default_value = "incremental")]
    pub recompute_mode: RecomputeMode,

    /// A full recompute at least this often whatever the mode (e.g. 24h),
    /// checked against the incremental chain; `0s` turns it off.
    #[arg(long, env = env::FULL_RECOMPUTE_EVERY, default_value = "24h", value_parser = parse_duration)]
    pub full_recompute_every: Duration,

    /// How many batch view versions to keep on disk.
    #[arg(long, env = env::KEEP_VIEWS, default_value_t = 3)]
    pub keep_views: usize,

    /// Master-log segment size in bytes before a new segment starts.
    #[arg(long, env = env::SEGMENT_BYTES, default_value_t = 64 << 20)]
    pub segment_bytes: u64,

    /// fsync policy: every-batch (a batch counts as ingested once durable) or never.
    #[arg(long, env = env::FSYNC, default_value = "every-batch")]
    pub fsync: FsyncPolicy,

    /// Quarantine damaged master-log segments (and later ones) instead of
    /// refusing to start; their offsets are ingested again from Kafka.
    #[arg(long, env = env::REPAIR)]
    pub repair: bool,

    /// The shared store the master dataset's sealed chunks go to:
    /// `file:///path` or `s3://bucket/prefix` (with the usual `AWS_*`
    /// variables; `AWS_ENDPOINT_URL` for an S3-compatible store). Default: a
    /// `store/` folder under the data directory.
    #[arg(long, env = env::STORE_URL)]
    pub store_url: Option<String>,

    /// Share the events partitions with the other batch instances started
    /// with this flag (same brokers, topic and `--store-url`, each with its
    /// own data directory): Kafka's consumer group `lambda-batch` assigns
    /// them; each instance ingests and recomputes its own, and publishes
    /// them into the view all instances compose in the store. Without it
    /// this instance owns every partition: run exactly one.
    #[arg(long, env = env::SHARE_PARTITIONS)]
    pub share_partitions: bool,

    /// The URL other batch instances reach this one's HTTP server at (they
    /// forward recomputes to it). Default: `http://` and `--http-addr`, with
    /// the host name (`$HOSTNAME`) for an unspecified address.
    #[arg(long, env = env::ADVERTISED_URL)]
    pub advertised_url: Option<String>,

    /// Offsets per sealed chunk of the master dataset (chunk k of a
    /// partition holds offsets [k × this, (k + 1) × this)). Every instance
    /// sharing a store must use the same.
    #[arg(long, env = env::CHUNK_OFFSETS, default_value_t = DEFAULT_CHUNK_OFFSETS)]
    pub chunk_offsets: i64,

    /// MapReduce threads (0: one per CPU).
    #[arg(long, env = env::THREADS, default_value_t = 0)]
    pub threads: usize,

    /// Fault injection for the reliability suite: sleep this long inside
    /// every recompute, after counting and before publishing, so a test can
    /// kill the process mid-recompute. Hidden; never set in production.
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub fault_recompute_pause: Option<Duration>,
}

impl BatchArgs {
    /// `--store-url`, or the default `file://` URL of `<data-dir>/store`.
    pub fn store_url(&self) -> Result<String, common::store::StoreError> {
        match &self.store_url {
            Some(url) => Ok(url.clone()),
            None => common::store::Store::file_url(&self.node.data_dir.join("store")),
        }
    }

    /// `--advertised-url`, or the default for the address the server is
    /// bound to.
    pub fn advertised_url(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.advertised_url {
            return url.clone();
        }
        if bound.ip().is_unspecified() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "127.0.0.1".to_owned());
            return format!("http://{host}:{}", bound.port());
        }
        format!("http://{bound}")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.stream.validate()?;
        self.node.validate()?;
        if self.chunk_offsets < 1 {
            return Err(ConfigError {
                flag: "chunk-offsets",
                message: "must be at least 1".into(),
            });
        }
        if self.recompute_interval < Duration::from_millis(100) {
            return Err(ConfigError {
                flag: "recompute-interval",
                message: "must be at least 100ms".into(),
            });
        }
        if self.keep_views == 0 {
            return Err(ConfigError {
                flag: "keep-views",
                message: "must keep at least 1 view".into(),
            });
        }
        if self.segment_bytes < 4096 {
            return Err(ConfigError {
                flag: "segment-bytes",
                message: "must be at least 4096".into(),
            });
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError {
                flag: "admin-token",
                message: "must not be empty when set".into(),
            });
        }
        Ok(())
    }

    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            repair: self.repair,
        }
    }
}
