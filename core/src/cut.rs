//! Offsets, positions, cuts and realtime buckets: how the batch and speed
//! layers divide the event stream between them.
//!
//! Two maps from partition to offset look alike and mean different things:
//!
//! - [`Positions`]: where a reader or a log *is*, the next offset per
//!   partition (the master log's ends, the speed layer's checkpoint, a
//!   replica's place in the realtime topic, a topic's end offsets);
//! - [`Cut`]: what a result *covers*, the first offset per partition it does
//!   not include: a batch view with cut `c` counts exactly the events with
//!   `offset < c[partition]`, and an answer's `as_of` is a cut too.
//!
//! A reader at some positions has seen everything below them
//! ([`Positions::as_cut`]); a batch view's cut is the master log's ends
//! aligned down to a bucket boundary ([`Positions::aligned_cut`]). The speed layer counts per (word, partition,
//! bucket) with `bucket = offset / B`. Batch cuts are aligned to `B`, so every
//! bucket lies wholly below a cut (the batch view has it) or wholly at or above
//! it (the realtime counts have it); nothing straddles the hand-off.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

/// A Kafka partition number.
pub type Partition = i32;
/// A Kafka offset. Non-negative for every real record.
pub type Offset = i64;

/// The realtime bucket size `B`, in offsets per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BucketSize(NonZeroU64);

impl BucketSize {
    pub const DEFAULT: BucketSize = BucketSize(match NonZeroU64::new(1024) {
        Some(b) => b,
        None => unreachable!(),
    });

    pub fn new(size: u64) -> Option<Self> {
        NonZeroU64::new(size).map(Self)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The bucket an offset falls in.
    pub fn bucket_of(self, offset: Offset) -> u64 {
        debug_assert!(offset >= 0, "offsets of real records are non-negative");
        offset.max(0) as u64 / self.get()
    }

    /// The first offset of a bucket.
    pub fn bucket_start(self, bucket: u64) -> Offset {
        (bucket * self.get()) as Offset
    }

    /// The largest bucket-aligned offset at or below `offset`.
    pub fn align_down(self, offset: Offset) -> Offset {
        self.bucket_start(self.bucket_of(offset))
    }
}

impl Default for BucketSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for BucketSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for BucketSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u64 = s
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number of offsets"))?;
        BucketSize::new(n).ok_or_else(|| "the bucket size must be at least 1".to_owned())
    }
}

/// The representation both [`Cut`] and [`Positions`] share: an offset per
/// partition, 0 for partitions that are absent.
macro_rules! offset_map {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(BTreeMap<Partition, Offset>);

        impl $name {
            pub fn new() -> Self {
                Self::default()
            }

            /// The offset of `partition` (0 when absent).
            pub fn get(&self, partition: Partition) -> Offset {
                self.0.get(&partition).copied().unwrap_or(0)
            }

            pub fn set(&mut self, partition: Partition, offset: Offset) {
                self.0.insert(partition, offset);
            }

            /// How many offsets this is behind `end`, summed over `end`'s
            /// partitions (0 where it is at or past it).
            pub fn behind(&self, end: &Positions) -> u64 {
                end.iter()
                    .map(|(p, o)| (o - self.get(p)).max(0) as u64)
                    .sum()
            }

            /// The offsets summed over partitions (for a cut or positions
            /// from offset 0: the records below it).
            pub fn total_offsets(&self) -> u64 {
                self.0.values().map(|&o| o.max(0) as u64).sum()
            }

            pub fn iter(&self) -> impl Iterator<Item = (Partition, Offset)> + '_ {
                self.0.iter().map(|(&p, &o)| (p, o))
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl FromIterator<(Partition, Offset)> for $name {
            fn from_iter<I: IntoIterator<Item = (Partition, Offset)>>(iter: I) -> Self {
                Self(iter.into_iter().collect())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{")?;
                for (i, (p, o)) in self.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p}: {o}")?;
                }
                f.write_str("}")
            }
        }
    };
}

