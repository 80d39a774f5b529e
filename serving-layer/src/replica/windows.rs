//! The replica's event-time side: counts over a range of windows, the
//! series of one word, late events, completeness, and the ranged top-K
//! (the threshold algorithm over the view's per-window rankings and the
//! realtime ones, see [`super::ranking`]).

use super::ranking::{top_of_sums, Ordered};
use super::{LoadedView, Replica};
use lambda_core::merge::Merged;
use lambda_core::view::WordCount;
use lambda_core::window::{Key, Millis, Range, Watermarks, Window};
use lambda_core::Partition;
use std::collections::{BTreeMap, BTreeSet};

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

impl LoadedView {
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
    /// then word ascending: the threshold algorithm over the view's
    /// per-window rankings and the realtime ones of the range's windows.
    pub fn top_in(&self, range: Range, k: usize) -> Vec<(String, u64)> {
        let realtime: Vec<_> = self
            .ranked_windows
            .range(range.from..range.to)
            .map(|(_, r)| r)
            .collect();
        let batch: Vec<Window> = self.view.as_ref().map_or_else(Vec::new, |v| {
            v.runs
                .range(range.from..range.to)
                .map(|(w, _)| *w)
                .collect()
        });
        let mut parts: Vec<Ordered<'_>> =
            realtime.iter().map(|r| Box::new(r.iter()) as _).collect();
        if let Some(view) = &self.view {
            parts.extend(batch.iter().map(|&w| view.window_ranked(w)));
        }
        let count = |word: &str| {
            let realtime: u64 = realtime.iter().map(|r| r.get(word)).sum();
            let batch: u64 = self
                .view
                .as_ref()
                .map_or(0, |v| batch.iter().map(|&w| v.in_window(w, word)).sum());
            realtime + batch
        };
        top_of_sums(parts, count, k)
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
