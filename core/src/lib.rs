//! The core of Lambda: the formats and rules that the batch, speed and serving
//! layers must agree on, defined once, with no I/O.
//!
//! The three layers count the same words over the same offsets and hand work
//! over at the same cuts. If any of them tokenized differently, placed a bucket
//! boundary elsewhere, merged by another rule or read a view file another way,
//! the serving layer's answers would silently drift from the truth. So those
//! rules live here, as small pure functions and types with property tests, and
//! the layers only call them. Nothing in this crate touches a file, a socket
//! or a clock: I/O is `lambda-common`'s (Kafka clients, HTTP, the view store)
//! and the layers'.
//!
//! # Layout
//!
//! - [`tokenizer`]: what a word is (alphanumeric runs, lowercased), with an
//!   allocation-free ASCII fast path.
//! - [`event`]: a record's payload decoded into an [`event::Event`], or a typed
//!   [`event::DecodeError`] that says why it goes to the dead-letter topic.
//! - [`cut`]: partitions, offsets, [`cut::Positions`] (where a reader is),
//!   [`cut::Cut`]s (what a result covers) and realtime bucket arithmetic.
//! - [`merge`]: the merge rule `batch(w) + Σ realtime(w, p, b ≥ cut[p])`, and
//!   the identity of a realtime count ([`merge::CountKey`]).
//! - [`realtime`]: the realtime topic's messages (absolute-count upserts and
//!   watermarks) that the speed layer publishes and serving replicas apply.
//! - [`view`]: the batch view file and its manifest.
//! - [`compose`]: one view per partition (a part), and their sum: how
//!   batch instances that own different partitions make one view.
//! - [`lineage`]: how a view was computed (full or incremental), and the
//!   count arithmetic of the two: adding a delta, comparing two views.
//! - [`instance`]: a batch instance as it announces itself to the others.
//! - [`chunk`]: the binary form of a set of counts, as the realtime store
//!   keeps them.
//! - [`window`]: event-time windows, ranges, watermarks and lateness (the
//!   arithmetic only, so far).

pub mod chunk;
pub mod compose;
pub mod cut;
pub mod event;
pub mod instance;
pub mod lineage;
pub mod merge;
pub mod realtime;
pub mod tokenizer;
pub mod view;
pub mod window;

pub use cut::{BucketSize, Cut, Offset, Partition, Positions};
pub use event::{DecodeError, Event};
pub use merge::{merged_count, BucketKey, CountKey};
pub use tokenizer::Tokenizer;
