//! How a batch view was computed, and the count arithmetic of the two ways.
//!
//! A **full** recompute counts every event below the new cut. An
//! **incremental** one adds the counts of the events between the previous
//! view's cut and the new one to the previous view ([`add_counts`]): counts
//! are a monoid, so both give the same view, and the incremental one costs
//! only the new events. Every view records its [`Lineage`]; a full
//! recompute also computes the incremental chain's answer at its own cut and
//! records whether the two agree ([`FullCheck`], from [`compare_counts`]),
//! so a bug in either road shows.

use crate::view::WordCount;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// The two ways to recompute a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecomputeMode {
    /// From every event below the cut (what views older than this field were).
    #[default]
    Full,
    /// The previous view plus the events between its cut and the new one.
    Incremental,
}

impl std::str::FromStr for RecomputeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Self::Full),
            "incremental" => Ok(Self::Incremental),
            other => Err(format!(
                "unknown recompute mode `{other}` (full or incremental)"
            )),
        }
    }
}

impl std::fmt::Display for RecomputeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        })
    }
}

/// How a view was computed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lineage {
    #[serde(default)]
    pub mode: RecomputeMode,
    /// The view an incremental recompute added to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// When the newest full recompute of this view's chain ran (ms since
    /// the epoch): the view itself if full, carried along by incremental
    /// ones, so the schedule of full recomputes survives restarts.
    #[serde(default)]
    pub last_full_ms: i64,
    /// A full recompute's comparison with the incremental chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<FullCheck>,
}

/// A full view compared with the incremental chain's view at the same cut
/// (the chain's newest view plus the events since its cut).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullCheck {
    /// The incremental chain's newest view, extended to the full view's cut.
    pub chain_version: u64,
    pub agreed: bool,
    /// Words whose counts differ (present in one only, or with two counts).
    pub differing_words: u64,
    /// The first few, as `word: full N, incremental M`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

/// `base + delta`: both sorted by word, each word once; so is the result.
pub fn add_counts(base: &[WordCount], delta: &[WordCount]) -> Vec<WordCount> {
    let mut out = Vec::with_capacity(base.len() + delta.len());
    let (mut i, mut j) = (0, 0);
    while i < base.len() && j < delta.len() {
        match base[i].0.cmp(&delta[j].0) {
            Ordering::Less => {
                out.push(base[i].clone());
                i += 1;
            }
            Ordering::Greater => {
                out.push(delta[j].clone());
                j += 1;
            }
            Ordering::Equal => {
                out.push((base[i].0.clone(), base[i].1 + delta[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&base[i..]);
    out.extend_from_slice(&delta[j..]);
    out
}

/// Compares a full view's counts with the incremental chain's (both sorted
/// by word): how many words differ, and up to `examples` of them.
pub fn compare_counts(
    full: &[WordCount],
    incremental: &[WordCount],
    chain_version: u64,
    examples: usize,
) -> FullCheck {
    let (differing_words, examples) =
        differences(full, incremental, ("full", "incremental"), examples);
    FullCheck {
        chain_version,
        agreed: differing_words == 0,
        differing_words,
        examples,
    }
}

/// The words whose counts differ between `a` and `b` (both sorted by word;
/// a word missing from one counts 0 there): how many, and the first
/// `examples` as `word: <name a> N, <name b> M`.
pub fn differences(
    a: &[WordCount],
    b: &[WordCount],
    (name_a, name_b): (&str, &str),
    examples: usize,
) -> (u64, Vec<String>) {
    let mut listed = Vec::new();
    let mut differing = 0u64;
    let mut note = |word: &str, x: u64, y: u64| {
        differing += 1;
        if listed.len() < examples {
            listed.push(format!("{word}: {name_a} {x}, {name_b} {y}"));
        }
    };
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                note(&a[i].0, a[i].1, 0);
                i += 1;
            }
            Ordering::Greater => {
                note(&b[j].0, 0, b[j].1);
                j += 1;
            }
            Ordering::Equal => {
                if a[i].1 != b[j].1 {
                    note(&a[i].0, a[i].1, b[j].1);
                }
                i += 1;
                j += 1;
            }
        }
    }
    (differing, listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn sorted(map: &BTreeMap<String, u64>) -> Vec<WordCount> {
        map.iter().map(|(w, c)| (w.as_str().into(), *c)).collect()
    }

    proptest! {
        /// Adding a delta's counts equals counting both event sets at once.
        #[test]
        fn add_counts_equals_a_recount(
            base in proptest::collection::btree_map("[a-e]{1,3}", 1u64..50, 0..40),
            delta in proptest::collection::btree_map("[a-e]{1,3}", 1u64..50, 0..40),
        ) {
            let mut want = base.clone();
            for (w, c) in &delta {
                *want.entry(w.clone()).or_insert(0) += c;
            }
            prop_assert_eq!(add_counts(&sorted(&base), &sorted(&delta)), sorted(&want));
        }

        /// Equal counts agree; any changed, added or removed word is found.
        #[test]
        fn compare_counts_finds_every_difference(
            counts in proptest::collection::btree_map("[a-e]{1,3}", 1u64..50, 1..40),
            change in 0usize..40,
            kind in 0u8..3,
        ) {
            let same = sorted(&counts);
            prop_assert!(compare_counts(&same, &same, 1, 5).agreed);
            let mut other = counts.clone();
            let word = counts.keys().nth(change % counts.len()).expect("non-empty").clone();
            match kind {
                0 => { *other.get_mut(&word).expect("present") += 1; }
                1 => { other.remove(&word); }
                _ => { other.insert(format!("{word}zz"), 1); }
            }
            let check = compare_counts(&same, &sorted(&other), 7, 5);
            prop_assert!(!check.agreed);
            prop_assert_eq!(check.differing_words, 1);
            prop_assert_eq!(check.chain_version, 7);
            prop_assert_eq!(check.examples.len(), 1);
        }
    }

    #[test]
    fn views_without_a_lineage_read_as_full() {
        let lineage: Lineage = serde_json::from_str("{}").expect("defaults");
        let header = r#"{"format":"lambda-batch-view/1","version":3,"cut":{},"bucket_size":16,"computed_at_ms":0,"events":0,"skipped_records":0,"total_words":0,"distinct_words":0}"#;
        let header: crate::view::ViewHeader =
            serde_json::from_str(header).expect("an older header");
        assert_eq!(header.lineage, lineage);
        assert_eq!(lineage.mode, RecomputeMode::Full);
        assert_eq!(lineage.last_full_ms, 0);
        assert_eq!("incremental".parse(), Ok(RecomputeMode::Incremental));
        assert!("sometimes".parse::<RecomputeMode>().is_err());
    }
}
