//! Counts kept in count order, and the exact top-K of words whose count is
//! a sum over several such orders (the threshold algorithm).
//!
//! Every top-K the replica answers is of that shape: a word's merged count
//! is its batch count plus its realtime counts above the cut, and over a
//! range it is that sum over the range's windows. Each part is available in
//! count order (the view's all-time ranking and per-window rankings, built
//! once per view; the realtime [`Ranking`]s, kept up to date as upserts are
//! applied), so a top-K reads each order from the top only until the k-th
//! best sum found beats what any unread word could still reach. It never
//! scans every realtime word, which under load made every top-K cost as
//! much as the realtime counts are large, while holding the replica's lock.

use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

/// Realtime counts above the batch cut, summed per word and kept in count
/// order: one for all time and one per window with realtime counts.
///
/// The order is a map from each sum to the words that have it, not one
/// ordered set of (sum, word): most words share a small sum, and in an
/// ordered set every change compared the word against its many equals,
/// string by string (under 20,000 events/s that was a quarter of the
/// serving layer's time). Words of one sum come in no particular order,
/// which is all [`top_of_sums`] needs.
#[derive(Debug, Default)]
pub(super) struct Ranking {
    /// Each word's sum, and where it stands among the words of that sum.
    sums: FxHashMap<Arc<str>, Place>,
    /// Sum descending, then the words with that sum. A word leaves its list
    /// by `swap_remove` at its place, so a change costs three lookups by
    /// word (its own, the one moved into its place, its new place) and no
    /// search.
    order: BTreeMap<Reverse<u64>, Vec<Arc<str>>>,
}

/// A word's sum and its index in that sum's list of words.
#[derive(Debug, Clone, Copy)]
struct Place {
    sum: u64,
    index: usize,
}

impl Ranking {
    /// Adds `delta` to `word`'s sum.
    pub(super) fn add(&mut self, word: &str, delta: u64) {
        if delta == 0 {
            return;
        }
        let (key, old) = match self.sums.get_key_value(word) {
            Some((key, &place)) => {
                let key = Arc::clone(key);
                self.take_out(place);
                (key, place.sum)
            }
            None => (Arc::<str>::from(word), 0),
        };
        let sum = old + delta;
        let words = self.order.entry(Reverse(sum)).or_default();
        let index = words.len();
        words.push(Arc::clone(&key));
        self.sums.insert(key, Place { sum, index });
    }

    /// Takes the word at `place` out of its sum's list; the word moved into
    /// its index learns its new place.
    fn take_out(&mut self, place: Place) {
        let words = self
            .order
            .get_mut(&Reverse(place.sum))
            .expect("every ranked word is in the order under its sum");
        words.swap_remove(place.index);
        match words.get(place.index) {
            Some(moved) => {
                self.sums
                    .get_mut(&**moved)
                    .expect("every word in the order is ranked")
                    .index = place.index;
            }
            None if words.is_empty() => {
                self.order.remove(&Reverse(place.sum));
            }
            None => {}
        }
    }

    pub(super) fn get(&self, word: &str) -> u64 {
        self.sums.get(word).map_or(0, |p| p.sum)
    }

    /// Count descending; the words of one count in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.order
            .iter()
            .flat_map(|(&Reverse(c), words)| words.iter().map(move |w| (&**w, c)))
    }
}

/// One part of every word's count, in count order (descending): it must
/// yield every word whose part is not zero.
pub(super) type Ordered<'a> = Box<dyn Iterator<Item = (&'a str, u64)> + 'a>;

