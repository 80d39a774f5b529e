//! The replica's event-time side: counts over a range of windows, the
//! series of one word, late events, completeness, and the ranged top-K
//! (the threshold algorithm over the view's per-window rankings and the
//! realtime ones, see [`super::ranking`]).

use super::ranking::{top_of_sums, Ordered};
use super::{LoadedView, Replica};
use common::sync::LockOrStop;
use lambda_core::merge::Merged;
use lambda_core::view::WordCount;
use lambda_core::window::{Key, Millis, Range, Watermarks, Window};
use lambda_core::Partition;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Where one window's words are in a view's windowed keys (a window's keys
/// share their prefix `#<window>@`, so they are one run of the sorted
/// keys), and where their order by count is in the view's `window_order`
/// (the same positions).
#[derive(Debug, Clone, Copy)]
pub(super) struct WindowRun {
    start: u32,
    len: u32,
    /// The length of the run's shared prefix.
    prefix: u32,
}

/// A view's windows, each window's run of words, and each run's order by
/// count descending then key ascending, built once per view.
pub(super) fn index(
    windowed: &[WordCount],
) -> (BTreeSet<Window>, BTreeMap<Window, WindowRun>, Vec<u32>) {
    let (mut windows, mut runs) = (BTreeSet::new(), BTreeMap::<Window, WindowRun>::new());
    for (i, (k, _)) in windowed.iter().enumerate() {
        match Key::parse(k) {
            Some(Key::InWindow(w, word)) => {
                windows.insert(w);
                let run = runs.entry(w).or_insert(WindowRun {
                    start: i as u32,
                    len: 0,
                    prefix: (k.len() - word.len()) as u32,
                });
                run.len += 1;
            }
            Some(Key::Late(w)) => {
                windows.insert(w);
            }
            _ => {}
        }
    }
    let mut order: Vec<u32> = (0..windowed.len() as u32).collect();
    for run in runs.values() {
        let (start, end) = (run.start as usize, (run.start + run.len) as usize);
        order[start..end].sort_unstable_by(|&a, &b| {
            let (ka, ca) = &windowed[a as usize];
            let (kb, cb) = &windowed[b as usize];
            cb.cmp(ca).then_with(|| ka.cmp(kb))
        });
    }
    (windows, runs, order)
}

/// A view's words summed over the windows of one range and ranked: the
/// view's side of a ranged top-K as one part instead of one per window (a
/// word's sum is then one lookup, not one per window). Computed in the
/// background, one range at a time per view, without the replica's lock
/// (it reads every word of the range's windows: about a second for an hour
/// of a busy view); until it is ready, ranged top-Ks read the per-window
/// rankings. The view does not change while it is served, so it holds
/// until the next swap.
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

/// A view's range sums: those ready (the most recent [`RANGE_SUMS_KEPT`])
/// and the one being computed.
#[derive(Debug, Default)]
pub(super) struct SumsCache {
    ready: Vec<(Range, Arc<RangeSums>)>,
    computing: Option<Range>,
}

/// How many ranges a view keeps sums for.
const RANGE_SUMS_KEPT: usize = 4;

/// Ranges over fewer of the view's windows are read window by window only.
const RANGE_SUMS_MIN_WINDOWS: usize = 8;

impl LoadedView {
    /// The view's words summed over `range`, computed now.
    pub(super) fn sums(&self, range: Range) -> RangeSums {
        let mut totals: FxHashMap<&str, u64> = FxHashMap::default();
        for run in self.runs.range(range.from..range.to).map(|(_, r)| r) {
            let prefix = run.prefix as usize;
            for (k, c) in self.run(run) {
                *totals.entry(&k[prefix..]).or_default() += c;
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
        RangeSums { ranked, index }
    }

    /// Whether the view's sums over `range` are ready (benchmarks wait for
    /// them).
    pub fn has_range_sums(&self, range: Range) -> bool {
        let cache = self.sums_cache.lock_or_stop("a view's range sums");
        cache.ready.iter().any(|(r, _)| *r == range)
    }

    /// The view's sums over `range` if they are ready; otherwise starts
    /// computing them in the background if nothing else is being computed
    /// for this view and the range spans enough of its windows.
    fn ready_sums(self: &Arc<Self>, range: Range) -> Option<Arc<RangeSums>> {
        let mut cache = self.sums_cache.lock_or_stop("a view's range sums");
        if let Some((_, sums)) = cache.ready.iter().find(|(r, _)| *r == range) {
            return Some(Arc::clone(sums));
        }
        let windows = self.runs.range(range.from..range.to).count();
        if cache.computing.is_some() || windows < RANGE_SUMS_MIN_WINDOWS {
            return None;
        }
        cache.computing = Some(range);
        let view = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("range-sums".into())
            .spawn(move || {
                common::background::lower_this_threads_priority();
                let sums = Arc::new(view.sums(range));
                let mut cache = view.sums_cache.lock_or_stop("a view's range sums");
                cache.computing = None;
                if cache.ready.len() >= RANGE_SUMS_KEPT {
                    cache.ready.remove(0);
                }
                cache.ready.push((range, sums));
            });
        if let Err(error) = started {
            // Ranged answers stay exact, read window by window.
            tracing::warn!(%error, "Cannot start computing a view's range sums.");
            cache.computing = None;
        }
        None
    }

    /// `word`'s count in `window`.
    fn in_window(&self, window: Window, word: &str) -> u64 {
        let Some(run) = self.runs.get(&window) else {
            return 0;
        };
        let entries = self.run(run);
        let prefix = run.prefix as usize;
        entries
            .binary_search_by(|(k, _)| k[prefix..].cmp(word))
            .map_or(0, |i| entries[i].1)
    }

    fn run(&self, run: &WindowRun) -> &[WordCount] {
        &self.view.windowed()[run.start as usize..(run.start + run.len) as usize]
    }

    /// `window`'s words by count descending.
    fn window_ranked(&self, window: Window) -> Ordered<'_> {
        let Some(run) = self.runs.get(&window) else {
            return Box::new(std::iter::empty());
        };
        let (windowed, prefix) = (self.view.windowed(), run.prefix as usize);
        let order = &self.window_order[run.start as usize..(run.start + run.len) as usize];
        Box::new(order.iter().map(move |&i| {
            let (k, c) = &windowed[i as usize];
            (&k[prefix..], *c)
        }))
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
            .ranked_windows
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
    /// then word ascending: the threshold algorithm over the view's side of
    /// the range (its sums over the range once they are ready, see
    /// [`RangeSums`], else its per-window rankings) and the realtime
    /// rankings of the range's windows.
    pub fn top_in(&self, range: Range, k: usize) -> Vec<(String, u64)> {
        let sums = self.view.as_ref().and_then(|v| v.ready_sums(range));
        self.top_in_with(range, k, sums.as_deref())
    }

    /// [`Self::top_in`] with the view's sums over `range` given, or read
    /// from its per-window rankings if `None`.
    pub(super) fn top_in_with(
        &self,
        range: Range,
        k: usize,
        sums: Option<&RangeSums>,
    ) -> Vec<(String, u64)> {
        assert!(self.is_ranked(), "a top-K needs the rankings up to date");
        let realtime: Vec<_> = self
            .ranked_windows
            .range(range.from..range.to)
            .map(|(_, r)| r)
            .collect();
        let mut parts: Vec<Ordered<'_>> =
            realtime.iter().map(|r| Box::new(r.iter()) as _).collect();
        let realtime_count = |word: &str| realtime.iter().map(|r| r.get(word)).sum::<u64>();
        match (&self.view, sums) {
            (Some(_), Some(sums)) => {
                parts.push(Box::new(sums.ranked.iter().map(|(w, c)| (&**w, *c))));
                top_of_sums(parts, |w| sums.get(w) + realtime_count(w), k)
            }
            (Some(view), None) => {
                let batch: Vec<Window> = view
                    .runs
                    .range(range.from..range.to)
                    .map(|(w, _)| *w)
                    .collect();
                parts.extend(batch.iter().map(|&w| view.window_ranked(w)));
                let batch_count =
                    |w: &str| batch.iter().map(|&b| view.in_window(b, w)).sum::<u64>();
                top_of_sums(parts, |w| batch_count(w) + realtime_count(w), k)
            }
            (None, _) => top_of_sums(parts, realtime_count, k),
        }
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
