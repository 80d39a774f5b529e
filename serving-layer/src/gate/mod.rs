//! Holding realtime upserts back until a whole checkpoint has arrived, per
//! events partition and per writer.
//!
//! A speed layer spreads one micro-batch's upserts over every partition of
//! the realtime topic (a *lane* here), then closes it with a watermark on
//! each, naming the positions of the events partitions it owns (see
//! [`lambda_core::realtime`]). Applying upserts as they come would expose
//! half a micro-batch: a count that is exact at no position at all.
//!
//! Several speed layers may write the topic (each owning some events
//! partitions), and two of them may write counts of the same events
//! partition at once (a rebalance in progress, a zombie). So the gate keeps,
//! per lane, the upserts received per (writer, events partition) since that
//! writer's last watermark naming the partition; a watermark closes only its
//! own writer's upserts of the partitions it names, into one segment per
//! events partition.
//!
//! A position `P` of events partition `p` is *complete* for a writer once
//! every lane holds that writer's segment ending exactly at `P` (its
//! watermark at `P` was read everywhere): then every count the writer made
//! up to `P` has arrived, whatever lane its key routes to. The replica's
//! `as_of` on `p` moves to the furthest position complete for any writer,
//! and every segment at or below it — of any writer — is released. That is
//! exact: each writer's counts of `p` are the true counts at its own
//! position (a writer starts from its checkpoint or from a batch cut, see
//! [`Watermark::starts`]), counts only grow with the position, and upserts
//! apply as `max`; so the complete writer's counts are the counts at `as_of`
//! and the others' are at most those. A position some lane skipped (a
//! writer killed between two lanes' watermarks) is never complete: the
//! writer's next watermark, sent everywhere after its restart, is.
//!
//! A writer's round (see [`lambda_core::realtime`]) reaches a lane as its
//! upserts records and its watermark in any order. The gate holds them per
//! (writer, round) until the lane has the watermark and every record it
//! counts for the lane (a duplicate once); only then does the watermark
//! close them, as if they had come in the older order. A round left
//! incomplete (its writer killed mid-way) is closed by the writer's next
//! watermark in the lane with that watermark's own round, as upserts whose
//! watermark was lost are: its counts are from an earlier position, so at
//! most the later ones. The next round after a restart re-publishes the
//! writer's whole checkpoint, so it holds whatever the incomplete one lost.

use lambda_core::realtime::{RealtimeUpsert, RoundPart, Watermark, WriterId};
use lambda_core::window::Millis;
use lambda_core::Partition;
use lambda_core::{Cut, Offset};
use std::collections::{BTreeMap, BTreeSet};

/// What may be applied now: the upserts, the topic position to resume each
/// lane from, and the events position the result is exact at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Release {
    pub upserts: Vec<RealtimeUpsert>,
    /// `(topic partition, offset)` to store with the counts: re-reading each
    /// lane from there recovers everything not released yet.
    pub next_offsets: Vec<(i32, Offset)>,
    pub as_of: Cut,
    /// The oldest event (record timestamp, ms since the epoch) the released
    /// micro-batches counted, as their watermarks tell.
    pub oldest_event_ms: Option<i64>,
    /// Per events partition, the newest timestamp that moved its watermark,
    /// as the released watermarks tell.
    pub newest: BTreeMap<Partition, Millis>,
    /// Per events partition, where a writer started past its checkpoint, as
    /// the released watermarks tell (see [`Watermark::starts`]): the replica
    /// applies the release only once its view or its own counts reach these.
    pub starts: Cut,
}

/// One writer's upserts of one events partition in one lane, closed by its
/// watermark.
#[derive(Debug)]
struct Segment {
    /// The position its watermark named for the events partition.
    position: Offset,
    upserts: Vec<RealtimeUpsert>,
    /// The lane offset of its first message (an upsert's or the watermark's).
    first: Offset,
    oldest_event_ms: Option<i64>,
    newest: Option<Millis>,
    start: Option<Offset>,
}

/// One writer's upserts of one events partition since its last watermark.
#[derive(Debug)]
struct Open {
    upserts: Vec<RealtimeUpsert>,
    first: Offset,
}

