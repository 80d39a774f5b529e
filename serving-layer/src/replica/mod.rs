//! The replica a serving layer answers from: one batch view and the realtime
//! counts it follows, merged per query.
//!
//! Both halves live behind one lock so a query always sees a view together
//! with realtime counts that fit it: a view is installed with its rankings
//! in one piece, and buckets below its cut, expired a shard at a time
//! after it (see [`swap`]), are ignored by the merge rule until they are. The merge itself is
//! [`lambda_core::merge`]'s rule; this module adds lookup structures and the exact
//! top-K.

use compact_str::CompactString;
pub use lambda_core::merge::Merged;
use lambda_core::merge::{merge, realtime_count};
use lambda_core::realtime::RealtimeUpsert;
use lambda_core::view::{BatchView, Manifest};
use lambda_core::window::{Key, Millis, Window, WindowSettings};
use lambda_core::{BucketKey, BucketSize, Cut, Partition};
use ranking::{top_of_sums, Ordered, Ranking};
use realtime_store::CountKey;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use windows::{SumsCache, WindowRun};

mod ranking;
mod resolve;
mod slices;
mod swap;
mod windows;

pub use slices::{slices, Slice, SLICE_COUNTS};
pub use swap::SHARDS;
use swap::{PendingSwap, Realtime};

/// A verified batch view, loaded for queries.
///
/// Kept in memory as the sorted array the file already is (binary search per
/// lookup) plus an index by count for top-K. `benches/lookup.rs` compares it
/// with sled on a 200k-word view: a lookup takes 353 ns against sled's 514 ns,
/// and loading a version 6.7 ms against 1.46 s; a swap is then a pointer
/// exchange.
#[derive(Debug)]
pub struct LoadedView {
    pub manifest: Manifest,
    view: BatchView,
    /// Indices into `view.words()` of the all-time words, by count
    /// descending then word ascending.
    by_count: Vec<u32>,
    /// The windows the view has counts in.
    windows: BTreeSet<Window>,
    /// Where each window's words are among the windowed keys, and their
    /// order by count (see [`WindowRun`]).
    runs: BTreeMap<Window, WindowRun>,
    /// Per window run, indices into `view.windowed()` by count descending.
    window_order: Vec<u32>,
    /// Its words summed over recently asked ranges (`windows::RangeSums`).
    sums_cache: Mutex<SumsCache>,
}

impl LoadedView {
    /// A view that was never stored (tests, benchmarks): its manifest is
    /// derived from its encoding.
    pub fn unstored(view: BatchView) -> Self {
        let manifest = view.manifest(&view.encode());
        Self::new(manifest, view)
    }

    pub fn new(manifest: Manifest, view: BatchView) -> Self {
        let words = view.words();
        // All-time words only: the windowed keys sort before them.
        let first_word = words.len() - view.plain_words().len();
        let mut by_count: Vec<u32> = (first_word as u32..words.len() as u32).collect();
        by_count.sort_unstable_by(|&a, &b| {
            let (wa, ca) = &words[a as usize];
            let (wb, cb) = &words[b as usize];
            cb.cmp(ca).then_with(|| wa.cmp(wb))
        });
        let (windows, runs, window_order) = windows::index(view.windowed());
        Self {
            manifest,
            view,
            by_count,
            windows,
            runs,
            window_order,
            sums_cache: Mutex::default(),
        }
    }

    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    /// The counts themselves.
    pub fn batch_view(&self) -> &BatchView {
        &self.view
    }

    pub fn cut(&self) -> &Cut {
        &self.manifest.header.cut
    }

    pub fn get(&self, word: &str) -> u64 {
        self.view.get(word)
    }

    /// Words by batch count descending, then word ascending.
    fn ranked(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        let words = self.view.words();
        self.by_count.iter().map(move |&i| {
            let (w, c) = &words[i as usize];
            (&**w, *c)
        })
    }
}

/// Where `bucket` is, or would go, in a word's buckets, which are sorted by
/// bucket number, then partition. Every partition's buckets advance
/// together, so nearly every upsert is for one of the last few (each
/// partition's newest, side by side) or a new one after them: those are
/// looked at first, from the end, in the cache lines the last one is in;
/// the rest by binary search. Under load with small buckets a frequent word
/// holds thousands, and a linear search for each new one took a quarter of
/// the serving layer's CPU; a binary search over all of them, for the
/// newest bucket of any but the last partition, was a dozen cache misses.
fn find_bucket(buckets: &[(BucketKey, u64)], bucket: &BucketKey) -> Result<usize, usize> {
    let order = |k: &BucketKey| (k.bucket, k.partition);
    let wanted = order(bucket);
    let near = buckets.len().saturating_sub(NEAR_END);
    for (i, (k, _)) in buckets.iter().enumerate().skip(near).rev() {
        match order(k).cmp(&wanted) {
            std::cmp::Ordering::Less => return Err(i + 1),
            std::cmp::Ordering::Equal => return Ok(i),
            std::cmp::Ordering::Greater => {}
        }
    }
    buckets[..near].binary_search_by(|(k, _)| order(k).cmp(&wanted))
}

