//! A segment's sparse index: where some of its records start, to read from
//! or up to an offset without reading the whole segment.

use lambda_core::Offset;

/// A record's offset and byte position about every [`SparseIndex::INTERVAL`]
/// bytes of a segment (Kafka keeps such an index per segment too). Built
/// in memory while appending and by the recovery scan, never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseIndex(Vec<(Offset, u64)>);

impl SparseIndex {
    pub const INTERVAL: u64 = 256 << 10;

    /// Notes that the record at `offset` starts at byte `position`, if it is
    /// far enough from the last entry.
    pub(super) fn note(&mut self, offset: Offset, position: u64) {
        let due = match self.0.last() {
            Some(&(_, last)) => position >= last + Self::INTERVAL,
            None => position >= Self::INTERVAL,
        };
        if due {
            self.0.push((offset, position));
        }
    }

    /// Forgets entries at or past byte `len` (the segment was cut back).
    pub(super) fn truncate(&mut self, len: u64) {
        self.0.retain(|&(_, position)| position < len);
    }

    /// A byte position at which a record at or before `offset` starts: where
    /// to start reading for the records from `offset` on.
    pub fn position_before(&self, offset: Offset) -> u64 {
        let i = self.0.partition_point(|&(o, _)| o <= offset);
        i.checked_sub(1).map_or(0, |i| self.0[i].1)
    }

    /// A byte position at which a record at or after `offset` starts, if
    /// the index knows one: where reading for the records below `offset`
    /// can stop.
    pub fn position_from(&self, offset: Offset) -> Option<u64> {
        let i = self.0.partition_point(|&(o, _)| o < offset);
        self.0.get(i).map(|&(_, position)| position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_bounds_a_read_on_both_sides_at_record_starts() {
        let mut index = SparseIndex::default();
        let step = SparseIndex::INTERVAL;
        // Records of offsets 0.. every step/4 bytes: an entry every 4th.
        for i in 0..40i64 {
            index.note(i, i as u64 * step / 4);
        }
        assert_eq!(index.0.first(), Some(&(4, step)));
        assert_eq!(index.position_before(3), 0);
        assert_eq!(index.position_before(9), 2 * step);
        // Reading the records below 9 can stop where offset 12 starts.
        assert_eq!(index.position_from(9), Some(3 * step));
        assert_eq!(index.position_from(8), Some(2 * step));
        assert_eq!(index.position_from(1_000), None, "past the last entry");
    }
}
