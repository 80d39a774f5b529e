//! Holding realtime upserts back until a whole checkpoint has arrived.
//!
//! The speed layer spreads one micro-batch's upserts over every partition of
//! the realtime topic, then closes it with a watermark on each partition (see
//! [`lambda_core::realtime`]). Applying upserts as they come would expose half a
//! micro-batch: a count that is exact at no position at all. The gate keeps,
//! per topic partition, the upserts received since its last watermark and the
//! closed segments not yet applied; a segment is released once every
//! partition has seen a watermark at least as far as its own. What is released
//! is then exactly the checkpoints up to the smallest latest watermark, and
//! that is the replica's `as_of`.

use lambda_core::realtime::{RealtimeUpsert, Watermark};
use lambda_core::window::Millis;
use lambda_core::Partition;
use lambda_core::{Cut, Offset};
use std::collections::{BTreeMap, VecDeque};

/// What may be applied now: the upserts, the topic position after them on each
/// partition, and the events position the result is exact at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Release {
    pub upserts: Vec<RealtimeUpsert>,
    /// `(topic partition, next offset)` to store with the counts.
    pub next_offsets: Vec<(i32, Offset)>,
    pub as_of: Cut,
    /// The oldest event (record timestamp, ms since the epoch) the released
    /// micro-batches counted, as their watermarks tell.
    pub oldest_event_ms: Option<i64>,
    /// Per events partition, the newest timestamp that moved its watermark,
    /// as the released watermarks tell.
    pub newest: BTreeMap<Partition, Millis>,
    /// Per events partition, where the speed layer started past its
    /// checkpoint, as the released watermarks tell (see
    /// [`Watermark::starts`]): the replica applies the release only once
    /// its view or its own counts reach these.
    pub starts: Cut,
}

#[derive(Debug)]
struct Segment {
    watermark: Cut,
    upserts: Vec<RealtimeUpsert>,
    /// The topic offset after the watermark that closed it.
    next_offset: Offset,
    oldest_event_ms: Option<i64>,
    newest: BTreeMap<Partition, Millis>,
    starts: Cut,
}

#[derive(Debug, Default)]
struct Lane {
    open: Vec<RealtimeUpsert>,
    closed: VecDeque<Segment>,
    latest: Option<Cut>,
}

#[derive(Debug)]
pub struct WatermarkGate {
    lanes: Vec<Lane>,
    held: usize,
}

impl WatermarkGate {
    /// A gate over `partitions` topic partitions. A replica resuming from its
    /// store passes the `as_of` it stored: every partition had reached it.
    pub fn new(partitions: usize, resumed: Option<Cut>) -> Self {
        let lanes = (0..partitions)
            .map(|_| Lane {
                latest: resumed.clone(),
                ..Lane::default()
            })
            .collect();
        Self { lanes, held: 0 }
    }

