//! Reconciliation at every view swap: the running proof that the batch and
//! speed layers agree.
//!
//! The batch and speed layers are two independent implementations of the
//! same count. When a serving layer swaps view `old` (cut `c1`) for view
//! `new` (cut `c2`), for every word
//!
//! ```text
//! new(w) − old(w) == Σ realtime(w, p, b)  over buckets b in [c1[p], c2[p])
//! ```
//!
//! must hold, provided the replica's realtime counts cover `c2` (its `as_of`
//! is at or past `c2` on every partition whose cut moved): then every event
//! between the two cuts has been counted by both layers. The check runs on
//! the data the replica already holds, before the swap drops those buckets.
//! A swap whose realtime counts do not cover the new cut (the speed layer
//! behind, or restarted past it) is skipped, naming the partitions; batch
//! views are not split per partition, so one uncovered partition skips the
//! whole comparison.

use common::sync::LockOrStop;
use lambda_core::view::BatchView;
use lambda_core::window::Key;
use lambda_core::{Cut, Partition};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Mutex;
use utoipa::ToSchema;

/// At most this many mismatched words are kept as examples per swap.
const EXAMPLES: usize = 10;

/// One word whose two counts disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Mismatch {
    pub word: String,
    /// `new(w) − old(w)`: what the batch layer counted between the cuts.
    pub batch_delta: i64,
    /// What the speed layer counted between the cuts.
    pub realtime: u64,
}

/// What the check of one swap found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SwapCheck {
    pub from_version: u64,
    pub to_version: u64,
    /// Words compared (0 when skipped).
    pub words: u64,
    pub mismatches: u64,
    /// Up to ten of them.
    pub examples: Vec<Mismatch>,
    /// Partitions whose realtime counts did not cover the new cut; when any,
    /// the swap was not compared.
    pub skipped_partitions: Vec<Partition>,
}

impl SwapCheck {
    /// The check of the swap from one version to the next, before anything
    /// was compared.
    pub fn new(from_version: u64, to_version: u64) -> Self {
        Self {
            from_version,
            to_version,
            words: 0,
            mismatches: 0,
            examples: Vec::new(),
            skipped_partitions: Vec::new(),
        }
    }
}

/// The partitions whose cut moved from `old` to `new` but whose realtime
/// counts (exact at `as_of`) do not reach `new`.
pub fn uncovered(old: &Cut, new: &Cut, as_of: &Cut) -> Vec<Partition> {
    new.iter()
        .filter(|&(p, c2)| c2 > old.get(p) && as_of.get(p) < c2)
        .map(|(p, _)| p)
        .collect()
}

/// Compares `new − old` with `between` (per word, the realtime counts of the
/// buckets between the two cuts) over every word of either. Windowed counts
/// are compared where both views keep them: the new view's retention drops
/// old windows, and a view from before windows has none.
pub fn check(old: &BatchView, new: &BatchView, mut between: FxHashMap<Box<str>, u64>) -> SwapCheck {
    let mut result = SwapCheck::new(old.header.version, new.header.version);
    let horizon = match (&old.header.windows, &new.header.windows) {
        (Some(_), Some(w)) => Some(w.horizon),
        _ => None,
    };
    let kept = |key: &str| match Key::parse(key) {
        Some(Key::Word(_)) => true,
        Some(Key::InWindow(w, _) | Key::Late(w)) => horizon.is_some_and(|h| w >= h),
        // Part of the all-time counts, which are compared; views keep no
        // count of untimed events apart.
        Some(Key::Untimed(_)) | None => false,
    };
    let mut compare = |word: &str, batch_delta: i64, realtime: u64| {
        if !kept(word) {
            return;
        }
        result.words += 1;
        if batch_delta != realtime as i64 {
            result.mismatches += 1;
            if result.examples.len() < EXAMPLES {
                result.examples.push(Mismatch {
                    word: word.to_owned(),
                    batch_delta,
                    realtime,
                });
            }
        }
    };
    // Both views are sorted by word: a merge join.
    let (mut a, mut b) = (old.words().iter().peekable(), new.words().iter().peekable());
    loop {
        let (word, delta) = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((w, c)), None) => {
                a.next();
                (&**w, -(*c as i64))
            }
            (None, Some((w, c))) => {
                b.next();
                (&**w, *c as i64)
            }
            (Some((wa, ca)), Some((wb, cb))) => match (**wa).cmp(&**wb) {
                Ordering::Less => {
                    a.next();
                    (&**wa, -(*ca as i64))
                }
                Ordering::Greater => {
                    b.next();
                    (&**wb, *cb as i64)
                }
                Ordering::Equal => {
                    let delta = *cb as i64 - *ca as i64;
                    a.next();
                    b.next();
                    (&**wb, delta)
                }
            },
        };
        let realtime = between.remove(word).unwrap_or(0);
        if delta != 0 || realtime != 0 {
            compare(word, delta, realtime);
        }
    }
    // Counted by the speed layer between the cuts, absent from both views.
    let mut rest: Vec<_> = between.into_iter().filter(|&(_, c)| c > 0).collect();
    rest.sort_unstable();
    for (word, realtime) in rest {
        compare(&word, 0, realtime);
    }
    result
}

