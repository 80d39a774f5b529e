//! One events partition, two writers: writer 1 counts from offset 0;
//! writer 2 takes over from writer 1's checkpoint at `handover` (its
//! restored counts re-published first) while writer 1 goes on as a
//! zombie. Each publishes its changed counts, each routed to its lane,
//! and a watermark to every lane: in the older order (the upserts, then
//! the watermarks) or in rounds, where a lane's records and watermark come
//! in any order, some records twice (re-sent). Sometimes a writer is killed
//! mid-way: the lanes after the first lose their watermark (and, in
//! rounds, records), and the writer, restarted, re-publishes all its
//! counts. Lanes are read in any interleaving. After every release, each
//! count applied as `max` equals the true count at `as_of`, which never
//! goes down.

use super::tests::mark;
use super::*;
use lambda_core::realtime::Round;
use proptest::prelude::*;

const LANES: usize = 3;
const BUCKET: i64 = 4;

/// Event `i`'s word.
fn word(i: i64) -> String {
    format!("w{}", (i * 7 + i / 3) % 5)
}

fn counts_at(pos: i64) -> BTreeMap<(String, u64), u64> {
    let mut c = BTreeMap::new();
    for i in 0..pos {
        *c.entry((word(i), (i / BUCKET) as u64)).or_insert(0) += 1;
    }
    c
}

/// A writer's messages per lane.
type Messages = Vec<Vec<Message>>;

#[derive(Debug, Clone)]
enum Message {
    Upserts(Option<RoundPart>, Vec<RealtimeUpsert>),
    Watermark(i64, Option<Round>),
}

/// How a writer publishes, and its choices per publication.
struct Publishing<'a> {
    rounds: bool,
    /// Per publication: killed mid-way (not the last), then restarted.
    lost: &'a [bool],
    /// Per publication and lane: how its records and watermark are
    /// shuffled (rounds only).
    order: &'a [u8],
}

fn publish(
    lanes: &mut Messages,
    before: &BTreeMap<(String, u64), u64>,
    at: i64,
    round: Option<(u64, u8)>,
    lost_after_first: bool,
) {
    let now = counts_at(at);
    let mut routed: Vec<Vec<RealtimeUpsert>> = vec![Vec::new(); LANES];
    for ((w, b), &c) in &now {
        if before.get(&(w.clone(), *b)) != Some(&c) {
            let lane = lambda_core::realtime::route(w, 0, *b, LANES) as usize;
            routed[lane].push(RealtimeUpsert {
                word: w.clone(),
                partition: 0,
                bucket: *b,
                count: c,
            });
        }
    }
    let Some((number, order)) = round else {
        for (lane, upserts) in routed.into_iter().enumerate() {
            if !upserts.is_empty() {
                lanes[lane].push(Message::Upserts(None, upserts));
            }
            if lane == 0 || !lost_after_first {
                lanes[lane].push(Message::Watermark(at, None));
            }
        }
        return;
    };
    // Records of at most two upserts, so that a lane often has several.
    let records: Vec<Vec<Vec<RealtimeUpsert>>> = routed
        .into_iter()
        .map(|u| u.chunks(2).map(<[_]>::to_vec).collect())
        .collect();
    let round = Round {
        number,
        records: records.iter().map(|r| r.len() as u32).collect(),
    };
    for (lane, records) in records.into_iter().enumerate() {
        let mut messages: Vec<Message> = (0..)
            .zip(records)
            .map(|(index, u)| {
                Message::Upserts(
                    Some(RoundPart {
                        round: number,
                        index,
                    }),
                    u,
                )
            })
            .collect();
        let bits = order.rotate_left(lane as u32);
        if lost_after_first && lane > 0 {
            // Killed mid-way: no watermark here, maybe not every record.
            messages.truncate(bits as usize % (messages.len() + 1));
            lanes[lane].extend(messages);
            continue;
        }
        // The watermark somewhere among the records (those after it were
        // re-sent), and maybe the first record again, anywhere after it (a
        // re-sent one that had arrived after all).
        let at_index = bits as usize % (messages.len() + 1);
        messages.insert(at_index, Message::Watermark(at, Some(round.clone())));
        if bits & 0x80 != 0 && messages.len() > 1 {
            let first = messages
                .iter()
                .position(|m| matches!(m, Message::Upserts(..)))
                .expect("a record");
            let again = first + 1 + (bits >> 3) as usize % (messages.len() - first);
            messages.insert(again, messages[first].clone());
        }
        lanes[lane].extend(messages);
    }
}

