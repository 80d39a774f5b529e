//! The I/O every Lambda role shares: how it reaches Kafka, serves and calls
//! HTTP, reads its configuration, shuts down, reports, and stores batch views.
//!
//! The formats and rules themselves (words, events, cuts, the merge rule, the
//! realtime and view formats) are `lambda_core`'s, which has no I/O; this
//! crate is where they meet sockets, files and clocks. Each layer crate
//! depends on both and on no other layer.
//!
//! # Layout
//!
//! - [`config`]: flags shared by every role, each also a `LAMBDA_*` variable.
//! - [`client`]: how Kafka clients reach the cluster (TLS, SASL, codec,
//!   pass-through settings), secrets redacted.
//! - [`kafka`]: client configurations, idempotent topic creation, records
//!   decoded into events, consumers closed off the runtime.
//! - [`reader`]: one way to read partitions at durable positions (checked
//!   against the topic, resumed exactly), in micro-batches.
//! - [`retry`]: retrying a write until it is durable, or reporting that it
//!   never was.
//! - [`unreadable`]: records a consumer cannot read: classify, locate the
//!   partition, hold it.
//! - [`dead_letter`]: records that are not events, sent on with origin and reason.
//! - [`views`]: the directory of batch view files and their manifest.
//! - [`store`]: the shared store (`--store-url`, `file://` or `s3://`) of
//!   immutable objects.
//! - [`server`]: binding, serving until shutdown, JSON errors, Prometheus responses.
//! - [`http`]: a minimal HTTP/1.1 client for internal calls between layers.
//! - [`auth`]: constant-time bearer-token checks.
//! - [`shutdown`]: ctrl-c/SIGTERM → cancellation token → grace period, and
//!   the supervisor that stops a role when one of its components fails.
//! - [`sync`]: locks that refuse a poisoned state (and so stop the role).
//! - [`background`]: threads that lower their own priority.
//! - [`memory`]: no transparent huge pages (the kernel zeroing them cost
//!   the speed layer ~40 % of its CPU).
//! - [`metrics`]: atomic counters and the Prometheus text format.
//! - [`telemetry`]: `tracing` set-up from `RUST_LOG`.
//! - `broker` (feature `embedded-broker`): an in-process Kafka-compatible
//!   broker for `lambda demo` and the tests (whose helpers are the
//!   `lambda-testkit` crate).

pub mod auth;
pub mod background;
pub mod client;
pub mod config;
pub mod dead_letter;
pub mod http;
pub mod instances;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod reader;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod unreadable;
pub mod views;

#[cfg(feature = "embedded-broker")]
pub mod broker;
#[cfg(feature = "embedded-broker")]
mod broker_auth;

/// The wall clock in milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A non-zero id unlikely to repeat (a writer's, an instance's): the
/// standard library's randomly keyed hasher over the clock and the process
/// id.
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}
