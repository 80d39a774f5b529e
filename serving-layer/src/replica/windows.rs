//! The replica's event-time side: counts over a range of windows, the
//! series of one word, late events, completeness, and the ranged top-K with
//! the view's sums over a range ranked once per view.

use super::{ranked, LoadedView, Replica};
use common::sync::LockOrStop;
use lambda_core::merge::Merged;
use lambda_core::view::WordCount;
use lambda_core::window::{Key, Millis, Range, Watermarks, Window, WindowedKeys};
use lambda_core::Partition;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A view's words summed over the windows of one range and ranked: what a
/// ranged top-K needs from the batch side, which does not change while the
/// view is served. Computed once per view and range (it reads every word of
/// every window in the range); then a ranged top-K only adds the realtime
/// counts of the range's recent windows.
#[derive(Debug, Default)]
pub(super) struct RangeSums {
    /// Count descending, then word ascending.
    ranked: Vec<(Box<str>, u64)>,
    /// Each word's place in `ranked`.
    index: FxHashMap<Box<str>, u32>,
}

impl RangeSums {
    fn get(&self, word: &str) -> u64 {
        self.index
            .get(word)
            .map_or(0, |&i| self.ranked[i as usize].1)
    }
}

/// How many ranges a view keeps sums for.
const RANGE_SUMS_KEPT: usize = 4;

/// `#<window>@`, the prefix every key of a window's words shares.
struct WindowPrefix(String);

impl WindowPrefix {
    fn of(window: Window) -> Self {
        let mut key = Key::InWindow(window, "").encode();
        key.shrink_to_fit();
        Self(key)
    }
}

impl LoadedView {
    /// The view's counts in `window`, as `(#<window>@<word>, count)`: one
    /// run of the sorted keys (a window's keys share their prefix).
    fn window_entries(&self, window: Window) -> &[WordCount] {
        let words = self.view.windowed();
        let prefix = WindowPrefix::of(window);
        let start = words.partition_point(|(k, _)| **k < *prefix.0);
        let len = words[start..].partition_point(|(k, _)| k.starts_with(&prefix.0));
        &words[start..start + len]
    }

    /// The view's words summed over `range`, from the cache or computed
    /// (and kept for the next [`RANGE_SUMS_KEPT`] ranges asked).
    fn range_sums(&self, range: Range) -> Arc<RangeSums> {
        let mut kept = self.range_sums.lock_or_stop("a view's range sums");
        if let Some((_, sums)) = kept.iter().find(|(r, _)| *r == range) {
            return Arc::clone(sums);
        }
        let mut totals: FxHashMap<&str, u64> = FxHashMap::default();
        for &w in self.windows.range(range.from..range.to) {
            let prefix = WindowPrefix::of(w);
            for (k, c) in self.window_entries(w) {
                *totals.entry(&k[prefix.0.len()..]).or_default() += c;
            }
        }
        let mut ranked: Vec<(Box<str>, u64)> =
            totals.into_iter().map(|(w, c)| (w.into(), c)).collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let index = ranked
            .iter()
            .enumerate()
            .map(|(i, (w, _))| (w.clone(), i as u32))
            .collect();
        let sums = Arc::new(RangeSums { ranked, index });
        if kept.len() >= RANGE_SUMS_KEPT {
            kept.remove(0);
        }
        kept.push((range, Arc::clone(&sums)));
        sums
    }
}

impl Replica {
    /// One word's count over the windows of `range`, each by the merge
    /// rule.
    pub fn word_in(&self, word: &str, range: Range) -> Merged {
        self.series(word, range).into_iter().fold(
            Merged {
                batch: 0,
                realtime: 0,
            },
            |sum, (_, m)| Merged {
                batch: sum.batch + m.batch,
                realtime: sum.realtime + m.realtime,
            },
        )
    }

    /// One word's count per window of `range`, windows without any left out.
    pub fn series(&self, word: &str, range: Range) -> Vec<(Window, Merged)> {
        self.windows_with_counts(range)
            .into_iter()
            .filter_map(|w| {
                let m = self.merged(&Key::InWindow(w, word).encode());
                (m.total() > 0).then_some((w, m))
            })
            .collect()
    }