/// Every swap's check, for `/v1/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct Reconciliation {
    checked_swaps: AtomicU64,
    skipped_swaps: AtomicU64,
    mismatched_words: AtomicU64,
    last: Mutex<Option<SwapCheck>>,
}

/// The totals so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReconciliationStatus {
    /// Swaps compared.
    pub checked_swaps: u64,
    /// Swaps not compared (realtime counts did not cover the new cut).
    pub skipped_swaps: u64,
    /// Mismatched words over all swaps: 0 while the layers agree.
    pub mismatches: u64,
    /// The latest swap's check.
    pub last: Option<SwapCheck>,
}

impl Reconciliation {
    /// Records one swap's check, logging a disagreement as an error.
    pub fn record(&self, check: SwapCheck) {
        if check.skipped_partitions.is_empty() {
            self.checked_swaps.fetch_add(1, AtomicOrdering::Relaxed);
        } else {
            self.skipped_swaps.fetch_add(1, AtomicOrdering::Relaxed);
        }
        self.mismatched_words
            .fetch_add(check.mismatches, AtomicOrdering::Relaxed);
        if check.mismatches > 0 {
            tracing::error!(
                from = check.from_version,
                to = check.to_version,
                mismatches = check.mismatches,
                examples = ?check.examples,
                "The batch and speed layers disagree on the events between two batch cuts."
            );
        } else if check.skipped_partitions.is_empty() {
            tracing::info!(
                from = check.from_version,
                to = check.to_version,
                words = check.words,
                "Reconciled the batch view swap with the realtime counts."
            );
        }
        *self.last.lock_or_stop("the last reconciliation") = Some(check);
    }

    pub fn status(&self) -> ReconciliationStatus {
        ReconciliationStatus {
            checked_swaps: self.checked_swaps.load(AtomicOrdering::Relaxed),
            skipped_swaps: self.skipped_swaps.load(AtomicOrdering::Relaxed),
            mismatches: self.mismatched_words.load(AtomicOrdering::Relaxed),
            last: self.last.lock_or_stop("the last reconciliation").clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_core::view::ViewOrigin;
    use lambda_core::BucketSize;

    fn view(version: u64, cut: u64, words: &[(&str, u64)]) -> BatchView {
        let words = words.iter().map(|(w, c)| ((*w).into(), *c)).collect();
        let cut = [(0, cut as i64)].into_iter().collect();
        BatchView::build(ViewOrigin::new(version, cut, BucketSize::DEFAULT), words)
    }

    fn between(counts: &[(&str, u64)]) -> FxHashMap<Box<str>, u64> {
        counts.iter().map(|(w, c)| ((*w).into(), *c)).collect()
    }

    #[test]
    fn views_that_differ_by_the_realtime_counts_between_their_cuts_agree() {
        let old = view(1, 16, &[("a", 3), ("b", 1)]);
        let new = view(2, 32, &[("a", 5), ("b", 1), ("c", 4)]);
        let c = check(&old, &new, between(&[("a", 2), ("c", 4)]));
        assert_eq!((c.words, c.mismatches), (2, 0), "{c:?}");
    }

    #[test]
    fn a_corrupted_count_on_either_side_is_reported_with_the_word() {
        let old = view(1, 16, &[("a", 3), ("b", 1)]);
        let new = view(2, 32, &[("a", 5), ("b", 1), ("c", 4)]);
        // The speed layer counted one `a` too many, and a word the batch
        // layer never saw.
        let c = check(&old, &new, between(&[("a", 3), ("c", 4), ("zz", 1)]));
        assert_eq!(c.mismatches, 2);
        assert_eq!(
            c.examples,
            vec![
                Mismatch {
                    word: "a".into(),
                    batch_delta: 2,
                    realtime: 3
                },
                Mismatch {
                    word: "zz".into(),
                    batch_delta: 0,
                    realtime: 1
                },
            ]
        );
        // A batch count that went down is a mismatch too.
        let shrunk = view(2, 32, &[("a", 2), ("b", 1)]);
        let c = check(&old, &shrunk, between(&[]));
        assert_eq!(c.examples[0].batch_delta, -1);
    }

    #[test]
    fn partitions_whose_realtime_counts_do_not_reach_the_new_cut_are_named() {
        let old: Cut = [(0, 16), (1, 16)].into_iter().collect();
        let new: Cut = [(0, 32), (1, 16), (2, 8)].into_iter().collect();
        let as_of: Cut = [(0, 40), (1, 16), (2, 4)].into_iter().collect();
        assert_eq!(uncovered(&old, &new, &as_of), vec![2]);
    }
}