/// How many of a word's newest buckets [`find_bucket`] looks at one by one.
const NEAR_END: usize = 16;

/// Raises a key's buckets to `counts` where they are higher (counts only
/// grow); returns what that adds above each of `cuts` (the current view's,
/// and the one of a view on its way), for their rankings.
fn raise(
    buckets: &mut Vec<(BucketKey, u64)>,
    counts: &[(BucketKey, u64)],
    cuts: [Option<&Cut>; 2],
    size: BucketSize,
) -> [u64; 2] {
    let mut added = [0; 2];
    for &(bucket, count) in counts {
        let i = find_bucket(buckets, &bucket);
        let held = i.map_or(0, |i| buckets[i].1);
        if count <= held {
            continue;
        }
        for (added, cut) in added.iter_mut().zip(cuts) {
            if cut.is_some_and(|c| c.is_realtime_bucket(size, bucket.partition, bucket.bucket)) {
                *added += count - held;
            }
        }
        match i {
            Ok(i) => buckets[i].1 = count,
            Err(i) => buckets.insert(i, (bucket, count)),
        }
    }
    added
}

/// Marks `key`'s window, if it has one, as holding realtime counts: which
/// windows do is known at once (ranged answers read it), their rankings
/// may lag (see [`Replica::rank_pending`]).
fn note_window(windows: &mut BTreeMap<Window, Ranking>, key: &str) {
    if let Some(w) = Key::window_of(key) {
        windows.entry(w).or_default();
    }
}

/// Adds `delta` to `key`'s realtime ranking: the all-time one for a word,
/// its window's for a windowed key (a late-events key only marks its window
/// as having realtime counts).
fn rank(all: &mut Ranking, windows: &mut BTreeMap<Window, Ranking>, key: &str, delta: u64) {
    match Key::parse(key) {
        Some(Key::Word(word)) => all.add(word, delta),
        Some(Key::InWindow(w, word)) => windows.entry(w).or_default().add(word, delta),
        Some(Key::Late(w)) => {
            windows.entry(w).or_default();
        }
        // Ranked as part of the all-time count derived from it.
        Some(Key::Untimed(_)) | None => {}
    }
}

/// The merged state.
#[derive(Debug)]
pub struct Replica {
    size: BucketSize,
    windows: WindowSettings,
    view: Option<Arc<LoadedView>>,
    /// Realtime counts by key, then bucket, in shards (see [`swap`]).
    realtime: Realtime,
    /// Realtime counts above the cut per word, in count order (see
    /// [`Ranking`]): all-time ones …
    ranked: Ranking,
    /// … and per window with realtime counts above the cut (a window with
    /// only late events has an empty one).
    ranked_windows: BTreeMap<Window, Ranking>,
    /// Per partition, the newest timestamp that moved its watermark, as the
    /// realtime watermarks tell (the view's own is in its header).
    newest: BTreeMap<Partition, Millis>,
    /// The events position the realtime counts are exact at.
    realtime_as_of: Cut,
    realtime_loaded: bool,
    /// Bumped on every change, so derived answers (top-K) can be cached.
    generation: u64,
    /// A view on its way in (see [`swap`]).
    pending: Option<PendingSwap>,
    /// What the realtime counts gained above the cut since the rankings
    /// last took it in, per key (see [`Self::rank_pending`]).
    unranked: FxHashMap<CompactString, u64>,
}

/// The rankings take in what they lag behind once this many keys wait.
const UNRANKED_MAX: usize = 1 << 16;

impl Replica {
    pub fn new(size: BucketSize) -> Self {
        Self {
            size,
            windows: WindowSettings::default(),
            view: None,
            realtime: Realtime::default(),
            ranked: Ranking::default(),
            ranked_windows: BTreeMap::new(),
            newest: BTreeMap::new(),
            realtime_as_of: Cut::new(),
            realtime_loaded: false,
            generation: 0,
            pending: None,
            unranked: FxHashMap::default(),
        }
    }

    /// The same replica with other event-time settings.
    pub fn with_windows(mut self, windows: WindowSettings) -> Self {
        self.windows = windows;
        self
    }

    pub fn bucket_size(&self) -> BucketSize {
        self.size
    }

    pub fn windows(&self) -> &WindowSettings {
        &self.windows
    }