/// The exact `k` largest non-zero counts, count descending then word
/// ascending, where a word's count is the sum of its parts in `parts` and
/// `count` gives that sum.
///
/// Fagin's threshold algorithm, reading the part whose next row counts most
/// first: a word not read yet counts at most the sum of the next rows'
/// counts of every part. Once the k-th best count found is above that
/// bound, no unread word can enter (or tie into) the top `k`.
pub(super) fn top_of_sums<'a>(
    parts: Vec<Ordered<'a>>,
    count: impl Fn(&str) -> u64,
    k: usize,
) -> Vec<(String, u64)> {
    if k == 0 {
        return Vec::new();
    }
    let mut parts: Vec<_> = parts.into_iter().map(Iterator::peekable).collect();
    // Each part's next count, the largest on top; their sum bounds any
    // word not read yet.
    let mut next: BinaryHeap<(u64, usize)> = parts
        .iter_mut()
        .enumerate()
        .filter_map(|(i, p)| p.peek().map(|&(_, c)| (c, i)))
        .collect();
    let mut bound: u128 = next.iter().map(|&(c, _)| u128::from(c)).sum();
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    // The best `k` so far, the worst of them on top: lowest count, then
    // greatest word.
    let mut best: BinaryHeap<Reverse<(u64, Reverse<&str>)>> = BinaryHeap::new();
    while let Some((c, i)) = next.pop() {
        if best.len() == k
            && best
                .peek()
                .is_some_and(|Reverse((worst, _))| u128::from(*worst) > bound)
        {
            break;
        }
        let (word, _) = parts[i].next().expect("peeked");
        bound -= u128::from(c);
        if let Some(&(_, c)) = parts[i].peek() {
            next.push((c, i));
            bound += u128::from(c);
        }
        if seen.insert(word) {
            let c = count(word);
            if c > 0 {
                best.push(Reverse((c, Reverse(word))));
                if best.len() > k {
                    best.pop();
                }
            }
        }
    }
    let mut out: Vec<(String, u64)> = best
        .into_iter()
        .map(|Reverse((c, Reverse(w)))| (w.to_owned(), c))
        .collect();
    out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ranking(sums: &BTreeMap<String, u64>) -> Ranking {
        let mut r = Ranking::default();
        for (w, &c) in sums {
            // In two steps, as successive upserts would add it.
            r.add(w, c / 2);
            r.add(w, c - c / 2);
        }
        r
    }

    proptest! {
        /// Any sequence of additions: every word's sum as a model adds it
        /// up, in count order, each word where its place says.
        #[test]
        fn a_ranking_holds_every_sum_in_count_order(
            adds in prop::collection::vec(("[a-h]", 0u64..4), 0..80),
        ) {
            let mut r = Ranking::default();
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            for (w, d) in &adds {
                r.add(w, *d);
                *model.entry(w.clone()).or_default() += d;
            }
            model.retain(|_, c| *c > 0);
            for (w, &c) in &model {
                prop_assert_eq!(r.get(w), c);
            }
            let listed: Vec<(&str, u64)> = r.iter().collect();
            prop_assert!(listed.windows(2).all(|p| p[0].1 >= p[1].1), "{:?}", listed);
            let listed: BTreeMap<String, u64> =
                listed.into_iter().map(|(w, c)| (w.to_owned(), c)).collect();
            prop_assert_eq!(&listed, &model);
            for (w, place) in &r.sums {
                prop_assert_eq!(&r.order[&Reverse(place.sum)][place.index], w);
            }
            prop_assert!(r.order.values().all(|words| !words.is_empty()));
        }

        /// The threshold algorithm's top-K == sorting every word's sum.
        #[test]
        fn top_of_sums_equals_sorting_every_sum(
            parts in prop::collection::vec(
                prop::collection::btree_map("[a-f]{1,2}", 0u64..6, 0..30), 0..5),
            k in 0usize..12,
        ) {
            let rankings: Vec<Ranking> = parts.iter().map(ranking).collect();
            let count = |w: &str| rankings.iter().map(|r| r.get(w)).sum::<u64>();
            let got = top_of_sums(
                rankings.iter().map(|r| Box::new(r.iter()) as Ordered<'_>).collect(),
                count,
                k,
            );
            let mut all: BTreeMap<&str, u64> = BTreeMap::new();
            for p in &parts {
                for (w, c) in p {
                    *all.entry(w).or_default() += c;
                }
            }
            let mut want: Vec<(String, u64)> = all
                .into_iter()
                .filter(|&(_, c)| c > 0)
                .map(|(w, c)| (w.to_owned(), c))
                .collect();
            want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            want.truncate(k);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_ranking_keeps_count_order_as_sums_grow() {
        let mut r = Ranking::default();
        r.add("b", 2);
        r.add("a", 1);
        r.add("c", 2);
        r.add("a", 2);
        r.add("b", 0);
        let got: Vec<_> = r.iter().collect();
        assert_eq!(got.iter().map(|&(_, c)| c).collect::<Vec<_>>(), [3, 2, 2]);
        assert_eq!(got[0], ("a", 3));
        let twos: BTreeSet<&str> = got[1..].iter().map(|&(w, _)| w).collect();
        assert_eq!(twos, BTreeSet::from(["b", "c"]));
        assert_eq!((r.get("a"), r.get("z")), (3, 0));
        // A sum that no word has any more is gone from the order.
        r.add("c", 1);
        r.add("b", 1);
        assert_eq!(r.order.len(), 1, "{:?}", r.order);
    }
}
