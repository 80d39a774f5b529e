//! A release's upserts resolved into the absolute counts the replica will
//! hold, with the all-time counts derived from the windowed ones.

use super::*;

impl Replica {
    /// The absolute values `upserts` lead to (`max` with what is held), one
    /// per key; what the follower makes durable before [`Self::apply`].
    /// Upserts for buckets the current view already covers are dropped.
    ///
    /// A word's all-time count in a bucket is derived here: the speed layer
    /// counts each occurrence under its window's key only, so the all-time
    /// count grows by what the word's windowed (and untimed) counts grew
    /// above what is held — unless the release gives the all-time count
    /// itself (a bucket the speed layer counted before that rule, see
    /// `lambda_core::window`), which then stands. The derivation reads what
    /// is held, so releases are resolved and applied one after the other.
    ///
    /// The result comes grouped by key (a key's buckets next to each
    /// other), so that each key is looked up once here and once in
    /// [`Self::apply`], not once per bucket: a release under load carries
    /// each word for several partitions and buckets.
    pub fn resolve(&self, upserts: &[RealtimeUpsert]) -> Vec<(CountKey, u64)> {
        let cut = self.cut();
        let mut by_key: FxHashMap<&str, Vec<(BucketKey, u64)>> = FxHashMap::default();
        // The (word, bucket)s whose all-time count the release gives.
        let mut given: FxHashSet<(&str, BucketKey)> = FxHashSet::default();
        for u in upserts {
            if !cut.is_realtime_bucket(self.size, u.partition, u.bucket) {
                continue;
            }
            let bucket = BucketKey {
                partition: u.partition,
                bucket: u.bucket,
            };
            if Key::is_word(&u.word) {
                given.insert((u.word.as_str(), bucket));
            }
            by_key
                .entry(u.word.as_str())
                .or_default()
                .push((bucket, u.count));
        }
        let mut out = Vec::with_capacity(upserts.len());
        // Per word, what its windowed and untimed counts add per bucket.
        let mut added: FxHashMap<&str, Vec<(BucketKey, u64)>> = FxHashMap::default();
        for (key, mut changed) in by_key {
            sort_by_bucket_largest_first(&mut changed);
            changed.dedup_by_key(|(k, _)| *k);
            let adds_to = Key::parse(key).and_then(Key::adds_to);
            let held = self.realtime.get(key);
            for (bucket, count) in changed {
                let held = held_in(held, &bucket);
                if let Some(word) = adds_to.filter(|_| count > held) {
                    added.entry(word).or_default().push((bucket, count - held));
                }
                out.push((
                    CountKey {
                        bucket,
                        word: key.into(),
                    },
                    count.max(held),
                ));
            }
        }
        for (word, mut adds) in added {
            sort_by_bucket_largest_first(&mut adds);
            let held = self.realtime.get(word);
            let mut adds = adds.into_iter().peekable();
            while let Some((bucket, mut add)) = adds.next() {
                while let Some((_, more)) = adds.next_if(|(b, _)| *b == bucket) {
                    add += more;
                }
                if !given.contains(&(word, bucket)) {
                    let count = held_in(held, &bucket) + add;
                    out.push((
                        CountKey {
                            bucket,
                            word: word.into(),
                        },
                        count,
                    ));
                }
            }
        }
        out
    }
}

/// Sorts a key's counts by bucket (as they are held), a bucket's largest
/// count first: coalesced releases can carry one bucket more than once.
fn sort_by_bucket_largest_first(counts: &mut [(BucketKey, u64)]) {
    counts.sort_unstable_by(|(a, x), (b, y)| {
        (a.bucket, a.partition)
            .cmp(&(b.bucket, b.partition))
            .then(y.cmp(x))
    });
}

/// What a key holds in `bucket` (0 for nothing).
fn held_in(buckets: Option<&Vec<(BucketKey, u64)>>, bucket: &BucketKey) -> u64 {
    buckets
        .and_then(|b| find_bucket(b, bucket).ok().map(|i| b[i].1))
        .unwrap_or(0)
}