/// A writer publishing at `positions` (increasing), starting from
/// the counts at `from`.
fn writer(from: i64, positions: &[i64], how: &Publishing<'_>) -> Messages {
    let mut lanes = vec![Vec::new(); LANES];
    let mut rounds = (0u64..).map(|n| n * 7 + from as u64);
    let mut round = |k: usize| {
        let number = rounds.next().expect("endless");
        how.rounds.then(|| (number, how.order[k % how.order.len()]))
    };
    let mut before = BTreeMap::new();
    if from > 0 {
        // The restored checkpoint, re-published at start.
        publish(&mut lanes, &before, from, round(0), false);
        before = counts_at(from);
    }
    let n = positions.len();
    for (k, &at) in positions.iter().enumerate() {
        // Killed only before a later publication (the restart's).
        let killed = how.lost[k] && k + 1 < n;
        publish(&mut lanes, &before, at, round(k + 1), killed);
        before = if killed && how.rounds {
            // Restarted: its whole checkpoint is re-published.
            BTreeMap::new()
        } else {
            counts_at(at)
        };
    }
    lanes
}

fn positions(start: i64, steps: Vec<i64>) -> Vec<i64> {
    steps
        .into_iter()
        .scan(start, |at, step| {
            *at += step;
            Some(*at)
        })
        .collect()
}

proptest! {
    #[test]
    fn counts_are_exact_at_as_of_whatever_the_interleaving(
        steps1 in prop::collection::vec(1i64..9, 1..8),
        steps2 in prop::collection::vec(1i64..9, 0..8),
        lost in prop::collection::vec(prop::bool::weighted(0.2), 16),
        handover in 0usize..8,
        picks in prop::collection::vec(0usize..64, 200),
        rounds in prop::bool::ANY,
        order in prop::collection::vec(prop::num::u8::ANY, 1..16),
    ) {
        let p1 = positions(0, steps1);
        let from = p1[handover.min(p1.len() - 1)];
        let p2 = positions(from, steps2);
        let how = |lost| Publishing { rounds, lost, order: &order };
        let (w1, w2) = (writer(0, &p1, &how(&lost)), writer(from, &p2, &how(&lost[8..])));
        // Each lane: the two writers' messages merged in a random
        // order that keeps each writer's own order.
        let mut lanes: Vec<Vec<(WriterId, Message)>> = Vec::new();
        let mut pick = picks.iter().cycle();
        for lane in 0..LANES {
            let (mut a, mut b) = (w1[lane].iter(), w2[lane].iter());
            let (mut next_a, mut next_b) = (a.next(), b.next());
            let mut merged = Vec::new();
            while next_a.is_some() || next_b.is_some() {
                let take_a = next_b.is_none()
                    || (next_a.is_some() && pick.next().expect("cycles") % 2 == 0);
                if take_a {
                    merged.push((1, next_a.take().expect("some").clone()));
                    next_a = a.next();
                } else {
                    merged.push((2, next_b.take().expect("some").clone()));
                    next_b = b.next();
                }
            }
            lanes.push(merged);
        }
        let mut gate = WatermarkGate::new(LANES, None);
        let mut read = [0usize; LANES];
        let mut applied: BTreeMap<(String, u64), u64> = BTreeMap::new();
        let mut last_as_of = 0;
        loop {
            let open: Vec<usize> = (0..LANES).filter(|&l| read[l] < lanes[l].len()).collect();
            if open.is_empty() {
                break;
            }
            let lane = open[pick.next().expect("cycles") % open.len()];
            let offset = read[lane] as i64;
            let (writer, message) = lanes[lane][read[lane]].clone();
            read[lane] += 1;
            match message {
                Message::Upserts(None, u) => gate.upsert(lane as i32, offset, writer, u),
                Message::Upserts(Some(part), u) => {
                    gate.round_upserts(lane as i32, offset, writer, part, u)
                }
                Message::Watermark(at, round) => {
                    let watermark = Watermark { round, ..mark(writer, &[(0, at)]) };
                    gate.watermark(lane as i32, offset, watermark)
                }
            }
            if let Some(r) = gate.release() {
                for u in r.upserts {
                    let c = applied.entry((u.word, u.bucket)).or_insert(0);
                    *c = (*c).max(u.count);
                }
                let as_of = r.as_of.get(0);
                prop_assert!(as_of >= last_as_of, "as_of went down");
                last_as_of = as_of;
                let want: BTreeMap<_, _> = counts_at(as_of);
                let got: BTreeMap<_, _> =
                    applied.iter().filter(|(_, &c)| c > 0).map(|(k, &c)| (k.clone(), c)).collect();
                prop_assert_eq!(got, want, "at as_of {}", as_of);
            }
        }
        // Every writer's last watermark reached every lane.
        let last = p1.last().copied().max(p2.last().copied()).expect("positions");
        prop_assert_eq!(last_as_of, last);
        prop_assert_eq!(gate.held(), 0);
    }
}