    pub fn view(&self) -> Option<&Arc<LoadedView>> {
        self.view.as_ref()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Ready once a batch view or realtime counts are loaded.
    pub fn is_ready(&self) -> bool {
        self.view.is_some() || self.realtime_loaded
    }

    pub fn realtime_as_of(&self) -> &Cut {
        &self.realtime_as_of
    }

    /// The starts past a checkpoint (of `starts`, see
    /// [`lambda_core::realtime::Watermark::starts`]) beyond everything this
    /// replica covers — its view's cut and its realtime counts. Applying
    /// counts from there would leave the events in between counted nowhere
    /// while `as_of` claimed them, so they wait for a view whose cut reaches
    /// them. (Then a swap's reconciliation never sees such a gap either: the
    /// realtime counts are below the new cut until the view is in.)
    pub fn uncovered_starts(&self, starts: &Cut) -> Cut {
        let as_of = self.as_of();
        starts.iter().filter(|&(p, s)| s > as_of.get(p)).collect()
    }

    /// How many (word, bucket) counts are held.
    pub fn realtime_entries(&self) -> usize {
        self.realtime.entries()
    }

    /// The current view's cut (empty before the first view).
    fn cut(&self) -> &Cut {
        static NONE: std::sync::OnceLock<Cut> = std::sync::OnceLock::new();
        self.view
            .as_ref()
            .map_or_else(|| NONE.get_or_init(Cut::new), |v| v.cut())
    }

    /// The position every answer is exact at: per partition, whichever of
    /// the batch cut and the realtime position is further. (When the batch
    /// cut is ahead, the realtime buckets at or above it are still empty.)
    pub fn as_of(&self) -> Cut {
        let cut = self.cut();
        let mut as_of = cut.clone();
        for (p, o) in self.realtime_as_of.iter() {
            as_of.set(p, o.max(cut.get(p)));
        }
        as_of
    }

    /// One word's count, by the core's merge rule.
    pub fn word(&self, word: &str) -> Merged {
        self.merged(word)
    }

    /// One key's count (a word's, or a windowed key's), by the merge rule.
    fn merged(&self, key: &str) -> Merged {
        let batch = self.view.as_ref().map_or(0, |v| v.get(key));
        let buckets = self.realtime.get(key).map_or(&[][..], |b| &b[..]);
        merge(batch, self.cut(), self.size, buckets.iter().copied())
    }

    /// Whether the rankings hold every realtime count applied, as a top-K
    /// needs them to; if not, [`Self::rank_pending`] first.
    pub fn is_ranked(&self) -> bool {
        self.unranked.is_empty()
    }

    /// Brings the realtime rankings up to date with the counts applied.
    ///
    /// They only serve top-K answers, while every release changes them: a
    /// frequent word gains in each one, and re-placing it in its ranking
    /// each time was the largest part of applying a release under load
    /// (8 % of the demo's samples at 20,000 events/s, `apply` 20 %). So a
    /// release only adds to a word's gain here, and a top-K (or this many
    /// words waiting, [`UNRANKED_MAX`]) ranks it once. A view swap's new
    /// rankings are built from the counts themselves and drop what waits.
    pub fn rank_pending(&mut self) {
        for (key, delta) in self.unranked.drain() {
            rank(&mut self.ranked, &mut self.ranked_windows, &key, delta);
        }
    }

    /// Ranks `n` of the keys waiting (any; all if fewer wait).
    fn rank_some(&mut self, mut n: usize) {
        let (ranked, windows) = (&mut self.ranked, &mut self.ranked_windows);
        self.unranked.retain(|key, delta| {
            if n == 0 {
                return true;
            }
            n -= 1;
            rank(ranked, windows, key, *delta);
            false
        });
    }

    /// The exact `k` largest merged counts, count descending then word
    /// ascending: the threshold algorithm (see [`ranking`]) over the view's
    /// ranking and the realtime one. The rankings must be up to date
    /// ([`Self::is_ranked`]).
    pub fn top(&self, k: usize) -> Vec<(String, u64)> {
        assert!(self.is_ranked(), "a top-K needs the rankings up to date");
        let mut parts: Vec<Ordered<'_>> = vec![Box::new(self.ranked.iter())];
        if let Some(view) = &self.view {
            parts.push(Box::new(view.ranked()));
        }
        let batch = |w: &str| self.view.as_ref().map_or(0, |v| v.get(w));
        top_of_sums(parts, |w| batch(w) + self.ranked.get(w), k)
    }

    /// Applies resolved counts and moves the realtime position to `as_of`.
    /// Counts apply as `max` with what is held, in any order; a word's
    /// counts next to each other (as [`Self::resolve`] gives them) are
    /// applied with one lookup and one change of its ranking.
    pub fn apply(&mut self, counts: Vec<(CountKey, u64)>, as_of: Cut) {
        let cut = self.cut().clone();
        let size = self.size;
        let mut counts = counts.into_iter().peekable();
        let mut run = Vec::new();
        while let Some((CountKey { bucket, word }, count)) = counts.next() {
            run.clear();
            run.push((bucket, count));
            while let Some((next, _)) = counts.peek() {
                if next.word != word {
                    break;
                }
                let (next, count) = counts.next().expect("peeked");
                run.push((next.bucket, count));
            }
            let shard = Realtime::shard_of(&word);
            // A view on its way whose rankings already hold this shard
            // ranks what is added above its cut too (see `swap`).
            let pending = self.pending.as_mut().filter(|p| shard < p.ranked_shards);
            let cuts = [Some(&cut), pending.as_ref().map(|p| p.view.cut())];
            let shard = self.realtime.shard_mut(shard);
            let added = match shard.get_mut(&*word) {
                Some(buckets) => raise(buckets, &run, cuts, size),
                None => {
                    let mut buckets = Vec::new();
                    let added = raise(&mut buckets, &run, cuts, size);
                    if !buckets.is_empty() {
                        shard.insert(CompactString::from(&*word), buckets);
                    }
                    added
                }
            };
            if let Some(p) = pending.filter(|_| added[1] > 0) {
                rank(&mut p.ranked, &mut p.ranked_windows, &word, added[1]);
            }
            if added[0] > 0 {
                note_window(&mut self.ranked_windows, &word);
                match self.unranked.get_mut(&*word) {
                    Some(delta) => *delta += added[0],
                    None => {
                        self.unranked.insert(CompactString::from(&*word), added[0]);
                    }
                }
            }
        }
        if self.unranked.len() > UNRANKED_MAX {
            // A little below the bound, so that not every release ranks;
            // no further, so that the slices of a large release (see
            // `slices`) each hold the lock for a share of their own size.
            self.rank_some(self.unranked.len() - UNRANKED_MAX + UNRANKED_MAX / 16);
        }
        self.realtime_as_of = as_of;
        self.realtime_loaded = true;
        self.generation += 1;
    }

    /// Restores realtime counts from the durable store at start.
    pub fn restore(&mut self, counts: FxHashMap<CountKey, u64>, as_of: Cut) {
        let loaded = !counts.is_empty() || !as_of.is_empty();
        self.apply(counts.into_iter().collect(), as_of);
        self.realtime_loaded = loaded;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_core::view::ViewOrigin;
    use lambda_core::window::Range;
    use lambda_core::Tokenizer;
    use proptest::prelude::*;

    pub(crate) fn view(
        version: u64,
        cut: Cut,
        size: BucketSize,
        words: &[(&str, u64)],
    ) -> LoadedView {
        let words = words.iter().map(|(w, c)| ((*w).into(), *c)).collect();
        LoadedView::unstored(BatchView::build(ViewOrigin::new(version, cut, size), words))
    }

    fn upsert(word: &str, partition: i32, bucket: u64, count: u64) -> RealtimeUpsert {
        RealtimeUpsert {
            word: word.into(),
            partition,
            bucket,
            count,
        }
    }

    #[test]
    fn merges_batch_and_realtime_at_or_above_the_cut() {
        let size = BucketSize::new(10).expect("10");
        let mut r = Replica::new(size);
        assert!(!r.is_ready());
        let cut: Cut = [(0, 20)].into_iter().collect();
        r.swap_view(Arc::new(view(1, cut, size, &[("a", 5), ("b", 2)])));
        let counts = r.resolve(&[
            upsert("a", 0, 1, 9),
            upsert("a", 0, 2, 3),
            upsert("c", 0, 3, 1),
        ]);
        // Bucket 1 (offsets 10..20) is below the cut: the batch view has it.
        assert_eq!(counts.len(), 2);
        r.apply(counts, [(0, 35)].into_iter().collect());
        assert_eq!(
            r.word("a"),
            Merged {
                batch: 5,
                realtime: 3
            }
        );
        assert_eq!(r.word("c").total(), 1);
        assert_eq!(r.word("zzz").total(), 0);
        assert_eq!(r.as_of(), [(0, 35)].into_iter().collect());
        assert!(!r.is_ranked(), "the rankings wait for a top-K");
        r.rank_pending();
        assert_eq!(r.top(2), vec![("a".to_owned(), 8), ("b".to_owned(), 2)]);
    }

    #[test]
    fn more_keys_waiting_than_the_bound_are_ranked_in_part_and_top_k_stays_exact() {
        let size = BucketSize::new(10).expect("10");
        let mut r = Replica::new(size);
        let n = UNRANKED_MAX + 1_000;
        let count = |i: usize| (i % 97 + 1) as u64;
        let upserts: Vec<RealtimeUpsert> = (0..n)
            .map(|i| upsert(&format!("w{i}"), 0, 0, count(i)))
            .collect();
        let resolved = r.resolve(&upserts);
        r.apply(resolved, [(0, 5)].into_iter().collect());
        // The excess and a sixteenth of the bound went into the rankings.
        assert_eq!(r.unranked.len(), UNRANKED_MAX - UNRANKED_MAX / 16);
        r.rank_pending();
        let mut expected: Vec<(String, u64)> =
            (0..n).map(|i| (format!("w{i}"), count(i))).collect();
        expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        expected.truncate(5);
        assert_eq!(r.top(5), expected);
        // Every key's gain is in the rankings once: none lost, none twice.
        let ranked: u64 = r.top(usize::MAX).iter().map(|(_, c)| c).sum();
        assert_eq!(ranked, (0..n).map(count).sum::<u64>());
    }

    #[test]
    fn upserts_apply_as_max_and_older_views_are_refused() {
        let size = BucketSize::new(10).expect("10");
        let mut r = Replica::new(size);
        let first = r.resolve(&[upsert("a", 0, 0, 4), upsert("a", 0, 0, 2)]);
        r.apply(first, Cut::new());
        let again = r.resolve(&[upsert("a", 0, 0, 3)]);
        r.apply(again, Cut::new());
        assert_eq!(r.word("a").total(), 4);
        assert!(r.swap_view(Arc::new(view(2, Cut::new(), size, &[]))));
        assert!(!r.swap_view(Arc::new(view(1, Cut::new(), size, &[("a", 100)]))));
        assert_eq!(r.view().map(|v| v.version()), Some(2));
    }

    #[test]
    fn all_time_counts_grow_by_what_windowed_ones_add_unless_given() {
        let size = BucketSize::new(10).expect("10");
        let mut r = Replica::new(size);
        let (w1, w2) = (Window(1), Window(2));
        let in_window = |w, word| Key::InWindow(w, word).encode();
        let release = [
            upsert(&in_window(w1, "a"), 0, 0, 3),
            upsert(&in_window(w2, "a"), 0, 0, 2),
            upsert(&Key::Untimed("a").encode(), 0, 0, 1),
            upsert(&in_window(w1, "a"), 0, 1, 4),
            // The same count twice (a coalesced release), and a smaller one.
            upsert(&in_window(w1, "b"), 0, 0, 5),
            upsert(&in_window(w1, "b"), 0, 0, 5),
            upsert(&in_window(w1, "b"), 0, 0, 2),
        ];
        let resolved = r.resolve(&release);
        r.apply(resolved, Cut::new());
        assert_eq!(r.word("a").total(), 10);
        assert_eq!(r.word("b").total(), 5);
        r.rank_pending();
        assert_eq!(r.top(1), vec![("a".to_owned(), 10)]);
        // Redelivered, or behind what is held: nothing more.
        let again = r.resolve(&[
            upsert(&in_window(w1, "a"), 0, 0, 3),
            upsert(&in_window(w1, "b"), 0, 0, 4),
        ]);
        r.apply(again, Cut::new());
        assert_eq!((r.word("a").total(), r.word("b").total()), (10, 5));
        // Grown: the all-time count grows by as much.
        let grown = r.resolve(&[upsert(&in_window(w2, "a"), 0, 0, 6)]);
        r.apply(grown, Cut::new());
        assert_eq!(r.word("a").total(), 14);
        // A bucket counted before the rule gives its all-time count with
        // the windowed ones of the same events: it stands, and they add
        // nothing to it — even where what is held has the all-time count
        // ahead of the windowed ones.
        let given = r.resolve(&[upsert("c", 0, 0, 1)]);
        r.apply(given, Cut::new());
        let given = r.resolve(&[
            upsert("c", 0, 0, 2),
            upsert(&in_window(w1, "c"), 0, 0, 1),
            upsert(&in_window(w2, "c"), 0, 0, 1),
        ]);
        r.apply(given, Cut::new());
        assert_eq!(r.word("c").total(), 2);
        let windows = Range {
            from: w1,
            to: Window(3),
        };
        assert_eq!(r.word_in("c", windows).total(), 2);
        assert_eq!(
            r.word_in("a", windows).total(),
            13,
            "the untimed one is in no window"
        );
    }

    #[test]
    fn counts_started_past_what_the_replica_covers_are_named() {
        let size = BucketSize::new(10).expect("10");
        let mut r = Replica::new(size);
        let starts: Cut = [(0, 20), (1, 40)].into_iter().collect();
        assert_eq!(r.uncovered_starts(&starts), starts, "nothing covered yet");
        r.swap_view(Arc::new(view(
            1,
            [(0, 10), (1, 40)].into_iter().collect(),
            size,
            &[],
        )));
        r.apply(Vec::new(), [(0, 15), (1, 42)].into_iter().collect());
        // Partition 0's counts end at 15 and the view's cut is 10: the
        // speed layer's counts from 20 would leave 15..20 counted nowhere.
        assert_eq!(r.uncovered_starts(&starts), [(0, 20)].into_iter().collect());
        // Counts reaching the start cover it, like a view whose cut does.
        r.apply(Vec::new(), [(0, 20), (1, 42)].into_iter().collect());
        assert!(r.uncovered_starts(&starts).is_empty());
        r.swap_view(Arc::new(view(
            2,
            [(0, 30), (1, 40)].into_iter().collect(),
            size,
            &[],
        )));
        assert!(r
            .uncovered_starts(&[(0, 30)].into_iter().collect())
            .is_empty());
    }

    /// The event-time settings of the property test: 10 s windows.
    /// A range over enough of the view's windows is first answered window
    /// by window while the view's sums over it are computed in the
    /// background, then from those sums: the same exact answer.
    #[test]
    fn a_ranged_top_k_reads_the_views_sums_once_computed_in_the_background() {
        let size = BucketSize::new(10).expect("10");
        let range = Range {
            from: Window(101),
            to: Window(110),
        };
        let (mut keys, mut totals, mut in_range) = (
            Vec::new(),
            BTreeMap::<String, u64>::new(),
            BTreeMap::<String, u64>::new(),
        );
        for w in 100..112u64 {
            for i in 0..30u64 {
                let (word, c) = (format!("w{i}"), (i * 7 + w * 3) % 11 + 1);
                keys.push((Key::InWindow(Window(w), &word).encode(), c));
                *totals.entry(word.clone()).or_default() += c;
                if range.contains(Window(w)) {
                    *in_range.entry(word).or_default() += c;
                }
            }
        }
        keys.extend(totals);
        keys.sort();
        let refs: Vec<(&str, u64)> = keys.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        let loaded = Arc::new(view(1, [(0, 20)].into_iter().collect(), size, &refs));
        let mut r = Replica::new(size);
        r.swap_view(Arc::clone(&loaded));
        // Realtime counts above the cut lift "w29" in one window of the range.
        let late_word = Key::InWindow(Window(105), "w29").encode();
        let resolved = r.resolve(&[upsert(&late_word, 0, 2, 40)]);
        r.apply(resolved, [(0, 25)].into_iter().collect());
        *in_range.entry("w29".into()).or_default() += 40;
        let mut want: Vec<(String, u64)> = in_range.into_iter().collect();
        want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        want.truncate(5);

        assert!(!loaded.has_range_sums(range));
        r.rank_pending();
        assert_eq!(r.top_in(range, 5), want, "window by window");
        let started = std::time::Instant::now();
        while !loaded.has_range_sums(range) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "sums never ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(r.top_in(range, 5), want, "from the view's sums");
        // A range over fewer windows is never summed.
        let short = Range {
            from: Window(101),
            to: Window(104),
        };
        r.top_in(short, 5);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!loaded.has_range_sums(short));
    }

    pub(super) fn test_windows() -> WindowSettings {
        WindowSettings {
            size: lambda_core::window::WindowSize::from_millis(10_000).expect("non-zero"),
            allowed_lateness_ms: 5_000,
            ..WindowSettings::default()
        }
    }

    /// Every key an event counts under in a batch view (its words, its
    /// words in its window, and its window's late key if it arrived late;
    /// `mark` is its partition's watermark before it), then in the speed
    /// layer: the same but each word once, in its window or as untimed —
    /// or, for a partition counted before that rule (`all_time`), as the
    /// batch view counts it.
    pub(super) fn keys_of(
        text: &str,
        t: Option<i64>,
        mark: &mut lambda_core::window::EventWatermark,
        tokenizer: &mut Tokenizer,
        all_time: bool,
    ) -> (Vec<String>, Vec<String>) {
        let s = test_windows();
        let arrival = mark.arrive(s.size, t, false);
        let window = arrival.window(s.size, t);
        let (mut batch, mut speed) = (Vec::new(), Vec::new());
        tokenizer.for_each_word(text, |w| {
            batch.push(w.to_owned());
            if let Some(window) = window {
                batch.push(Key::InWindow(window, w).encode());
            }
            speed.push(match window {
                Some(window) => Key::InWindow(window, w).encode(),
                None => Key::Untimed(w).encode(),
            });
        });
        if let (lambda_core::window::Arrival::Late, Some(window)) = (arrival, window) {
            batch.push(Key::Late(window).encode());
            speed.push(Key::Late(window).encode());
        }
        if all_time {
            speed = batch.clone();
        }
        (batch, speed)
    }

    /// Per partition, per event: its keys in a batch view and in the speed
    /// layer (see [`keys_of`]; `all_time_partition` as there).
    pub(super) type Keys = (Vec<String>, Vec<String>);

    pub(super) fn keys_by_partition(
        events: &[(i32, String, Option<i64>)],
        all_time_partition: Option<i32>,
    ) -> BTreeMap<i32, Vec<Keys>> {
        let mut per_partition: BTreeMap<i32, Vec<Keys>> = BTreeMap::new();
        let mut marks: BTreeMap<i32, lambda_core::window::EventWatermark> = BTreeMap::new();
        let mut tokenizer = Tokenizer::new();
        for (p, text, t) in events {
            let mark = marks
                .entry(*p)
                .or_insert_with(|| test_windows().watermark());
            let all_time = all_time_partition == Some(*p);
            let keys = keys_of(text, *t, mark, &mut tokenizer, all_time);
            per_partition.entry(*p).or_default().push(keys);
        }
        per_partition
    }

    /// The batch view's counts at `cut`: every key the events below it
    /// count under.
    pub(super) fn recount(
        per_partition: &BTreeMap<i32, Vec<Keys>>,
        cut: &Cut,
    ) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (&p, events) in per_partition {
            for (batch, _) in events.iter().take(cut.get(p).max(0) as usize) {
                for key in batch {
                    *counts.entry(key.clone()).or_default() += 1;
                }
            }
        }
        counts
    }