/// A writer's segments of one events partition.
type Source = (WriterId, Partition);

/// A writer's round in one lane, not closed yet.
#[derive(Debug, Default)]
struct RoundInLane {
    upserts: Vec<RealtimeUpsert>,
    /// The indexes of the upserts records held.
    indexes: BTreeSet<u32>,
    watermark: Option<Watermark>,
    /// The lane offset of its first message.
    first: Option<Offset>,
}

impl RoundInLane {
    fn read_at(&mut self, offset: Offset) {
        self.first = Some(self.first.map_or(offset, |f| f.min(offset)));
    }

    /// Whether it holds its watermark and every record it counts on `lane`.
    fn is_complete(&self, lane: usize) -> bool {
        self.watermark
            .as_ref()
            .and_then(|w| w.round.as_ref())
            .and_then(|r| r.records.get(lane))
            .is_some_and(|&n| self.indexes.len() == n as usize)
    }
}

#[derive(Debug, Default)]
struct Lane {
    /// Rounds not closed yet, by writer and round number.
    rounds: BTreeMap<(WriterId, u64), RoundInLane>,
    /// Each writer's round closed last: a record of it read later is a
    /// re-sent one that had arrived after all.
    last_round: BTreeMap<WriterId, u64>,
    open: BTreeMap<Source, Open>,
    /// Closed segments not released yet, in arrival order.
    closed: BTreeMap<Source, Vec<Segment>>,
    /// The position of each source's last released segment.
    released: BTreeMap<Source, Offset>,
    /// The offset after the last message read.
    read_to: Option<Offset>,
    /// The resume offset last reported in a release.
    reported: Option<Offset>,
}

impl Lane {
    /// Whether the source's segment ending at `position` is here (released
    /// or not).
    fn has_boundary(&self, source: Source, position: Offset) -> bool {
        self.released.get(&source) == Some(&position)
            || self
                .closed
                .get(&source)
                .is_some_and(|s| s.iter().any(|s| s.position == position))
    }

    /// Where re-reading the lane recovers everything not released yet.
    fn resume_at(&self) -> Option<Offset> {
        let open = self.open.values().map(|o| o.first);
        let closed = self.closed.values().flatten().map(|s| s.first);
        let rounds = self.rounds.values().filter_map(|r| r.first);
        open.chain(closed).chain(rounds).min().or(self.read_to)
    }

    /// Holds `upserts` as `source`'s since its last watermark, the first
    /// read at `offset`.
    fn open(&mut self, offset: Offset, writer: WriterId, upserts: Vec<RealtimeUpsert>) {
        for u in upserts {
            let open = self.open.entry((writer, u.partition)).or_insert(Open {
                upserts: Vec::new(),
                first: offset,
            });
            open.first = open.first.min(offset);
            open.upserts.push(u);
        }
    }

    /// Closes the writer's open upserts of every events partition the
    /// watermark names, at its positions; `offset` is the lane offset of the
    /// first message of what it closes.
    fn close(&mut self, offset: Offset, watermark: Watermark) {
        for (p, position) in watermark.positions.iter() {
            // A checkpoint at this position counts the events below it.
            let open = self.open.remove(&(watermark.writer, p));
            let (upserts, first) = open.map_or((Vec::new(), offset), |o| (o.upserts, o.first));
            self.closed
                .entry((watermark.writer, p))
                .or_default()
                .push(Segment {
                    position,
                    upserts,
                    first,
                    oldest_event_ms: watermark.oldest_event_ms,
                    newest: watermark.newest.get(&p).copied(),
                    start: watermark
                        .starts
                        .iter()
                        .find(|&(q, _)| q == p)
                        .map(|(_, o)| o),
                });
        }
    }

    /// Whether `round` is the writer's round closed last here (so a
    /// message of it read now was re-sent after it had arrived after all).
    fn closed_last(&self, writer: WriterId, round: u64) -> bool {
        self.last_round.get(&writer) == Some(&round)
    }

    /// The writer's round `key`, a message of which was read at `offset`.
    fn round_read_at(&mut self, key: (WriterId, u64), offset: Offset) -> &mut RoundInLane {
        let round = self.rounds.entry(key).or_default();
        round.read_at(offset);
        round
    }

