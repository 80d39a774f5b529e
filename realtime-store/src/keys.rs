//! The store's key layout (see the crate's overview for the whole table).

use lambda_core::Partition;
use std::collections::BTreeMap;

/// The snapshot, one entry per (partition, bucket): what compaction writes.
pub(crate) const BUCKETED: u8 = b'b';
/// The snapshot before it was kept per bucket: read, then compacted away.
pub(crate) const SNAPSHOT: u8 = b's';
pub(crate) const DELTA: u8 = b'd';
pub(crate) const OFFSET: u8 = b'o';
pub(crate) const EVENT_TIME: u8 = b't';
pub(crate) const LEGACY_COUNT: u8 = b'c';
pub(crate) const META_CUT: &[u8] = b"mcut";
pub(crate) const META_FLOOR: &[u8] = b"mfloor";
pub(crate) const META_AS_OF: &[u8] = b"masof";
pub(crate) const META_STARTS: &[u8] = b"mstarts";
pub(crate) const META_WRITER: &[u8] = b"mwriter";
pub(crate) const CACHE_BYTES: u64 = 64 << 20;
/// How long opening waits for a lock still held by a store closed in this
/// process; another process holding it fails at once after this.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn offset_key(partition: Partition) -> [u8; 5] {
    let mut k = [OFFSET; 5];
    k[1..].copy_from_slice(&partition.to_be_bytes());
    k
}

pub(crate) fn event_time_key(partition: Partition) -> [u8; 5] {
    let mut k = [EVENT_TIME; 5];
    k[1..].copy_from_slice(&partition.to_be_bytes());
    k
}

/// A chunk of the old whole-store snapshot (tests write one to check it is
/// still read and compacted away).
#[cfg(test)]
pub(crate) fn snapshot_key(chunk: u32) -> [u8; 5] {
    let mut k = [SNAPSHOT; 5];
    k[1..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// Where one (partition, bucket)'s snapshot chunks start; chunk `i` is
/// this prefix and `i` (u32 BE). Partitions are non-negative, so the
/// big-endian bytes keep one partition's buckets in order.
pub(crate) fn bucket_prefix(partition: Partition, bucket: u64) -> [u8; 13] {
    let mut k = [BUCKETED; 13];
    k[1..5].copy_from_slice(&partition.to_be_bytes());
    k[5..13].copy_from_slice(&bucket.to_be_bytes());
    k
}

pub(crate) fn bucket_key(partition: Partition, bucket: u64, chunk: u32) -> [u8; 17] {
    let mut k = [0; 17];
    k[..13].copy_from_slice(&bucket_prefix(partition, bucket));
    k[13..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// The chunk index of a snapshot key, if it is one.
pub(crate) fn bucket_chunk(key: &[u8]) -> Option<u32> {
    (key.len() == 17).then(|| u32::from_be_bytes(key[13..].try_into().expect("4 bytes")))
}

pub(crate) fn delta_key(seq: u64, chunk: u32) -> [u8; 13] {
    let mut k = [DELTA; 13];
    k[1..9].copy_from_slice(&seq.to_be_bytes());
    k[9..].copy_from_slice(&chunk.to_be_bytes());
    k
}

pub(crate) fn delta_seq(key: &[u8]) -> Option<u64> {
    (key.len() == 13).then(|| u64::from_be_bytes(key[1..9].try_into().expect("8 bytes")))
}

/// The first live bucket per partition; counts below it are expired.
pub(crate) type Floor = BTreeMap<Partition, u64>;