    /// The late events counted in the windows of `range`.
    pub fn late_in(&self, range: Range) -> u64 {
        self.windows_with_counts(range)
            .into_iter()
            .map(|w| self.merged(&Key::Late(w).encode()).total())
            .sum()
    }

    /// The windows of `range` that either half has counts in.
    fn windows_with_counts(&self, range: Range) -> Vec<Window> {
        let mut out: Vec<Window> = self
            .realtime_windows
            .range(range.from..range.to)
            .map(|(w, _)| *w)
            .collect();
        if let Some(view) = &self.view {
            out.extend(view.windows.range(range.from..range.to).copied());
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The exact `k` largest merged counts over `range`, count descending
    /// then word ascending.
    ///
    /// As [`Self::top`], over a range: the batch side's sums over the range
    /// are ranked once per view ([`RangeSums`]); realtime counts only add,
    /// so only words with a realtime count in the range can move up that
    /// ranking. Their merged sums are computed, and the batch ranking
    /// supplies the first `k` of all other words.
    pub fn top_in(&self, range: Range, k: usize) -> Vec<(String, u64)> {
        let cut = self.cut();
        let batch = self
            .view
            .as_ref()
            .map_or_else(|| Arc::new(RangeSums::default()), |v| v.range_sums(range));
        let mut moved: FxHashMap<&str, u64> = FxHashMap::default();
        let mut keys = WindowedKeys::default();
        for (&w, words) in self.realtime_windows.range(range.from..range.to) {
            keys.set_window(w);
            for word in words {
                let realtime = self.realtime_of(keys.key(word), cut);
                if realtime > 0 {
                    *moved.entry(word).or_default() += realtime;
                }
            }
        }
        let mut candidates: Vec<(&str, u64)> = moved
            .iter()
            .map(|(&w, &realtime)| (w, batch.get(w) + realtime))
            .collect();
        candidates.extend(
            batch
                .ranked
                .iter()
                .filter(|(w, _)| !moved.contains_key(&**w))
                .take(k)
                .map(|(w, c)| (&**w, *c)),
        );
        ranked(candidates, k)
    }

    /// Whether every partition's event-time watermark has passed the end of
    /// `range`. Partitions that never held an event (position 0) do not
    /// hold a range back.
    pub fn is_complete(&self, range: Range) -> bool {
        let lateness = self.windows.allowed_lateness_ms.min(i64::MAX as u64) as Millis;
        let mut newest = self.newest.clone();
        if let Some(w) = self
            .view
            .as_ref()
            .and_then(|v| v.manifest.header.windows.as_ref())
        {
            for (&p, &t) in &w.newest {
                let n = newest.entry(p).or_insert(t);
                *n = (*n).max(t);
            }
        }
        let marks = Watermarks(
            newest
                .into_iter()
                .map(|(p, n)| (p, n.saturating_sub(lateness)))
                .collect(),
        );
        let partitions: Vec<Partition> = self
            .as_of()
            .iter()
            .filter(|&(_, o)| o > 0)
            .map(|(p, _)| p)
            .collect();
        range.is_complete(self.windows.size, &marks, &partitions)
    }

    /// The oldest window the view keeps counts of, if it has windows:
    /// ranges start there at the earliest.
    pub fn horizon(&self) -> Option<Window> {
        self.view
            .as_ref()
            .and_then(|v| v.manifest.header.windows.as_ref())
            .map(|w| w.horizon)
    }

    /// Notes the realtime side's event time (newest timestamps per
    /// partition); never goes back.
    pub fn note_event_time(&mut self, newest: &BTreeMap<Partition, Millis>) {
        for (&p, &t) in newest {
            let n = self.newest.entry(p).or_insert(t);
            *n = (*n).max(t);
        }
    }

    /// The realtime side's newest timestamps (what the replica store keeps).
    pub fn event_times(&self) -> &BTreeMap<Partition, Millis> {
        &self.newest
    }
}