    /// A stream of events split at a random aligned cut into a batch view
    /// (below) and realtime upserts (all of it, as the speed layer may still
    /// hold expired buckets); a swap to a later cut must keep every merged
    /// count, all-time and over random event-time ranges, and top-K must
    /// equal sorting the recount.
    fn check_against_recount(
        events: &[(i32, String, Option<i64>)],
        size: u64,
        cut_at: &[u64],
        swap_to: &[u64],
        (k, ranges): (usize, &[(i64, i64)]),
        slices_before: usize,
        all_time_partition: Option<i32>,
    ) -> Result<(), TestCaseError> {
        let size = BucketSize::new(size).expect("positive");
        let per_partition = keys_by_partition(events, all_time_partition);
        let mut truth: BTreeMap<String, u64> = BTreeMap::new();
        let mut realtime: BTreeMap<(i32, u64, String), u64> = BTreeMap::new();
        let cut_of = |fractions: &[u64]| -> Cut {
            per_partition
                .iter()
                .enumerate()
                .map(|(i, (&p, evs))| {
                    let f = fractions.get(i).copied().unwrap_or(0) % 101;
                    (p, size.align_down((evs.len() as u64 * f / 100) as i64))
                })
                .collect()
        };
        let batch_counts = |cut: &Cut| recount(&per_partition, cut);
        for (&p, evs) in &per_partition {
            for (o, (batch_keys, speed_keys)) in evs.iter().enumerate() {
                for key in batch_keys {
                    *truth.entry(key.clone()).or_default() += 1;
                }
                for key in speed_keys {
                    *realtime
                        .entry((p, size.bucket_of(o as i64), key.clone()))
                        .or_default() += 1;
                }
            }
        }
        let first_cut = cut_of(cut_at);
        let first: Vec<(String, u64)> = batch_counts(&first_cut).into_iter().collect();
        let first: Vec<(&str, u64)> = first.iter().map(|(w, c)| (w.as_str(), *c)).collect();
        let mut replica = Replica::new(size).with_windows(test_windows());
        replica.swap_view(Arc::new(view(1, first_cut.clone(), size, &first)));
        // Two releases, as the follower sees them under load: an earlier
        // one with part of each count, then one carrying the final counts
        // followed by older (smaller) ones again, as a coalesced release
        // can. Counts apply as `max`: the largest must win.
        let halves: Vec<RealtimeUpsert> = realtime
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|((p, b, w), c)| upsert(w, *p, *b, c / 2))
            .collect();
        let mut upserts: Vec<RealtimeUpsert> = realtime
            .iter()
            .map(|((p, b, w), c)| upsert(w, *p, *b, *c))
            .collect();
        upserts.extend(halves.iter().cloned());
        let ends: Cut = per_partition
            .iter()
            .map(|(&p, e)| (p, e.len() as i64))
            .collect();
        let resolved = replica.resolve(&halves);
        replica.apply(resolved, Cut::new());
        let resolved = replica.resolve(&upserts);
        replica.apply(resolved, ends.clone());