    /// Closes the round `key` if it is complete in this lane (number
    /// `lane`).
    fn close_round_if_complete(&mut self, lane: usize, key: (WriterId, u64)) {
        if !self.rounds.get(&key).is_some_and(|r| r.is_complete(lane)) {
            return;
        }
        let round = self.rounds.remove(&key).expect("checked");
        self.last_round.insert(key.0, key.1);
        let first = round.first.expect("a round read has a first offset");
        let watermark = round.watermark.expect("a complete round has its watermark");
        self.open(first, key.0, round.upserts);
        self.close(first, watermark);
    }

    /// Opens the upserts of the writer's rounds still incomplete here,
    /// other than `round`, whose watermark just arrived (see the module's
    /// docs): that watermark closes them with its own round's.
    fn reopen_other_rounds(&mut self, writer: WriterId, round: Option<u64>) {
        let stale: Vec<(WriterId, u64)> = self
            .rounds
            .keys()
            .filter(|&&(w, r)| w == writer && Some(r) != round)
            .copied()
            .collect();
        for key in stale {
            let left = self.rounds.remove(&key).expect("listed");
            if let Some(first) = left.first {
                self.open(first, writer, left.upserts);
            }
        }
    }
}

/// Lane `lane`, read up to `offset` (none for a lane the gate does not
/// have).
fn read(lanes: &mut [Lane], lane: i32, offset: Offset) -> Option<&mut Lane> {
    let l = lanes.get_mut(usize::try_from(lane).ok()?)?;
    l.read_to = Some(offset + 1);
    Some(l)
}

#[derive(Debug)]
pub struct WatermarkGate {
    lanes: Vec<Lane>,
    held: usize,
    as_of: Cut,
}

impl WatermarkGate {
    /// A gate over `lanes` topic partitions. A replica resuming from its
    /// store passes the `as_of` it stored: every lane had reached it.
    pub fn new(lanes: usize, resumed: Option<Cut>) -> Self {
        let as_of = resumed.unwrap_or_default();
        let lanes = (0..lanes).map(|_| Lane::default()).collect();
        Self {
            lanes,
            held: 0,
            as_of,
        }
    }

    /// Upserts received but not released yet.
    pub fn held(&self) -> usize {
        self.held
    }

    /// `writer`'s upserts read at `offset` of `lane`.
    pub fn upsert(
        &mut self,
        lane: i32,
        offset: Offset,
        writer: WriterId,
        upserts: Vec<RealtimeUpsert>,
    ) {
        let Some(l) = read(&mut self.lanes, lane, offset) else {
            return;
        };
        self.held += upserts.len();
        l.open(offset, writer, upserts);
    }

    /// `writer`'s upserts record `part` of one of its rounds, read at
    /// `offset` of `lane`: held with the round until it is complete here.
    pub fn round_upserts(
        &mut self,
        lane: i32,
        offset: Offset,
        writer: WriterId,
        part: RoundPart,
        upserts: Vec<RealtimeUpsert>,
    ) {
        let Some(l) = read(&mut self.lanes, lane, offset) else {
            return;
        };
        if l.closed_last(writer, part.round) {
            return;
        }
        let key = (writer, part.round);
        let round = l.round_read_at(key, offset);
        // A record re-sent after it had arrived after all is held once.
        if round.indexes.insert(part.index) {
            self.held += upserts.len();
            round.upserts.extend(upserts);
        }
        l.close_round_if_complete(lane as usize, key);
    }

    /// A watermark read at `offset` of `lane`: closes its writer's upserts
    /// of every events partition it names — of its round, once the lane
    /// holds every record of it.
    pub fn watermark(&mut self, lane: i32, offset: Offset, watermark: Watermark) {
        let Some(l) = read(&mut self.lanes, lane, offset) else {
            return;
        };
        let writer = watermark.writer;
        let number = watermark.round.as_ref().map(|r| r.number);
        if number.is_some_and(|n| l.closed_last(writer, n)) {
            return;
        }
        l.reopen_other_rounds(writer, number);
        let Some(number) = number else {
            l.close(offset, watermark);
            return;
        };
        l.round_read_at((writer, number), offset).watermark = Some(watermark);
        l.close_round_if_complete(lane as usize, (writer, number));
    }