    /// Upserts received but not released yet.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn upsert(&mut self, partition: i32, upsert: RealtimeUpsert) {
        if let Some(lane) = self.lanes.get_mut(partition as usize) {
            lane.open.push(upsert);
            self.held += 1;
        }
    }

    pub fn watermark(&mut self, partition: i32, offset: Offset, watermark: Watermark) {
        if let Some(lane) = self.lanes.get_mut(partition as usize) {
            lane.closed.push_back(Segment {
                // A checkpoint at these positions counts the events below them.
                watermark: watermark.positions.as_cut(),
                upserts: std::mem::take(&mut lane.open),
                next_offset: offset + 1,
                oldest_event_ms: watermark.oldest_event_ms,
                newest: watermark.newest,
                starts: watermark.starts,
            });
            lane.latest = Some(watermark.positions.as_cut());
        }
    }

    /// The position every partition has reached, if every one has seen a
    /// watermark.
    fn complete(&self) -> Option<Cut> {
        let mut lanes = self.lanes.iter();
        let mut min = lanes.next()?.latest.clone()?;
        for lane in lanes {
            let latest = lane.latest.as_ref()?;
            min = min.iter().map(|(p, o)| (p, o.min(latest.get(p)))).collect();
        }
        Some(min)
    }

    /// Takes every closed segment that is complete on all partitions.
    pub fn release(&mut self) -> Option<Release> {
        let complete = self.complete()?;
        let mut release = Release {
            as_of: complete.clone(),
            ..Release::default()
        };
        for (r, lane) in self.lanes.iter_mut().enumerate() {
            let mut next = None;
            while lane
                .closed
                .front()
                .is_some_and(|s| complete.dominates(&s.watermark))
            {
                let segment = lane.closed.pop_front().expect("front checked above");
                self.held -= segment.upserts.len();
                release.upserts.extend(segment.upserts);
                if let Some(t) = segment.oldest_event_ms {
                    release.oldest_event_ms = Some(release.oldest_event_ms.map_or(t, |o| o.min(t)));
                }
                for (p, t) in segment.newest {
                    let n = release.newest.entry(p).or_insert(t);
                    *n = (*n).max(t);
                }
                for (p, o) in segment.starts.iter() {
                    release.starts.set(p, o.max(release.starts.get(p)));
                }
                next = Some(segment.next_offset);
            }
            if let Some(next) = next {
                release.next_offsets.push((r as i32, next));
            }
        }
        (!release.next_offsets.is_empty()).then_some(release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(pairs: &[(i32, i64)]) -> Cut {
        pairs.iter().copied().collect()
    }

    fn mark(pairs: &[(i32, i64)]) -> Watermark {
        Watermark {
            positions: pairs.iter().copied().collect(),
            oldest_event_ms: None,
            newest: BTreeMap::new(),
            starts: Cut::new(),
        }
    }

    fn up(word: &str, count: u64) -> RealtimeUpsert {
        RealtimeUpsert {
            word: word.into(),
            partition: 0,
            bucket: 0,
            count,
        }
    }

    #[test]
    fn a_micro_batch_is_released_only_when_every_partition_closed_it() {
        let mut gate = WatermarkGate::new(2, None);
        gate.upsert(0, up("a", 1));
        gate.upsert(1, up("b", 1));
        gate.watermark(0, 2, mark(&[(0, 5)]));
        assert_eq!(gate.release(), None, "partition 1 has not closed it yet");
        // The next micro-batch starts on partition 0 before 1 closes the first.
        gate.upsert(0, up("a", 2));
        gate.watermark(1, 7, mark(&[(0, 5)]));
        let r = gate.release().expect("complete");
        assert_eq!(r.as_of, cut(&[(0, 5)]));
        assert_eq!(r.upserts, vec![up("a", 1), up("b", 1)]);
        assert_eq!(r.next_offsets, vec![(0, 3), (1, 8)]);
        assert_eq!(gate.held(), 1, "the second micro-batch's upsert waits");
        assert_eq!(gate.release(), None);
    }

    #[test]
    fn a_watermark_lost_in_a_crash_is_covered_by_the_next() {
        let mut gate = WatermarkGate::new(2, Some(cut(&[(0, 1)])));
        gate.upsert(0, up("a", 1));
        gate.watermark(0, 1, mark(&[(0, 5)]));
        // The speed layer died before the watermark reached partition 1, then
        // re-published its checkpoint and a later watermark everywhere.
        gate.upsert(1, up("b", 3));
        gate.watermark(0, 3, mark(&[(0, 9)]));
        gate.watermark(1, 4, mark(&[(0, 9)]));
        let r = gate.release().expect("complete");
        assert_eq!(r.as_of, cut(&[(0, 9)]));
        assert_eq!(r.upserts.len(), 2);
        assert_eq!(r.next_offsets, vec![(0, 4), (1, 5)]);
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn a_release_carries_the_oldest_event_time_of_what_it_releases() {
        let at = |pairs: &[(i32, i64)], ms, start| Watermark {
            positions: pairs.iter().copied().collect(),
            oldest_event_ms: Some(ms),
            newest: [(0, ms + 10)].into_iter().collect(),
            starts: cut(&[(0, start)]),
        };
        let mut gate = WatermarkGate::new(1, None);
        gate.watermark(0, 0, at(&[(0, 5)], 2_000, 4));
        gate.watermark(0, 1, at(&[(0, 9)], 1_000, 2));
        gate.watermark(0, 2, mark(&[(0, 12)]));
        let release = gate.release().expect("released");
        assert_eq!(release.oldest_event_ms, Some(1_000));
        assert_eq!(
            release.newest,
            [(0, 2_010)].into_iter().collect(),
            "the newest event time of what it releases"
        );
        assert_eq!(
            release.starts,
            cut(&[(0, 4)]),
            "the latest start past a checkpoint of what it releases"
        );
        gate.watermark(0, 3, mark(&[(0, 15)]));
        assert_eq!(gate.release().map(|r| r.oldest_event_ms), Some(None));
    }
}