        let ranked = |counts: BTreeMap<String, u64>| {
            let mut expected: Vec<(String, u64)> = counts.into_iter().collect();
            expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            expected.truncate(k);
            expected
        };
        let all_time: BTreeMap<String, u64> = truth
            .iter()
            .filter(|(w, _)| Key::is_word(w))
            .map(|(w, c)| (w.clone(), *c))
            .collect();
        let window_size = test_windows().size;
        // Counts are exact whether or not the rankings have taken in the
        // last releases; a top-K takes them in first.
        let check = |replica: &mut Replica| -> Result<(), TestCaseError> {
            for (w, c) in &all_time {
                prop_assert_eq!(replica.word(w).total(), *c, "word {}", w);
            }
            // Counts first with the rankings as they are, then top-Ks.
            for top_k in [false, true] {
                if top_k {
                    replica.rank_pending();
                    prop_assert_eq!(replica.top(k), ranked(all_time.clone()));
                }
                for &(from, len) in ranges {
                    let Some(range) = Range::rounded(window_size, from, from + len) else {
                        continue;
                    };
                    let (mut in_range, mut late) = (BTreeMap::new(), 0);
                    let mut series: BTreeMap<String, Vec<(Window, u64)>> = BTreeMap::new();
                    for (key, c) in &truth {
                        match Key::parse(key) {
                            Some(Key::InWindow(w, word)) if range.contains(w) => {
                                *in_range.entry(word.to_owned()).or_insert(0) += c;
                                series.entry(word.to_owned()).or_default().push((w, *c));
                            }
                            Some(Key::Late(w)) if range.contains(w) => late += c,
                            _ => {}
                        }
                    }
                    for word in all_time.keys() {
                        let want = in_range.get(word).copied().unwrap_or(0);
                        prop_assert_eq!(
                            replica.word_in(word, range).total(),
                            want,
                            "{} in {:?}",
                            word,
                            range
                        );
                        let mut want_series = series.get(word).cloned().unwrap_or_default();
                        want_series.sort();
                        let got: Vec<(Window, u64)> = replica
                            .series(word, range)
                            .into_iter()
                            .map(|(w, m)| (w, m.total()))
                            .collect();
                        prop_assert_eq!(got, want_series);
                    }
                    prop_assert_eq!(replica.late_in(range), late);
                    if !top_k {
                        continue;
                    }
                    // Both ways of reading the view's side: window by window
                    // and from its sums over the range.
                    let sums = replica.view.as_ref().map(|v| v.sums(range));
                    prop_assert_eq!(
                        replica.top_in_with(range, k, sums.as_ref()),
                        ranked(in_range.clone())
                    );
                    prop_assert_eq!(replica.top_in(range, k), ranked(in_range));
                }
            }
            Ok(())
        };
        check(&mut replica)?;