    /// The furthest position of `source` that is complete: its segment
    /// ending there is in every lane.
    fn complete(&self, source: Source) -> Option<Offset> {
        let (first, others) = self.lanes.split_first()?;
        let candidates = first
            .closed
            .get(&source)
            .into_iter()
            .flatten()
            .map(|s| s.position);
        candidates
            .chain(first.released.get(&source).copied())
            .filter(|&at| others.iter().all(|lane| lane.has_boundary(source, at)))
            .max()
    }

    /// Takes every closed segment at or below the new `as_of`; `None` when
    /// nothing moved.
    pub fn release(&mut self) -> Option<Release> {
        let mut release = Release::default();
        let mut moved = false;
        let sources: BTreeSet<Source> = self
            .lanes
            .iter()
            .flat_map(|lane| lane.closed.keys().copied())
            .collect();
        for &source in &sources {
            let p = source.1;
            let Some(complete) = self.complete(source) else {
                continue;
            };
            if self.as_of.iter().all(|(q, _)| q != p) || complete > self.as_of.get(p) {
                self.as_of.set(p, complete.max(self.as_of.get(p)));
                moved = true;
            }
        }
        for source in sources {
            let p = source.1;
            if self.as_of.iter().all(|(q, _)| q != p) {
                continue;
            }
            let as_of = self.as_of.get(p);
            for lane in &mut self.lanes {
                let Some(segments) = lane.closed.get_mut(&source) else {
                    continue;
                };
                // A writer's positions only grow: the released ones lead.
                let n = segments.iter().take_while(|s| s.position <= as_of).count();
                for s in segments.drain(..n) {
                    self.held -= s.upserts.len();
                    moved |= !s.upserts.is_empty();
                    lane.released.insert(source, s.position);
                    release.upserts.extend(s.upserts);
                    if let Some(t) = s.oldest_event_ms {
                        release.oldest_event_ms =
                            Some(release.oldest_event_ms.map_or(t, |o| o.min(t)));
                    }
                    if let Some(t) = s.newest {
                        let n = release.newest.entry(p).or_insert(t);
                        *n = (*n).max(t);
                    }
                    if let Some(o) = s.start {
                        release.starts.set(p, o.max(release.starts.get(p)));
                    }
                }
            }
        }
        for (r, lane) in self.lanes.iter_mut().enumerate() {
            lane.closed.retain(|_, segments| !segments.is_empty());
            if let Some(resume) = lane.resume_at().filter(|&o| Some(o) != lane.reported) {
                lane.reported = Some(resume);
                release.next_offsets.push((r as i32, resume));
                moved = true;
            }
        }
        release.as_of = self.as_of.clone();
        moved.then_some(release)
    }
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(pairs: &[(i32, i64)]) -> Cut {
        pairs.iter().copied().collect()
    }

    pub(super) fn mark(writer: WriterId, pairs: &[(i32, i64)]) -> Watermark {
        Watermark {
            writer,
            positions: pairs.iter().copied().collect(),
            oldest_event_ms: None,
            newest: BTreeMap::new(),
            starts: Cut::new(),
            round: None,
        }
    }

    fn up(word: &str, partition: Partition, count: u64) -> RealtimeUpsert {
        RealtimeUpsert {
            word: word.into(),
            partition,
            bucket: 0,
            count,
        }
    }

    #[test]
    fn a_micro_batch_is_released_only_when_every_lane_closed_it() {
        let mut gate = WatermarkGate::new(2, None);
        gate.upsert(0, 0, 7, vec![up("a", 0, 1)]);
        gate.upsert(1, 0, 7, vec![up("b", 0, 1)]);
        gate.watermark(0, 1, mark(7, &[(0, 5)]));
        assert_eq!(
            gate.release().map(|r| r.upserts),
            Some(vec![]),
            "lane 1 has not closed it yet"
        );
        // The next micro-batch starts on lane 0 before lane 1 closes the first.
        gate.upsert(0, 2, 7, vec![up("a", 0, 2)]);
        gate.watermark(1, 1, mark(7, &[(0, 5)]));
        let r = gate.release().expect("complete");
        assert_eq!(r.as_of, cut(&[(0, 5)]));
        assert_eq!(r.upserts, vec![up("a", 0, 1), up("b", 0, 1)]);
        assert_eq!(
            r.next_offsets,
            vec![(0, 2), (1, 2)],
            "lane 0 resumes at the upsert still held"
        );
        assert_eq!(gate.held(), 1, "the second micro-batch's upsert waits");
        assert_eq!(gate.release(), None, "nothing moved");
    }

