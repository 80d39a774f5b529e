//! A large release applied in slices, each leaving the replica exact at a
//! position of its own, so that queries go in between.
//!
//! A release is applied under the replica's write lock, which every query
//! waits behind. A speed layer catching up publishes a release per
//! micro-batch: for 100,000 records over a 50,000-word vocabulary in the
//! demo's 64-offset buckets, 1.3 M counts, 85 ms of holding the lock in one
//! piece (`benches/apply`).
//!
//! A count is a key's in one bucket, and a bucket is a range of one
//! partition's offsets. So applied in each partition's bucket order, whole
//! buckets at a time, the counts held after a slice cover, per partition,
//! every event below the start of its next bucket still to apply (or the
//! release's end once none is left), and none beyond it: the replica is
//! exact there. The follower hands the lock over between slices (see
//! `common::sync::FairRwLock`), and the release's end, event times and all,
//! is reached with its last slice.
//!
//! Slicing costs: a frequent word has a count in nearly every bucket, so
//! it is looked up (and its ranking's gain noted) once per slice it is in
//! rather than once per release. Hence slices of tens of thousands of
//! counts, not a few thousand (see [`SLICE_COUNTS`]).

use super::*;
use std::collections::VecDeque;

/// The counts a slice holds, at least, unless the release has fewer: whole
/// buckets are added until it holds this many (one bucket of one partition
/// is never split). `benches/apply`, a catch-up of 200,000 events in
/// releases of 100,000: the longest hold of the lock 85 ms whole, 16 ms in
/// slices of 65,536 counts, 9-11 at 16,384 and at 4,096; applying all of it
/// took 153 ms whole, 540, 740 and 900 ms in those slices. (In releases of
/// 20,000 events, applied whole: 39 ms at longest, 333 ms in all.)
pub const SLICE_COUNTS: usize = 65_536;

/// Counts to apply together and the position the replica is exact at once
/// they are applied.
#[derive(Debug)]
pub struct Slice {
    pub counts: Vec<(CountKey, u64)>,
    pub as_of: Cut,
}

