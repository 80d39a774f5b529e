//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

pub use ::testkit::{consume_n, produce, unique, Consumed};
use std::collections::BTreeMap;

/// Offsets per partition, in arrival order.
pub fn offsets_by_partition(records: &[Consumed]) -> BTreeMap<i32, Vec<i64>> {
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in records {
        map.entry(r.partition).or_default().push(r.offset);
    }
    map
}