    /// One round: a lane's watermark came before a record that was
    /// re-sent, and another record came twice.
    #[test]
    fn a_round_closes_in_a_lane_only_with_every_record_it_counts() {
        use lambda_core::realtime::Round;
        let part = |index| RoundPart { round: 41, index };
        let closing = |records: Vec<u32>| Watermark {
            round: Some(Round {
                number: 41,
                records,
            }),
            ..mark(7, &[(0, 5)])
        };
        let mut gate = WatermarkGate::new(2, None);
        gate.round_upserts(0, 0, 7, part(0), vec![up("a", 0, 1)]);
        gate.watermark(0, 1, closing(vec![2, 0]));
        gate.watermark(1, 0, closing(vec![2, 0]));
        gate.round_upserts(0, 2, 7, part(0), vec![up("a", 0, 1)]);
        assert_eq!(
            gate.release().map(|r| r.upserts),
            Some(vec![]),
            "lane 0 lacks record 1"
        );
        assert_eq!(gate.held(), 1, "the record that came twice is held once");
        gate.round_upserts(0, 3, 7, part(1), vec![up("b", 0, 2)]);
        let r = gate.release().expect("complete");
        assert_eq!(r.as_of, cut(&[(0, 5)]));
        assert_eq!(r.upserts, vec![up("a", 0, 1), up("b", 0, 2)]);
        assert_eq!(r.next_offsets, vec![(0, 4), (1, 1)]);
        // Read again after the round closed: nothing more is held.
        gate.round_upserts(0, 4, 7, part(1), vec![up("b", 0, 2)]);
        gate.watermark(0, 5, closing(vec![2, 0]));
        assert_eq!(gate.held(), 0);
        assert_eq!(gate.release().map(|r| r.upserts), Some(vec![]));
    }

    #[test]
    fn a_watermark_lost_in_a_crash_is_covered_by_the_writers_next() {
        let mut gate = WatermarkGate::new(2, Some(cut(&[(0, 1)])));
        gate.upsert(0, 0, 7, vec![up("a", 0, 1)]);
        gate.watermark(0, 1, mark(7, &[(0, 5)]));
        // The speed layer died before the watermark reached lane 1, then
        // (the same writer, restarted) re-published its checkpoint and a
        // later watermark everywhere.
        gate.upsert(1, 0, 7, vec![up("b", 0, 3)]);
        gate.watermark(0, 2, mark(7, &[(0, 9)]));
        gate.watermark(1, 1, mark(7, &[(0, 9)]));
        let r = gate.release().expect("complete");
        assert_eq!(r.as_of, cut(&[(0, 9)]));
        assert_eq!(r.upserts.len(), 2);
        assert_eq!(r.next_offsets, vec![(0, 3), (1, 2)]);
        assert_eq!(gate.held(), 0);
    }

    /// The writer was killed after its watermark at 5 reached lane 0 but
    /// not lane 1; restarted, it re-published and closed at 9 everywhere.
    /// Lane 1's segment at 9 holds counts made at 5 and after: releasing at
    /// 5 would leave lane 1's keys behind `as_of`, so 5 is never complete.
    #[test]
    fn a_position_a_lane_skipped_is_never_complete() {
        let mut gate = WatermarkGate::new(2, None);
        gate.upsert(0, 0, 7, vec![up("a", 0, 1)]);
        gate.upsert(1, 0, 7, vec![up("b", 0, 1)]);
        gate.watermark(0, 1, mark(7, &[(0, 5)]));
        gate.upsert(1, 1, 7, vec![up("b", 0, 2)]);
        gate.watermark(1, 2, mark(7, &[(0, 9)]));
        let r = gate.release().expect("lane positions moved");
        assert!(r.upserts.is_empty() && r.as_of.is_empty(), "{r:?}");
        gate.upsert(0, 2, 7, vec![up("a", 0, 3)]);
        gate.watermark(0, 3, mark(7, &[(0, 9)]));
        let r = gate.release().expect("complete at 9");
        assert_eq!(r.as_of, cut(&[(0, 9)]));
        assert_eq!(r.upserts.len(), 4);
        assert_eq!(gate.held(), 0);
    }

