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
        // Each key's upserts, grouped by sorting one flat list by the key's
        // number (in order of appearance), then bucket: no list per key.
        let mut keys = Grouped::with_capacity(upserts.len());
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
            keys.push(&u.word, bucket, u.count);
        }
        let mut out = Vec::with_capacity(upserts.len());
        // Per word, what its windowed and untimed counts add per bucket.
        let mut added = Grouped::with_capacity(upserts.len());
        for (key, changed) in keys.runs() {
            let adds_to = Key::parse(key).and_then(Key::adds_to);
            let held = self.realtime.get(key);
            let mut last = None;
            for &(_, bucket, count) in changed {
                // Coalesced releases can carry a bucket more than once:
                // its largest count comes first.
                if last.replace(bucket) == Some(bucket) {
                    continue;
                }
                let held = held_in(held, &bucket);
                if let Some(word) = adds_to.filter(|_| count > held) {
                    added.push(word, bucket, count - held);
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
        for (word, adds) in added.runs() {
            let held = self.realtime.get(word);
            let mut adds = adds.iter().peekable();
            while let Some(&(_, bucket, mut add)) = adds.next() {
                while let Some((_, _, more)) = adds.next_if(|(_, b, _)| *b == bucket) {
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

/// Counts per (key, bucket), grouped by key: each key gets a number in
/// order of appearance, and one sort of the flat list by number, then
/// bucket (as they are held), a bucket's largest count first, puts each
/// key's counts together — one list for all, where a list per key in a map
/// was a tenth of following the speed layer (`benches/apply`).
struct Grouped<'a> {
    numbers: FxHashMap<&'a str, u32>,
    keys: Vec<&'a str>,
    counts: Vec<(u32, BucketKey, u64)>,
}

impl<'a> Grouped<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            numbers: FxHashMap::with_capacity_and_hasher(n, Default::default()),
            keys: Vec::new(),
            counts: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, key: &'a str, bucket: BucketKey, count: u64) {
        let keys = &mut self.keys;
        let number = *self.numbers.entry(key).or_insert_with(|| {
            keys.push(key);
            (keys.len() - 1) as u32
        });
        self.counts.push((number, bucket, count));
    }

    /// Each key with its counts (key number, bucket, count), sorted by
    /// bucket, a bucket's largest count first.
    fn runs(&mut self) -> impl Iterator<Item = (&'a str, &[(u32, BucketKey, u64)])> + '_ {
        self.counts.sort_unstable_by(|(i, a, x), (j, b, y)| {
            (i, a.bucket, a.partition)
                .cmp(&(j, b.bucket, b.partition))
                .then(y.cmp(x))
        });
        let keys = &self.keys;
        self.counts
            .chunk_by(|(i, _, _), (j, _, _)| i == j)
            .map(move |run| (keys[run[0].0 as usize], run))
    }
}

/// What a key holds in `bucket` (0 for nothing).
fn held_in(buckets: Option<&Vec<(BucketKey, u64)>>, bucket: &BucketKey) -> u64 {
    buckets
        .and_then(|b| find_bucket(b, bucket).ok().map(|i| b[i].1))
        .unwrap_or(0)
}
