//! Configuration shared by every role: flags (clap derive) that can also be set
//! through `LAMBDA_*` environment variables.
//!
//! Every environment variable name lives in [`env`], so the CLI, the
//! docker-compose file and the docs can be checked against one list.

use clap::Args;
use lambda_core::cut::BucketSize;
use lambda_core::window::{WindowSettings, WindowSize};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The environment variables the `lambda` binary reads, one constant each.
pub mod env {
    pub const BROKERS: &str = "LAMBDA_BROKERS";
    pub const TOPIC: &str = "LAMBDA_TOPIC";
    pub const DEAD_LETTER_TOPIC: &str = "LAMBDA_DEAD_LETTER_TOPIC";
    pub const REALTIME_TOPIC: &str = "LAMBDA_REALTIME_TOPIC";
    pub const PARTITIONS: &str = "LAMBDA_PARTITIONS";
    pub const DATA_DIR: &str = "LAMBDA_DATA_DIR";
    pub const HTTP_ADDR: &str = "LAMBDA_HTTP_ADDR";
    pub const ADMIN_TOKEN: &str = "LAMBDA_ADMIN_TOKEN";
    pub const BUCKET_SIZE: &str = "LAMBDA_BUCKET_SIZE";
    pub const MAX_EVENT_BYTES: &str = "LAMBDA_MAX_EVENT_BYTES";
    pub const WINDOW: &str = "LAMBDA_WINDOW";
    pub const ALLOWED_LATENESS: &str = "LAMBDA_ALLOWED_LATENESS";
    pub const WINDOW_RETENTION: &str = "LAMBDA_WINDOW_RETENTION";
    pub const MAX_FUTURE: &str = "LAMBDA_MAX_FUTURE";
    pub const SHUTDOWN_GRACE: &str = "LAMBDA_SHUTDOWN_GRACE";
    pub const RECOMPUTE_INTERVAL: &str = "LAMBDA_RECOMPUTE_INTERVAL";
    pub const RECOMPUTE_MODE: &str = "LAMBDA_RECOMPUTE_MODE";
    pub const ARCHITECTURE: &str = "LAMBDA_ARCHITECTURE";
    pub const COMPARE_WITH: &str = "LAMBDA_COMPARE_WITH";
    pub const EXIT_AFTER_CHECK: &str = "LAMBDA_EXIT_AFTER_CHECK";
    pub const FULL_RECOMPUTE_EVERY: &str = "LAMBDA_FULL_RECOMPUTE_EVERY";
    pub const KEEP_VIEWS: &str = "LAMBDA_KEEP_VIEWS";
    pub const SEGMENT_BYTES: &str = "LAMBDA_SEGMENT_BYTES";
    pub const FSYNC: &str = "LAMBDA_FSYNC";
    pub const REPAIR: &str = "LAMBDA_REPAIR";
    pub const THREADS: &str = "LAMBDA_THREADS";
    pub const BATCH_URL: &str = "LAMBDA_BATCH_URL";
    pub const ADVERTISED_URL: &str = "LAMBDA_ADVERTISED_URL";
    pub const CUT_POLL_INTERVAL: &str = "LAMBDA_CUT_POLL_INTERVAL";
    pub const MICRO_BATCH_RECORDS: &str = "LAMBDA_MICRO_BATCH_RECORDS";
    pub const MICRO_BATCH_WAIT: &str = "LAMBDA_MICRO_BATCH_WAIT";
    pub const REALTIME_COMPACT_BYTES: &str = "LAMBDA_REALTIME_COMPACT_BYTES";
    pub const BROKER_ADDR: &str = "LAMBDA_BROKER_ADDR";
    pub const BATCH_ADDR: &str = "LAMBDA_BATCH_ADDR";
    pub const SPEED_ADDR: &str = "LAMBDA_SPEED_ADDR";
    pub const RATE: &str = "LAMBDA_RATE";
    pub const NO_SAMPLE: &str = "LAMBDA_NO_SAMPLE";
    pub const VIEW_POLL_INTERVAL: &str = "LAMBDA_VIEW_POLL_INTERVAL";
    pub const STALE_AFTER: &str = "LAMBDA_STALE_AFTER";
    pub const MAX_CONCURRENCY: &str = "LAMBDA_MAX_CONCURRENCY";
    pub const REQUEST_TIMEOUT: &str = "LAMBDA_REQUEST_TIMEOUT";
    pub const MAX_BODY_BYTES: &str = "LAMBDA_MAX_BODY_BYTES";
    pub const APPLY_SLICE_COUNTS: &str = "LAMBDA_APPLY_SLICE_COUNTS";
    pub const DELIVERY_TIMEOUT: &str = "LAMBDA_DELIVERY_TIMEOUT";
    pub const KEY_BY_LINE: &str = "LAMBDA_KEY_BY_LINE";
    pub const BACKDATE: &str = "LAMBDA_BACKDATE";
    pub const SECURITY_PROTOCOL: &str = "LAMBDA_SECURITY_PROTOCOL";
    pub const SSL_CA_LOCATION: &str = "LAMBDA_SSL_CA_LOCATION";
    pub const SSL_CERTIFICATE_LOCATION: &str = "LAMBDA_SSL_CERTIFICATE_LOCATION";
    pub const SSL_KEY_LOCATION: &str = "LAMBDA_SSL_KEY_LOCATION";
    pub const SSL_KEY_PASSWORD: &str = "LAMBDA_SSL_KEY_PASSWORD";
    pub const SASL_MECHANISM: &str = "LAMBDA_SASL_MECHANISM";
    pub const SASL_USERNAME: &str = "LAMBDA_SASL_USERNAME";
    pub const SASL_PASSWORD: &str = "LAMBDA_SASL_PASSWORD";
    pub const COMPRESSION: &str = "LAMBDA_COMPRESSION";
    pub const KAFKA_OPTIONS: &str = "LAMBDA_KAFKA_OPTIONS";
    pub const STORE_URL: &str = "LAMBDA_STORE_URL";
    pub const CHUNK_OFFSETS: &str = "LAMBDA_CHUNK_OFFSETS";
    pub const SHARE_PARTITIONS: &str = "LAMBDA_SHARE_PARTITIONS";

