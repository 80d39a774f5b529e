//! Views that compose: one batch view per partition (a **part**), summed
//! into the view serving layers read.
//!
//! Batch instances own partitions, so each recomputes only its own; a part
//! counts exactly its partition's events below its cut. The view of the
//! whole topic is the sum of one part per partition, each the newest that
//! covers its partition ([`newer`]: the furthest cut, then the higher
//! version). Any owner, old or new, computes the same part for the same cut
//! (Kafka is their single source), so which one wrote it does not matter,
//! and a part that is not the newest (a zombie's, an instance's that has
//! not caught up) is simply not chosen: no partition is ever counted twice
//! or twice removed, and no partition's cut ever goes back.

use crate::cut::{BucketSize, Offset, Partition};
use crate::lineage::{add_counts, FullCheck, Lineage, RecomputeMode};
use crate::view::{BatchView, ViewError, ViewOrigin, ViewWindows, WordCount};
use crate::window::WindowSettings;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where a part lives and what it covers, as a composed view's manifest
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    /// Where the part's file is kept (a key of the shared store).
    pub key: String,
    /// CRC32C of the part's file.
    pub checksum: u32,
    pub bytes: u64,
    /// The part counts exactly its partition's events below this offset.
    pub cut: Offset,
    /// The version in the part's header.
    pub version: u64,
    /// When the newest full recompute of the part's chain ran (its
    /// lineage's): each owner schedules full recomputes of its own
    /// partitions by it.
    #[serde(default)]
    pub last_full_ms: i64,
}

/// Whether `candidate` replaces `current` as its partition's part: it
/// covers more, or the same with a newer computation (a full recompute an
/// operator asked for at an unchanged cut).
pub fn newer(candidate: &PartRef, current: Option<&PartRef>) -> bool {
    current.is_none_or(|c| (candidate.cut, candidate.version) > (c.cut, c.version))
}

/// How many differing words a composed check names.
const EXAMPLES: usize = 5;

fn malformed(reason: String) -> ViewError {
    ViewError::Malformed {
        what: "composition".to_owned(),
        reason,
    }
}

/// What every part of a composition must have been computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub bucket_size: BucketSize,
    pub windows: Option<WindowSettings>,
}

/// The view of `version` that sums `parts`: one per partition, each
/// covering exactly its own partition. Its cut is theirs together; its
/// counts, events and late events are their sums; it is as old as its
/// oldest part; windows are kept from the horizon of the newest event time
/// of any part (as one view over all partitions keeps them). No parts make
/// the empty view (nothing ingested yet). `base` is the view the
/// composition replaces parts of: an incremental one's base version;
/// `fresh` the partitions whose parts were recomputed for it (only their
/// full checks are this view's: the others' were reported before).
pub fn compose(
    version: u64,
    settings: Settings,
    base: Option<u64>,
    parts: &[&BatchView],
    fresh: &BTreeSet<Partition>,
) -> Result<BatchView, ViewError> {
    let mut cut = crate::cut::Cut::new();
    let mut newest = BTreeMap::new();
    for part in parts {
        let h = &part.header;
        let mut covered = h.cut.iter();
        let (Some((p, offset)), None) = (covered.next(), covered.next()) else {
            return Err(malformed(format!(
                "part version {} covers {} partitions, not one",
                h.version,
                h.cut.iter().count()
            )));
        };
        if cut.iter().any(|(q, _)| q == p) {
            return Err(malformed(format!("two parts of partition {p}")));
        }
        cut.set(p, offset);
        if h.bucket_size != settings.bucket_size {
            return Err(malformed(format!(
                "part of partition {p} has bucket size {}, not {}",
                h.bucket_size, settings.bucket_size
            )));
        }
        if h.windows.as_ref().map(|w| w.settings) != settings.windows {
            return Err(malformed(format!(
                "part of partition {p} has other window settings"
            )));
        }
        if let Some(w) = &h.windows {
            newest.extend(w.newest.iter().map(|(&p, &t)| (p, t)));
        }
    }
    let words: Vec<WordCount> = match parts.split_first() {
        Some((first, rest)) => rest.iter().fold(first.words().to_vec(), |sum, part| {
            add_counts(&sum, part.words())
        }),
        None => Vec::new(),
    };
    let origin = ViewOrigin {
        computed_at_ms: parts
            .iter()
            .map(|p| p.header.computed_at_ms)
            .min()
            .unwrap_or(0),
        events: parts.iter().map(|p| p.header.events).sum(),
        skipped_records: parts.iter().map(|p| p.header.skipped_records).sum(),
        lineage: lineage(parts, base, fresh),
        windows: settings.windows.map(|w| ViewWindows::new(w, newest)),
        ..ViewOrigin::new(version, cut, settings.bucket_size)
    };
    Ok(BatchView::build(origin, words))
}

