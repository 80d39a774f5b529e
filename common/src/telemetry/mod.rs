//! Telemetry: `tracing` set-up from `RUST_LOG`, typed events that pair a
//! metric with its log line, and rate limits for per-record log lines.
//!
//! # Layout
//!
//! - this file: [`init`], the subscriber and its default filter;
//! - [`events`]: the typed events;
//! - [`limit`]: [`limit::LogLimit`], a burst of lines per window.

pub mod events;
pub mod limit;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset: our crates at `info`, the noisy
/// dependencies (the embedded broker, HTTP internals) at `warn`.
pub const DEFAULT_FILTER: &str = "info,tansu=warn,tansu_broker=warn,tansu_storage=warn,tansu_service=warn,libsql=warn,hyper=warn,rdkafka=warn";

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides
/// [`DEFAULT_FILTER`]; an invalid `RUST_LOG` falls back to the default with a
/// warning rather than failing to start. Calling it twice is harmless (tests).
pub fn init() {
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some((spec, e))),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .is_ok();
    if let (true, Some((spec, error))) = (installed, bad) {
        tracing::warn!(rust_log = %spec, %error, "Ignoring invalid RUST_LOG; using the default filter.");
    }
}