    /// Every variable above.
    pub const ALL: &[&str] = &[
        SHARE_PARTITIONS,
        ADVERTISED_URL,
        BROKERS,
        TOPIC,
        DEAD_LETTER_TOPIC,
        REALTIME_TOPIC,
        PARTITIONS,
        DATA_DIR,
        HTTP_ADDR,
        ADMIN_TOKEN,
        BUCKET_SIZE,
        MAX_EVENT_BYTES,
        WINDOW,
        ALLOWED_LATENESS,
        WINDOW_RETENTION,
        MAX_FUTURE,
        SHUTDOWN_GRACE,
        RECOMPUTE_INTERVAL,
        RECOMPUTE_MODE,
        ARCHITECTURE,
        COMPARE_WITH,
        EXIT_AFTER_CHECK,
        FULL_RECOMPUTE_EVERY,
        KEEP_VIEWS,
        SEGMENT_BYTES,
        FSYNC,
        REPAIR,
        THREADS,
        BATCH_URL,
        CUT_POLL_INTERVAL,
        MICRO_BATCH_RECORDS,
        MICRO_BATCH_WAIT,
        REALTIME_COMPACT_BYTES,
        BROKER_ADDR,
        BATCH_ADDR,
        SPEED_ADDR,
        RATE,
        NO_SAMPLE,
        VIEW_POLL_INTERVAL,
        STALE_AFTER,
        MAX_CONCURRENCY,
        REQUEST_TIMEOUT,
        MAX_BODY_BYTES,
        APPLY_SLICE_COUNTS,
        DELIVERY_TIMEOUT,
        KEY_BY_LINE,
        BACKDATE,
        SECURITY_PROTOCOL,
        SSL_CA_LOCATION,
        SSL_CERTIFICATE_LOCATION,
        SSL_KEY_LOCATION,
        SSL_KEY_PASSWORD,
        SASL_MECHANISM,
        SASL_USERNAME,
        SASL_PASSWORD,
        COMPRESSION,
        KAFKA_OPTIONS,
        STORE_URL,
        CHUNK_OFFSETS,
    ];
}

/// A configuration value that is out of range, naming the flag.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid --{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