        // A later view: the union of both cuts, so it only moves forward.
        let second_cut: Cut = cut_of(swap_to)
            .iter()
            .map(|(p, o)| (p, o.max(replica.cut().get(p))))
            .collect();
        let second: Vec<(String, u64)> = batch_counts(&second_cut).into_iter().collect();
        let second: Vec<(&str, u64)> = second.iter().map(|(w, c)| (w.as_str(), *c)).collect();
        replica.swap_view(Arc::new(view(2, second_cut.clone(), size, &second)));
        check(&mut replica)?;
        replica.expire();
        check(&mut replica)?;

        // The same, but the final release is applied while the second view
        // is on its way, `slices_before` shards ranked for it (the follower
        // applies between a swap's slices, see `swap`), and expiry comes a
        // shard at a time.
        let mut sliced = Replica::new(size).with_windows(test_windows());
        sliced.swap_view(Arc::new(view(1, first_cut, size, &first)));
        let resolved = sliced.resolve(&halves);
        sliced.apply(resolved, Cut::new());
        prop_assert!(sliced.begin_swap(Arc::new(view(2, second_cut, size, &second))));
        for _ in 0..slices_before {
            sliced.rerank_slice();
        }
        let resolved = sliced.resolve(&upserts);
        sliced.apply(resolved, ends);
        prop_assert!(sliced.finish_swap());
        check(&mut sliced)?;
        for shard in 0..SHARDS / 2 {
            sliced.expire_shard(shard);
        }
        check(&mut sliced)?;
        for shard in SHARDS / 2..SHARDS {
            sliced.expire_shard(shard);
        }
        prop_assert_eq!(sliced.realtime_entries(), replica.realtime_entries());
        check(&mut sliced)
    }

    proptest! {
        #[test]
        fn finding_a_bucket_agrees_with_a_binary_search(
            held in prop::collection::btree_set((0..60u64, 0..6i32), 0..80),
            wanted in (0..62u64, 0..6i32),
        ) {
            let buckets: Vec<(BucketKey, u64)> = held
                .iter()
                .map(|&(bucket, partition)| (BucketKey { partition, bucket }, 1))
                .collect();
            let (bucket, partition) = wanted;
            let reference = held.iter().position(|&h| h == wanted).ok_or_else(|| {
                held.iter().filter(|&&h| h < wanted).count()
            });
            prop_assert_eq!(find_bucket(&buckets, &BucketKey { partition, bucket }), reference);
        }

        #[test]
        fn merged_counts_and_top_k_equal_a_recount(
            events in prop::collection::vec(
                (0..3i32, "[a-e ]{0,12}", prop::option::weighted(0.9, 0i64..100_000)),
                0..120,
            ),
            size in 1..8u64,
            cut_at in prop::collection::vec(0..=100u64, 3),
            swap_to in prop::collection::vec(0..=100u64, 3),
            k in 1..8usize,
            ranges in prop::collection::vec((0i64..100_000, 0i64..60_000), 3),
            slices_before in 0..=SHARDS,
            all_time_partition in prop::option::of(0..3i32),
        ) {
            check_against_recount(
                &events, size, &cut_at, &swap_to, (k, &ranges), slices_before, all_time_partition,
            )?;
        }
    }
}