/// The lineage of a sum: full if every part is (else incremental on
/// `base`); the oldest full recompute; the fresh parts' checks, added up.
fn lineage(parts: &[&BatchView], base: Option<u64>, fresh: &BTreeSet<Partition>) -> Lineage {
    let lineages: Vec<&Lineage> = parts.iter().map(|p| &p.header.lineage).collect();
    let all_full = lineages.iter().all(|l| l.mode == RecomputeMode::Full);
    let checks: Vec<&FullCheck> = parts
        .iter()
        .filter(|p| p.header.cut.iter().any(|(q, _)| fresh.contains(&q)))
        .filter_map(|p| p.header.lineage.check.as_ref())
        .collect();
    Lineage {
        mode: if all_full {
            RecomputeMode::Full
        } else {
            RecomputeMode::Incremental
        },
        base_version: base.filter(|_| !all_full),
        last_full_ms: lineages.iter().map(|l| l.last_full_ms).min().unwrap_or(0),
        check: (!checks.is_empty()).then(|| FullCheck {
            chain_version: checks.iter().map(|c| c.chain_version).max().unwrap_or(0),
            agreed: checks.iter().all(|c| c.agreed),
            differing_words: checks.iter().map(|c| c.differing_words).sum(),
            examples: checks
                .iter()
                .flat_map(|c| c.examples.iter().cloned())
                .take(EXAMPLES)
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{Key, Window, WindowSize};
    use proptest::prelude::*;

    const SETTINGS: fn() -> Settings = || Settings {
        bucket_size: BucketSize::DEFAULT,
        windows: Some(settings()),
    };

    fn settings() -> WindowSettings {
        WindowSettings {
            size: WindowSize::from_millis(1000).expect("non-zero"),
            allowed_lateness_ms: 0,
            retention_ms: 10_000,
            max_future_ms: 1000,
        }
    }

    /// A part of `partition` at `cut` counting `words`, with windowed
    /// counts in window `window` and the newest event time `newest`.
    fn part(
        partition: Partition,
        cut: Offset,
        words: &BTreeMap<String, u64>,
        window: u64,
        newest: i64,
    ) -> BatchView {
        let mut counts: Vec<WordCount> =
            words.iter().map(|(w, c)| (w.as_str().into(), *c)).collect();
        counts.extend(
            words
                .iter()
                .map(|(w, c)| (Key::InWindow(Window(window), w).encode().into(), *c)),
        );
        let origin = ViewOrigin {
            events: words.values().sum(),
            computed_at_ms: 1000 + i64::from(partition),
            windows: Some(ViewWindows::new(
                settings(),
                [(partition, newest)].into_iter().collect(),
            )),
            ..ViewOrigin::new(
                7,
                [(partition, cut)].into_iter().collect(),
                BucketSize::DEFAULT,
            )
        };
        BatchView::build(origin, counts)
    }

    proptest! {
        /// The sum of parts equals one view over every partition's events,
        /// windows past the newest horizon left out.
        #[test]
        fn composing_parts_equals_counting_every_partition_at_once(
            counts in proptest::collection::vec(
                proptest::collection::btree_map("[a-d]{1,2}", 1u64..20, 0..8), 1..4),
            windows in proptest::collection::vec(0u64..30, 4),
        ) {
            let parts: Vec<BatchView> = counts
                .iter()
                .enumerate()
                .map(|(p, words)| {
                    let w = windows[p];
                    part(p as Partition, 1024 * (p as i64 + 1), words, w, (w as i64) * 1000 + 500)
                })
                .collect();
            let refs: Vec<&BatchView> = parts.iter().collect();
            let sum = compose(9, SETTINGS(), None, &refs, &BTreeSet::new()).expect("composes");
            let newest = windows[..counts.len()].iter().max().copied().unwrap_or(0);
            let horizon = settings().horizon(newest as i64 * 1000 + 500);
            let mut want: BTreeMap<String, u64> = BTreeMap::new();
            for (p, words) in counts.iter().enumerate() {
                for (w, c) in words {
                    *want.entry(w.clone()).or_default() += c;
                    if Window(windows[p]) >= horizon {
                        *want.entry(Key::InWindow(Window(windows[p]), w).encode()).or_default() += c;
                    }
                }
            }
            let got: BTreeMap<String, u64> =
                sum.words().iter().map(|(w, c)| (w.to_string(), *c)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(sum.header.version, 9);
            prop_assert_eq!(sum.header.cut.iter().count(), counts.len());
            prop_assert_eq!(sum.header.computed_at_ms, 1000);
            prop_assert_eq!(
                sum.header.events,
                counts.iter().flat_map(|c| c.values()).sum::<u64>()
            );
        }
    }

    #[test]
    fn parts_must_each_cover_one_partition_of_their_own() {
        let words: BTreeMap<String, u64> = [("a".to_owned(), 1)].into_iter().collect();
        let (a, b) = (part(0, 8, &words, 1, 1500), part(0, 16, &words, 1, 1500));
        let err = compose(1, SETTINGS(), None, &[&a, &b], &BTreeSet::new())
            .expect_err("two parts of partition 0");
        assert!(
            err.to_string().contains("two parts of partition 0"),
            "{err}"
        );
        let empty = compose(1, SETTINGS(), None, &[], &BTreeSet::new()).expect("the empty view");
        assert!(empty.header.cut.is_empty() && empty.words().is_empty());
        let other = Settings {
            windows: None,
            ..SETTINGS()
        };
        assert!(
            compose(1, other, None, &[&a], &BTreeSet::new()).is_err(),
            "window settings differ"
        );
        let whole = BatchView::build(
            ViewOrigin::new(
                1,
                [(0, 8), (1, 8)].into_iter().collect(),
                BucketSize::DEFAULT,
            ),
            Vec::new(),
        );
        assert!(
            compose(1, SETTINGS(), None, &[&whole], &BTreeSet::new()).is_err(),
            "a view of two partitions is not a part"
        );
    }

    #[test]
    fn the_newest_part_covers_more_or_was_computed_later() {
        let r = |cut, version| PartRef {
            key: String::new(),
            checksum: 0,
            bytes: 0,
            cut,
            version,
            last_full_ms: 0,
        };
        assert!(newer(&r(10, 1), None));
        assert!(newer(&r(20, 1), Some(&r(10, 5))), "further cut wins");
        assert!(
            !newer(&r(10, 9), Some(&r(20, 1))),
            "a zombie's shorter part loses"
        );
        assert!(newer(&r(10, 3), Some(&r(10, 2))), "same cut, recomputed");
        assert!(!newer(&r(10, 2), Some(&r(10, 2))));
    }
}