/// `--batch-url` of the speed and serving layers: one batch instance's URL,
/// or several comma-separated, each checked.
pub fn batch_bases(batch_url: Option<&str>) -> Result<Option<crate::http::Bases>, ConfigError> {
    batch_url
        .map(crate::http::Bases::parse)
        .transpose()
        .map_err(|e| ConfigError::new("batch-url", e.to_string()))
}

impl ConfigError {
    pub(crate) fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            flag,
            message: message.into(),
        }
    }
}

/// Where the events come from and where the layers write to Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = env::BROKERS, default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// The topic carrying events, one text event per record.
    #[arg(long, env = env::TOPIC, default_value = "events")]
    pub topic: String,

    /// Where records that are not valid events go, with the reason in a header.
    #[arg(long, env = env::DEAD_LETTER_TOPIC, default_value = "lambda.dead-letter")]
    pub dead_letter_topic: String,

    /// Where the speed layer publishes realtime counts for serving layers.
    #[arg(long, env = env::REALTIME_TOPIC, default_value = "lambda.realtime")]
    pub realtime_topic: String,

    /// Partitions of the events topic when this process creates it.
    #[arg(long, env = env::PARTITIONS, default_value_t = 4)]
    pub partitions: i32,

    /// TLS, SASL, compression and pass-through client settings.
    #[command(flatten)]
    pub client: crate::client::ClientArgs,
}

impl KafkaArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(ConfigError::new(
                "brokers",
                "expected comma-separated host:port pairs",
            ));
        }
        for (flag, topic) in [
            ("topic", &self.topic),
            ("dead-letter-topic", &self.dead_letter_topic),
            ("realtime-topic", &self.realtime_topic),
        ] {
            validate_topic_name(topic).map_err(|m| ConfigError::new(flag, m))?;
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(ConfigError::new("partitions", "must be between 1 and 1024"));
        }
        self.client.validate()
    }

    /// What every Kafka client of the role connects with.
    pub fn connection(&self) -> crate::client::Connection {
        self.client.connection(&self.brokers)
    }
}

/// Kafka's own topic-name rule: 1–249 characters of `[a-zA-Z0-9._-]`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        ))
    }
}

/// How events become counts; every layer must agree on these.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Realtime bucket size B in offsets; batch cuts are aligned to it.
    /// All layers must use the same value.
    #[arg(long, env = env::BUCKET_SIZE, default_value_t = BucketSize::DEFAULT)]
    pub bucket_size: BucketSize,

    /// The largest event payload in bytes; larger records are dead-lettered.
    #[arg(long, env = env::MAX_EVENT_BYTES, default_value_t = lambda_core::event::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,

    /// The event-time window size (`1m`, `30s`, `1h`). All layers must use
    /// the same value.
    #[arg(long, env = env::WINDOW, default_value = "1m")]
    pub window: WindowSize,

    /// How far behind the newest timestamp of a partition its watermark
    /// trails: an event whose window ended before the watermark is late
    /// (and still counted).
    #[arg(long, env = env::ALLOWED_LATENESS, default_value = "1m", value_parser = parse_duration)]
    pub allowed_lateness: Duration,

    /// How long per-window counts are kept, back from the newest timestamp
    /// (all-time counts are kept forever).
    #[arg(long, env = env::WINDOW_RETENTION, default_value = "7d", value_parser = parse_duration)]
    pub window_retention: Duration,

    /// A timestamp further than this ahead of the reading layer's clock is
    /// counted but does not move the watermark.
    #[arg(long, env = env::MAX_FUTURE, default_value = "5m", value_parser = parse_duration)]
    pub max_future: Duration,
}

impl StreamArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_event_bytes == 0 {
            return Err(ConfigError::new("max-event-bytes", "must be at least 1"));
        }
        Ok(())
    }

    /// The defaults, with another bucket size (what `lambda demo` runs).
    pub fn with_bucket_size(bucket_size: BucketSize) -> Self {
        let w = WindowSettings::default();
        Self {
            bucket_size,
            max_event_bytes: lambda_core::event::DEFAULT_MAX_EVENT_BYTES,
            window: w.size,
            allowed_lateness: Duration::from_millis(w.allowed_lateness_ms),
            window_retention: Duration::from_millis(w.retention_ms),
            max_future: Duration::from_millis(w.max_future_ms),
        }
    }

    /// The event-time settings.
    pub fn windows(&self) -> WindowSettings {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        WindowSettings {
            size: self.window,
            allowed_lateness_ms: ms(self.allowed_lateness),
            retention_ms: ms(self.window_retention),
            max_future_ms: ms(self.max_future),
        }
    }
}

