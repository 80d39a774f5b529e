//! The merge rule: how a batch view and realtime counts combine into one exact
//! count.
//!
//! ```text
//! count(w) = batch_v(w) + Σ realtime(w, p, bucket)  for every bucket with start ≥ cut_v[p]
//! ```
//!
//! The batch view with cut `cut_v` counts every event below the cut. The speed
//! layer counts events per (partition, bucket) and only drops buckets once a
//! batch view has absorbed them, so at any moment it may still hold buckets
//! below `cut_v`; the rule ignores those, which is what makes a batch swap
//! neither double-count nor lose events. Because cuts are bucket-aligned, a
//! bucket is never split between the two sides.

use crate::cut::{BucketSize, Cut, Partition};
use serde::{Deserialize, Serialize};

/// Where a realtime count comes from: a partition and a bucket of offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketKey {
    pub partition: Partition,
    pub bucket: u64,
}

/// One word's merged count and its two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// What the batch view counts (events below its cut).
    pub batch: u64,
    /// What the realtime buckets at or above the cut add.
    pub realtime: u64,
}

impl Merged {
    pub fn total(&self) -> u64 {
        self.batch + self.realtime
    }
}

/// Merges one word's batch count with its realtime counts per bucket: the
/// rule every answer of the serving layer goes through.
///
/// `cut` must be aligned to `size` (batch views are), otherwise a bucket could
/// straddle it.
pub fn merge(
    batch_count: u64,
    cut: &Cut,
    size: BucketSize,
    realtime: impl IntoIterator<Item = (BucketKey, u64)>,
) -> Merged {
    debug_assert!(cut.is_aligned(size), "batch cuts are bucket-aligned");
    Merged {
        batch: batch_count,
        realtime: realtime_count(cut, size, realtime),
    }
}

/// [`merge`]'s total.
pub fn merged_count(
    batch_count: u64,
    cut: &Cut,
    size: BucketSize,
    realtime: impl IntoIterator<Item = (BucketKey, u64)>,
) -> u64 {
    merge(batch_count, cut, size, realtime).total()
}

/// The realtime side of [`merge`]: the sum over buckets at or above the cut.
pub fn realtime_count(
    cut: &Cut,
    size: BucketSize,
    realtime: impl IntoIterator<Item = (BucketKey, u64)>,
) -> u64 {
    realtime
        .into_iter()
        .filter(|(key, _)| cut.is_realtime_bucket(size, key.partition, key.bucket))
        .map(|(_, count)| count)
        .sum()
}

/// A realtime count's identity: its bucket and its word.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub bucket: BucketKey,
    pub word: Box<str>,
}

impl CountKey {
    pub fn new(partition: Partition, bucket: u64, word: &str) -> Self {
        Self {
            bucket: BucketKey { partition, bucket },
            word: word.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cut::Offset;
    use crate::tokenizer::Tokenizer;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    /// Events per partition, at offsets 0..len.
    type Stream = BTreeMap<Partition, Vec<String>>;

    fn count_where(
        stream: &Stream,
        mut keep: impl FnMut(Partition, Offset) -> bool,
    ) -> HashMap<String, u64> {
        let mut t = Tokenizer::new();
        let mut counts = HashMap::new();
        for (&p, events) in stream {
            for (o, text) in events.iter().enumerate() {
                if keep(p, o as Offset) {
                    t.for_each_word(text, |w| *counts.entry(w.to_owned()).or_insert(0) += 1);
                }
            }
        }
        counts
    }

    /// What the speed layer holds: counts per (word, bucket) for every event at
    /// or above `expired_below` (its last-seen cut, possibly older than the
    /// batch view's).
    fn realtime(
        stream: &Stream,
        size: BucketSize,
        expired_below: &Cut,
    ) -> HashMap<String, Vec<(BucketKey, u64)>> {
        let mut t = Tokenizer::new();
        let mut per_key: HashMap<(String, BucketKey), u64> = HashMap::new();
        for (&partition, events) in stream {
            for (o, text) in events.iter().enumerate() {
                let offset = o as Offset;
                if offset < expired_below.get(partition) {
                    continue;
                }
                let key = BucketKey {
                    partition,
                    bucket: size.bucket_of(offset),
                };
                t.for_each_word(text, |w| {
                    *per_key.entry((w.to_owned(), key)).or_insert(0) += 1
                });
            }
        }
        let mut out: HashMap<String, Vec<(BucketKey, u64)>> = HashMap::new();
        for ((w, key), c) in per_key {
            out.entry(w).or_default().push((key, c));
        }
        out
    }

    fn stream_strategy() -> impl Strategy<Value = Stream> {
        let event = prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "D", "é", "x1"]),
            0..5,
        )
        .prop_map(|ws| ws.join(" "));
        prop::collection::btree_map(0..4i32, prop::collection::vec(event, 0..60), 1..4)
    }

    #[test]
    fn buckets_below_the_cut_are_ignored() {
        let size = BucketSize::new(10).expect("non-zero");
        let cut: Cut = [(0, 20)].into_iter().collect();
        let realtime = [
            (
                BucketKey {
                    partition: 0,
                    bucket: 1,
                },
                5,
            ), // below: already in the batch view
            (
                BucketKey {
                    partition: 0,
                    bucket: 2,
                },
                3,
            ),
            (
                BucketKey {
                    partition: 1,
                    bucket: 0,
                },
                4,
            ), // partition 1 has cut 0
        ];
        assert_eq!(merged_count(100, &cut, size, realtime), 107);
    }

    proptest! {
        #[test]
        fn batch_prefix_plus_realtime_suffix_equals_recount(
            stream in stream_strategy(),
            size in 1u64..8,
            cut_fracs in prop::collection::vec((0.0f64..=1.0, 0.0f64..=1.0), 4),
        ) {
            let size = BucketSize::new(size).expect("non-zero");
            // A random bucket-aligned batch cut per partition, and an older cut
            // up to which the speed layer has already expired its buckets.
            let mut cut = Cut::new();
            let mut expired = Cut::new();
            for (&p, events) in &stream {
                let (f, g) = cut_fracs[p as usize];
                let c = size.align_down((events.len() as f64 * f) as Offset);
                cut.set(p, c);
                expired.set(p, size.align_down((c as f64 * g) as Offset));
            }
            let batch = count_where(&stream, |p, o| cut.includes(p, o));
            let realtime = realtime(&stream, size, &expired);
            let truth = count_where(&stream, |_, _| true);

            let mut words: Vec<&String> = truth.keys().chain(realtime.keys()).collect();
            words.sort();
            words.dedup();
            for w in words {
                let b = batch.get(w).copied().unwrap_or(0);
                let rt = realtime.get(w).cloned().unwrap_or_default();
                prop_assert_eq!(merged_count(b, &cut, size, rt), truth.get(w).copied().unwrap_or(0), "word {}", w);
            }
        }
    }
}
