//! The serving layer: answers queries by merging the newest batch view with
//! the realtime counts, exactly, per query.
//!
//! Not built yet (its own issue). What it will build on is already here:
//! the merge rule ([`common::merge::merged_count`]), the batch view format and
//! its checksum verification (`batch_layer::view`), the realtime upserts it
//! will follow ([`common::realtime::RealtimeUpsert`], applied as
//! `max(stored, count)`), and the layers' HTTP contract in the README.