/// Which architecture a speed or serving layer runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Architecture {
    /// With a batch layer: the speed layer counts what the newest batch view
    /// does not cover, the serving layer merges the two.
    #[default]
    Lambda,
    /// No batch layer: the speed layer counts every event from offset 0 and
    /// never expires a bucket, the serving layer answers from it alone, and
    /// reprocessing is a replay of the log (`lambda replay`).
    Kappa,
}

impl Architecture {
    /// Kappa has no batch layer: a `--batch-url` or a `--store-url` to
    /// read batch views from would contradict it.
    pub fn check_batch_sources(
        self,
        batch_url: Option<&str>,
        store_url: Option<&str>,
    ) -> Result<(), ConfigError> {
        if self == Architecture::Kappa {
            for (flag, value) in [("batch-url", batch_url), ("store-url", store_url)] {
                if value.is_some() {
                    return Err(ConfigError::new(
                        flag,
                        "the kappa architecture has no batch layer: leave it unset",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Architecture::Lambda => "lambda",
            Architecture::Kappa => "kappa",
        })
    }
}

/// The realtime store's checkpoint log is compacted once it holds this many
/// bytes (an expiry only purges what it expired). Above what 10 s of events
/// at 20,000/s add, so that with frequent recomputes a compaction does not
/// rewrite counts the next view swap expires anyway (README, "realtime
/// store").
pub const DEFAULT_REALTIME_COMPACT_BYTES: u64 = 128 << 20;

/// How the speed and serving layers keep realtime counts on disk.
#[derive(Debug, Clone, Args)]
pub struct RealtimeStoreArgs {
    /// Compact the realtime store once its checkpoint deltas hold this many
    /// bytes (a compaction rewrites only the buckets they changed).
    #[arg(long, env = env::REALTIME_COMPACT_BYTES, default_value_t = DEFAULT_REALTIME_COMPACT_BYTES)]
    pub realtime_compact_bytes: u64,
}

/// Where a role keeps its state, and how long it may take to stop.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Directory for this role's durable state (created if missing).
    #[arg(long, env = env::DATA_DIR, default_value = "./lambda-data")]
    pub data_dir: PathBuf,

    /// How long in-flight work may take to finish after SIGTERM or ctrl-c
    /// (e.g. 500ms, 10s).
    #[arg(long, env = env::SHUTDOWN_GRACE, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl NodeArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data-dir", "must not be empty"));
        }
        Ok(())
    }
}

/// Parses durations such as `250ms`, `10s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 500ms, 10s, 5m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m, h or d)"
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{s}` is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        stream: StreamArgs,
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn defaults_are_valid() {
        let cli = Cli::try_parse_from(["lambda"]).expect("defaults parse");
        cli.kafka.validate().expect("valid");
        cli.stream.validate().expect("valid");
        cli.node.validate().expect("valid");
        assert_eq!(cli.kafka.topic, "events");
        assert_eq!(cli.stream.bucket_size, BucketSize::DEFAULT);
        assert_eq!(cli.node.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn every_flag_names_its_environment_variable() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let mut seen = Vec::new();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            let var = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{} has no env variable", arg.get_id()));
            let var = var.to_str().expect("ascii").to_owned();
            assert!(
                env::ALL.contains(&var.as_str()),
                "{var} missing from env::ALL"
            );
            seen.push(var);
        }
        assert!(seen.len() >= 8);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = Cli::try_parse_from(["lambda", "--bucket-size", "0"]).expect_err("zero bucket");
        assert!(err.to_string().contains("--bucket-size"), "{err}");

        let cli = Cli::try_parse_from(["lambda", "--topic", "bad topic"]).expect("parses");
        let err = cli.kafka.validate().expect_err("invalid topic");
        assert_eq!(err.flag, "topic");
        assert!(err.to_string().starts_with("invalid --topic"), "{err}");

        let cli = Cli::try_parse_from(["lambda", "--partitions", "0"]).expect("parses");
        assert_eq!(cli.kafka.validate().map_err(|e| e.flag), Err("partitions"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