/// A release's resolved `counts`, taking the replica from `from` (its
/// realtime position) to `to`, in slices of at least `min_counts` counts
/// to apply in order: a release of at most that many is one slice, as
/// resolved (each key's buckets together); a larger one is cut at bucket
/// boundaries (see the module). The last slice ends at `to`.
pub fn slices(
    counts: Vec<(CountKey, u64)>,
    from: &Cut,
    to: Cut,
    size: BucketSize,
    min_counts: usize,
) -> Vec<Slice> {
    if counts.len() <= min_counts {
        return vec![Slice { counts, as_of: to }];
    }
    // How many counts each bucket of each partition has.
    let mut groups: FxHashMap<BucketKey, usize> = FxHashMap::default();
    for (key, _) in &counts {
        *groups.entry(key.bucket).or_default() += 1;
    }
    // The buckets in the order they are applied: each partition's in
    // bucket order, the partitions side by side from their first bucket
    // here, so that every partition's position moves with each slice.
    let mut first: BTreeMap<Partition, u64> = BTreeMap::new();
    for b in groups.keys() {
        let f = first.entry(b.partition).or_insert(b.bucket);
        *f = (*f).min(b.bucket);
    }
    let mut order: Vec<BucketKey> = groups.keys().copied().collect();
    order.sort_unstable_by_key(|b| (b.bucket - first[&b.partition], b.partition, b.bucket));
    // Per partition, its buckets still to apply.
    let mut ahead: BTreeMap<Partition, VecDeque<u64>> = BTreeMap::new();
    for b in &order {
        ahead.entry(b.partition).or_default().push_back(b.bucket);
    }
    let position = |ahead: &BTreeMap<Partition, VecDeque<u64>>| -> Cut {
        to.iter()
            .map(|(p, end)| {
                let stop = match ahead.get(&p).and_then(VecDeque::front) {
                    Some(&next) => size.bucket_start(next).min(end),
                    None => end,
                };
                (p, stop.max(from.get(p)))
            })
            .collect()
    };
    // Each bucket's slice (in place of its number of counts); each slice
    // sized and placed as it closes.
    let mut out: Vec<Slice> = Vec::new();
    let mut open = 0;
    for b in order {
        let group = groups
            .get_mut(&b)
            .expect("every bucket in order is a group");
        open += *group;
        *group = out.len();
        ahead
            .get_mut(&b.partition)
            .and_then(VecDeque::pop_front)
            .expect("every bucket is ahead until applied");
        if open >= min_counts {
            out.push(Slice {
                counts: Vec::with_capacity(std::mem::take(&mut open)),
                as_of: position(&ahead),
            });
        }
    }
    match out.last_mut() {
        Some(last) if open == 0 => last.as_of = to,
        _ => out.push(Slice {
            counts: Vec::with_capacity(open),
            as_of: to,
        }),
    }
    // Each count to its slice, in the order given: a key's counts stay
    // together, so that a slice looks each key up once (see `apply`).
    for count in counts {
        out[groups[&count.0.bucket]].counts.push(count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{keys_by_partition, recount, test_windows, view};
    use super::*;
    use lambda_core::window::Range;
    use proptest::prelude::*;

    proptest! {
        /// After every slice of a release, every count (all-time and over
        /// a range of windows) equals the recount at the slice's position;
        /// positions only move forward, and the last is the release's end.
        #[test]
        fn each_slice_leaves_the_replica_exact_at_its_position(
            events in prop::collection::vec(
                (0..3i32, "[a-f ]{0,10}", prop::option::weighted(0.9, 0i64..60_000)),
                1..150,
            ),
            size in 1..6u64,
            cut_at in prop::collection::vec(0..=100u64, 3),
            first_at in prop::collection::vec(0..=100u64, 3),
            min_counts in 1..40usize,
        ) {
            let size = BucketSize::new(size).expect("positive");
            let batch_keys = keys_by_partition(&events, None);
            let at = |fractions: &[u64], align: bool| -> Cut {
                batch_keys
                    .iter()
                    .enumerate()
                    .map(|(i, (&p, evs))| {
                        let o = (evs.len() as u64 * fractions[i] / 100) as i64;
                        (p, if align { size.align_down(o) } else { o })
                    })
                    .collect()
            };
            // What the speed layer publishes for the events below `upto`.
            let upserts = |upto: &Cut| -> Vec<RealtimeUpsert> {
                let mut counts: BTreeMap<(i32, u64, String), u64> = BTreeMap::new();
                for (&p, evs) in &batch_keys {
                    for (o, (_, keys)) in evs.iter().enumerate().take(upto.get(p) as usize) {
                        for key in keys {
                            *counts.entry((p, size.bucket_of(o as i64), key.clone())).or_default() += 1;
                        }
                    }
                }
                counts
                    .into_iter()
                    .map(|((partition, bucket, word), count)| RealtimeUpsert { word, partition, bucket, count })
                    .collect()
            };
            let cut = at(&cut_at, true);
            let batch: Vec<(String, u64)> = recount(&batch_keys, &cut).into_iter().collect();
            let batch: Vec<(&str, u64)> = batch.iter().map(|(w, c)| (w.as_str(), *c)).collect();
            let mut replica = Replica::new(size).with_windows(test_windows());
            replica.swap_view(Arc::new(view(1, cut.clone(), size, &batch)));
            // A first release up to somewhere past the cut, then one to the end.
            let first: Cut = at(&first_at, false).iter().map(|(p, o)| (p, o.max(cut.get(p)))).collect();
            let resolved = replica.resolve(&upserts(&first));
            replica.apply(resolved, first.clone());
            let end = at(&[100, 100, 100], false);
            let resolved = replica.resolve(&upserts(&end));
            let sliced = slices(resolved, replica.realtime_as_of(), end.clone(), size, min_counts);
            let vocabulary = recount(&batch_keys, &end);
            let whole = Range::rounded(test_windows().size, 0, 120_000).expect("a range");
            let mut previous = replica.as_of();
            for slice in sliced {
                replica.apply(slice.counts, slice.as_of);
                let as_of = replica.as_of();
                prop_assert!(as_of.dominates(&previous), "{} after {}", as_of, previous);
                let truth = recount(&batch_keys, &as_of);
                for word in vocabulary.keys().filter(|k| Key::is_word(k)) {
                    let want = truth.get(word).copied().unwrap_or(0);
                    prop_assert_eq!(replica.word(word).total(), want, "{} at {}", word, as_of);
                    let in_windows: u64 = truth
                        .iter()
                        .filter(|(k, _)| matches!(Key::parse(k), Some(Key::InWindow(_, w)) if w == word))
                        .map(|(_, c)| c)
                        .sum();
                    prop_assert_eq!(replica.word_in(word, whole).total(), in_windows);
                }
                previous = as_of;
            }
            prop_assert_eq!(previous, end);
        }
    }

    #[test]
    fn a_small_release_is_one_slice_and_a_large_one_is_cut_between_buckets() {
        let size = BucketSize::new(10).expect("10");
        let count = |p, b, w: &str, c| (CountKey::new(p, b, w), c);
        let counts = vec![
            count(0, 0, "a", 1),
            count(0, 1, "a", 2),
            count(1, 0, "a", 3),
            count(0, 1, "b", 1),
            count(1, 2, "b", 1),
        ];
        let from: Cut = [(0, 5), (1, 0)].into_iter().collect();
        let to: Cut = [(0, 17), (1, 25)].into_iter().collect();
        let one = slices(counts.clone(), &from, to.clone(), size, 5);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].as_of, to);
        assert_eq!(one[0].counts, counts);

        let cut = slices(counts, &from, to.clone(), size, 2);
        let shape: Vec<(usize, Cut)> = cut
            .iter()
            .map(|s| (s.counts.len(), s.as_of.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                // Bucket 0 of both partitions: partition 0 then waits at
                // its bucket 1, partition 1 at its bucket 2 (none in 1).
                (2, [(0, 10), (1, 20)].into_iter().collect()),
                // Bucket 1 of partition 0: its end.
                (2, [(0, 17), (1, 20)].into_iter().collect()),
                (1, to),
            ]
        );
    }
}
