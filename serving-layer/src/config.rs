//! `lambda serve` configuration.

use clap::Args;
use common::config::{
    env, parse_duration, ConfigError, KafkaArgs, NodeArgs, RealtimeStoreArgs, StreamArgs,
};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub store: RealtimeStoreArgs,

    /// Address of the public HTTP API and dashboard.
    #[arg(long, env = env::HTTP_ADDR, default_value = "127.0.0.1:7070")]
    pub http_addr: SocketAddr,

    /// The batch layer's URL (`http://host:port`) to pull views from and to
    /// forward recomputes to; with batch instances sharing the partitions,
    /// any or several of them, comma-separated (each serves the same views;
    /// the next is tried when one does not answer). Without it, answers
    /// come from realtime counts alone.
    #[arg(long, env = env::BATCH_URL)]
    pub batch_url: Option<String>,

    /// Read batch views from the shared store the batch instances publish
    /// them to (`file:///path`, `s3://bucket/prefix` with the usual `AWS_*`
    /// variables), instead of through `--batch-url` (which then only
    /// forwards recomputes; without it they go to a live batch instance
    /// listed in the store).
    #[arg(long, env = env::STORE_URL)]
    pub store_url: Option<String>,

    /// `lambda` (with a batch layer) or `kappa` (none: every event counted
    /// from offset 0, never expired; `--batch-url` must be unset).
    #[arg(long, env = env::ARCHITECTURE, default_value = "lambda")]
    pub architecture: common::config::Architecture,

    /// Bearer token for `POST /v1/admin/recompute`; unset disables the
    /// endpoint. Also sent to the batch layer when forwarding.
    #[arg(long, env = env::ADMIN_TOKEN, hide_env_values = true)]
    pub admin_token: Option<String>,

    /// How often to ask the batch layer for a newer view.
    #[arg(long, env = env::VIEW_POLL_INTERVAL, default_value = "1s", value_parser = parse_duration)]
    pub view_poll_interval: Duration,

    /// A layer whose data is older than this is reported stale.
    #[arg(long, env = env::STALE_AFTER, default_value = "5s", value_parser = parse_duration)]
    pub stale_after: Duration,

    /// Requests handled at once; beyond it requests are shed with 503.
    #[arg(long, env = env::MAX_CONCURRENCY, default_value_t = 1024)]
    pub max_concurrency: usize,

    /// The longest a request may take before it is answered with 503.
    #[arg(long, env = env::REQUEST_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The largest request body accepted (413 beyond).
    #[arg(long, env = env::MAX_BODY_BYTES, default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// A release of the speed layer's counts larger than this (one micro-
    /// batch of a speed layer catching up) is applied in slices of about
    /// this many counts while requests come in, each exact at a position
    /// of its own, so that queries go in between (see
    /// `serving_layer::replica::slices`); without requests, in one piece,
    /// which costs less.
    #[arg(long, env = env::APPLY_SLICE_COUNTS, default_value_t = crate::replica::SLICE_COUNTS)]
    pub apply_slice_counts: usize,
}

impl ServeArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.stream.validate()?;
        self.node.validate()?;
        let bad = |flag, message: &str| {
            Err(ConfigError {
                flag,
                message: message.into(),
            })
        };
        if self.apply_slice_counts == 0 {
            return bad("apply-slice-counts", "must be at least 1");
        }
        if self.max_concurrency == 0 {
            return bad("max-concurrency", "must be at least 1");
        }
        if self.request_timeout.is_zero() {
            return bad("request-timeout", "must be positive");
        }
        if self.view_poll_interval < Duration::from_millis(10) {
            return bad("view-poll-interval", "must be at least 10ms");
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return bad(
                "admin-token",
                "must not be empty (unset it to disable admin endpoints)",
            );
        }
        self.architecture
            .check_batch_sources(self.batch_url.as_deref(), self.store_url.as_deref())?;
        self.batch_bases()?;
        Ok(())
    }

    /// `--batch-url`'s instances, checked.
    pub fn batch_bases(&self) -> Result<Option<common::http::Bases>, ConfigError> {
        common::config::batch_bases(self.batch_url.as_deref())
    }
}