offset_map! {
    /// What a result covers: per partition, the first offset *not*
    /// included. Partitions that are absent include nothing (their cut is 0).
    Cut
}

offset_map! {
    /// Where a reader or a log is: per partition, the next offset (to read,
    /// or to append). Partitions that are absent are at 0.
    Positions
}

impl Cut {
    /// Whether the event at (`partition`, `offset`) is included.
    pub fn includes(&self, partition: Partition, offset: Offset) -> bool {
        offset < self.get(partition)
    }

    /// Whether the whole bucket lies at or above the cut, i.e. belongs to the
    /// realtime side of the merge.
    pub fn is_realtime_bucket(&self, size: BucketSize, partition: Partition, bucket: u64) -> bool {
        size.bucket_start(bucket) >= self.get(partition)
    }

    /// Whether every partition's offset is a multiple of the bucket size.
    pub fn is_aligned(&self, size: BucketSize) -> bool {
        self.0
            .values()
            .all(|&o| o >= 0 && o as u64 % size.get() == 0)
    }

    /// Whether this cut is at or beyond `other` in every partition.
    pub fn dominates(&self, other: &Cut) -> bool {
        other
            .0
            .keys()
            .chain(self.0.keys())
            .all(|&p| self.get(p) >= other.get(p))
    }
}

impl Positions {
    /// What a reader at these positions has seen: everything below them.
    pub fn as_cut(&self) -> Cut {
        Cut(self.0.clone())
    }

    /// The bucket-aligned cut at or below these positions: what a batch view
    /// may absorb when its master log ends here.
    pub fn aligned_cut(&self, size: BucketSize) -> Cut {
        Cut(self
            .0
            .iter()
            .map(|(&p, &end)| (p, size.align_down(end)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_arithmetic() {
        let b = BucketSize::new(100).expect("non-zero");
        assert_eq!(b.bucket_of(0), 0);
        assert_eq!(b.bucket_of(99), 0);
        assert_eq!(b.bucket_of(100), 1);
        assert_eq!(b.bucket_start(3), 300);
        assert_eq!(b.align_down(299), 200);
        assert_eq!(b.align_down(300), 300);
        assert!(BucketSize::new(0).is_none());
        assert!("0".parse::<BucketSize>().is_err());
        assert!("x".parse::<BucketSize>().is_err());
        assert_eq!("64".parse::<BucketSize>().map(BucketSize::get), Ok(64));
    }

    #[test]
    fn cut_includes_offsets_below_it_and_aligns_down() {
        let b = BucketSize::new(10).expect("non-zero");
        let ends: Positions = [(0, 25), (1, 10), (2, 9)].into_iter().collect();
        let cut = ends.aligned_cut(b);
        assert_eq!(cut, [(0, 20), (1, 10), (2, 0)].into_iter().collect());
        assert!(cut.is_aligned(b));
        assert!(!ends.as_cut().is_aligned(b));
        assert!(cut.includes(0, 19));
        assert!(!cut.includes(0, 20));
        assert!(!cut.includes(7, 0), "an absent partition includes nothing");
        assert!(cut.is_realtime_bucket(b, 0, 2));
        assert!(!cut.is_realtime_bucket(b, 0, 1));
        assert!(ends.as_cut().dominates(&cut));
        assert!(!cut.dominates(&ends.as_cut()));
        assert_eq!(cut.total_offsets(), 30);
        assert_eq!(
            cut.behind(&ends),
            14,
            "5 + 0 + 9 offsets between the cut and the ends"
        );
    }

    #[test]
    fn cut_round_trips_through_json() {
        let cut: Cut = [(0, 1024), (3, 2048)].into_iter().collect();
        let json = serde_json::to_string(&cut).expect("serialise");
        assert_eq!(json, r#"{"0":1024,"3":2048}"#);
        let back: Cut = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, cut);
        assert_eq!(cut.to_string(), "{0: 1024, 3: 2048}");
    }
}
