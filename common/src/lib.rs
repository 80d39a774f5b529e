//! The shared core of Lambda: everything the batch, speed and serving layers
//! must agree on, defined once.
//!
//! The three layers count the same words over the same offsets and hand work
//! over at the same cuts. If any of them tokenized differently, placed a bucket
//! boundary elsewhere or merged by another rule, the serving layer's answers
//! would silently drift from the truth. So those rules live here, as small pure
//! functions with property tests, and the layers only call them.
//!
//! # Layout
//!
//! - [`tokenizer`]: what a word is (alphanumeric runs, lowercased), with an
//!   allocation-free ASCII fast path.
//! - [`event`]: a Kafka record decoded into an [`event::Event`], or a typed
//!   [`event::DecodeError`] that says why it goes to the dead-letter topic.
//! - [`cut`]: partitions, offsets, [`cut::Cut`]s and realtime bucket arithmetic.
//! - [`merge`]: the merge rule `batch(w) + Σ realtime(w, p, b ≥ cut[p])`.
//! - [`auth`]: constant-time bearer-token checks.
//! - [`config`]: flags shared by every role, each also a `LAMBDA_*` variable.
//! - [`client`]: how Kafka clients reach the cluster (TLS, SASL, codec,
//!   pass-through settings), secrets redacted.
//! - [`telemetry`]: `tracing` set-up from `RUST_LOG`.
//! - [`server`]: binding, serving until shutdown, JSON errors, Prometheus responses.
//! - [`shutdown`]: ctrl-c/SIGTERM → cancellation token → grace period.
//! - [`sync`]: locks that refuse a poisoned state (and so stop the role).
//! - [`kafka`]: client configurations and idempotent topic creation.
//! - [`unreadable`]: records a consumer cannot read: classify, locate the
//!   partition, hold it.
//! - [`dead_letter`]: records that are not events, sent on with origin and reason.
//! - [`http`]: a minimal HTTP/1.1 client for internal calls between layers.
//! - [`realtime`]: the absolute-count upserts the speed layer publishes.
//! - [`metrics`]: atomic counters and the Prometheus text format.
//! - `broker` (feature `embedded-broker`): an in-process Kafka-compatible
//!   broker for tests and the demo, and `testkit`: helpers for tests that
//!   drive real components.

pub mod auth;
pub mod background;
pub mod client;
pub mod config;
pub mod cut;
pub mod dead_letter;
pub mod event;
pub mod http;
pub mod kafka;
pub mod merge;
pub mod metrics;
pub mod realtime;
pub mod server;
pub mod shutdown;
pub mod sync;
pub mod telemetry;
pub mod tokenizer;
pub mod unreadable;

#[cfg(feature = "embedded-broker")]
pub mod broker;
#[cfg(feature = "embedded-broker")]
mod broker_auth;
#[cfg(feature = "embedded-broker")]
pub mod testkit;

pub use cut::{BucketSize, Cut, Offset, Partition};
pub use event::{DecodeError, Event};
pub use merge::{merged_count, BucketKey};
pub use tokenizer::Tokenizer;
