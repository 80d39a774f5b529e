//! The master dataset's sealed chunks in the shared store (`--store-url`).
//!
//! ```text
//! <store>/master/p-<partition>/<first, 20 digits>-<end, 20 digits>.chunk
//! ```
//!
//! A chunk holds a partition's records with offsets in `[first, end)`, in
//! the master log's own record format (each record CRC-checked), and its
//! bounds are a function of the offsets alone: chunk `k` covers
//! `[k × size, (k + 1) × size)`. It is sealed — written once, never changed —
//! when the log has passed its last offset, so every offset in it is final
//! (Kafka is the single source, read committed). Any owner of the partition,
//! old or new, seals the same chunk with the same records, and the store's
//! conditional put keeps the first one written; readers take records by
//! offset within each chunk's bounds, and chunks of one partition never
//! overlap, so no offset is read twice.
//!
//! The local log (`master_log::partition`) deletes its segments wholly
//! below the sealed end (once no reader holds one); a data directory that is
//! lost or new starts its local log at the store's sealed end; either way
//! the offsets below the local log's start are read from the store.

use super::record::Record;
use super::segments::SegmentRef;
use super::LogError;
use common::store::{Store, StoreError};
use lambda_core::{Offset, Partition};
use std::collections::BTreeMap;

/// One sealed chunk: `[first, end)` of a partition, at `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub first: Offset,
    pub end: Offset,
    pub key: String,
}

/// The store key of a partition's chunk `[first, end)`.
pub fn chunk_key(partition: Partition, first: Offset, end: Offset) -> String {
    format!("master/p-{partition}/{first:020}-{end:020}.chunk")
}

/// The partition and bounds a key names, if it is a chunk's.
fn parse_key(key: &str) -> Option<(Partition, Chunk)> {
    let rest = key.strip_prefix("master/p-")?;
    let (partition, name) = rest.split_once('/')?;
    let (first, end) = name.strip_suffix(".chunk")?.split_once('-')?;
    let (first, end): (Offset, Offset) = (first.parse().ok()?, end.parse().ok()?);
    let partition: Partition = partition.parse().ok()?;
    (first < end).then(|| {
        (
            partition,
            Chunk {
                first,
                end,
                key: key.to_owned(),
            },
        )
    })
}

/// Every partition's sealed chunks, contiguous from offset 0: a chunk that
/// does not start where the previous one ended is ignored (with what
/// follows it), so the chunks taken never overlap and leave no hole.
pub async fn list(store: &Store) -> Result<BTreeMap<Partition, Vec<Chunk>>, StoreError> {
    let mut found: BTreeMap<Partition, Vec<Chunk>> = BTreeMap::new();
    for key in store.list("master").await? {
        if let Some((p, chunk)) = parse_key(&key) {
            found.entry(p).or_default().push(chunk);
        }
    }
    for chunks in found.values_mut() {
        chunks.sort_by_key(|c| (c.first, c.end));
        let mut end = 0;
        chunks.retain(|c| {
            let next = c.first == end;
            if next {
                end = c.end;
            }
            next
        });
    }
    found.retain(|_, chunks| !chunks.is_empty());
    Ok(found)
}

/// The encoded chunk of the records `segments` hold in `[first, end)` (the
/// segments' own start and limit already say so).
pub fn encode(segments: &[SegmentRef]) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    for segment in segments {
        let bytes = segment.load()?;
        for record in segment.records(&bytes) {
            let record: Record<'_> = record?;
            record.encode_into(&mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_partition_and_bounds() {
        let key = chunk_key(3, 20_000, 30_000);
        assert_eq!(
            key,
            "master/p-3/00000000000000020000-00000000000000030000.chunk"
        );
        let (p, chunk) = parse_key(&key).expect("a chunk key");
        assert_eq!((p, chunk.first, chunk.end), (3, 20_000, 30_000));
        assert!(parse_key("master/p-3/notes.txt").is_none());
        assert!(parse_key(&chunk_key(1, 10, 10)).is_none(), "empty range");
    }
}