    /// Two writers own different events partitions: each partition is
    /// released on its own writer's watermarks, and one writer's half
    /// micro-batch is never closed by the other's watermark.
    #[test]
    fn writers_of_different_partitions_are_released_independently() {
        let mut gate = WatermarkGate::new(2, None);
        gate.upsert(0, 0, 1, vec![up("a", 0, 1), up("b", 1, 1)]);
        gate.upsert(1, 0, 2, vec![up("c", 2, 4)]);
        for lane in 0..2 {
            gate.watermark(lane, 1 + lane as i64, mark(2, &[(2, 30)]));
        }
        let r = gate.release().expect("writer 2's partition");
        assert_eq!(r.upserts, vec![up("c", 2, 4)]);
        assert_eq!(r.as_of, cut(&[(2, 30)]));
        assert_eq!(gate.held(), 2, "writer 1's upserts wait for its watermarks");
        for lane in 0..2 {
            gate.watermark(lane, 5, mark(1, &[(0, 10), (1, 20)]));
        }
        let r = gate.release().expect("writer 1's partitions");
        assert_eq!(r.upserts, vec![up("a", 0, 1), up("b", 1, 1)]);
        assert_eq!(r.as_of, cut(&[(0, 10), (1, 20), (2, 30)]));
    }

    /// During a handover (or from a zombie) two writers publish counts of
    /// the same events partition. A watermark closes only its own writer's
    /// upserts, and a segment is released only once every lane is at least
    /// at its position, so counts from the writer that is further along
    /// never come out under the other's smaller position.
    #[test]
    fn two_writers_of_one_partition_never_mix_their_micro_batches() {
        let mut gate = WatermarkGate::new(2, None);
        // The old owner (1) at 80 has counts in flight on lane 0 …
        gate.upsert(0, 0, 1, vec![up("a", 0, 8)]);
        // … while the new owner (2) restarted at 50 closes its own at 60.
        gate.upsert(0, 1, 2, vec![up("a", 0, 6)]);
        gate.watermark(0, 2, mark(2, &[(0, 60)]));
        gate.watermark(1, 0, mark(2, &[(0, 60)]));
        let r = gate.release().expect("released");
        assert_eq!(r.as_of, cut(&[(0, 60)]));
        assert_eq!(r.upserts, vec![up("a", 0, 6)], "only writer 2's, at 60");
        // Writer 1's watermark at 80 reaches lane 0 only: not complete.
        gate.watermark(0, 3, mark(1, &[(0, 80)]));
        assert_eq!(gate.release(), None);
        assert_eq!(gate.held(), 1);
        gate.watermark(1, 1, mark(1, &[(0, 80)]));
        let r = gate.release().expect("released");
        assert_eq!((r.as_of, r.upserts), (cut(&[(0, 80)]), vec![up("a", 0, 8)]));
    }

    #[test]
    fn a_release_carries_the_oldest_event_time_and_starts_of_what_it_releases() {
        let at = |pairs: &[(i32, i64)], ms, start| Watermark {
            writer: 3,
            positions: pairs.iter().copied().collect(),
            oldest_event_ms: Some(ms),
            newest: [(0, ms + 10)].into_iter().collect(),
            starts: cut(&[(0, start)]),
            round: None,
        };
        let mut gate = WatermarkGate::new(1, None);
        gate.watermark(0, 0, at(&[(0, 5)], 2_000, 4));
        gate.watermark(0, 1, at(&[(0, 9)], 1_000, 2));
        gate.watermark(0, 2, mark(3, &[(0, 12)]));
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
        gate.watermark(0, 3, mark(3, &[(0, 15)]));
        assert_eq!(gate.release().map(|r| r.oldest_event_ms), Some(None));
    }
}
