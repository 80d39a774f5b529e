//! One events partition, two writers: writer 1 counts from offset 0;
//! writer 2 takes over from writer 1's checkpoint at `handover` (its
//! restored counts re-published first) while writer 1 goes on as a
//! zombie. Each publishes its changed counts, each routed to its lane,
//! then a watermark to every lane — sometimes one lost on the lanes
//! after the first (killed mid-way). Lanes are read in any interleaving.
//! After every release, each count applied as `max` equals the true
//! count at `as_of`, which never goes down.

use super::tests::mark;
use super::*;
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

/// A writer's messages per lane: `(is watermark, upserts or position)`.
type Messages = Vec<Vec<Message>>;

#[derive(Debug, Clone)]
enum Message {
    Upserts(Vec<RealtimeUpsert>),
    Watermark(i64),
}

fn publish(
    lanes: &mut Messages,
    before: &BTreeMap<(String, u64), u64>,
    at: i64,
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
    for (lane, upserts) in routed.into_iter().enumerate() {
        if !upserts.is_empty() {
            lanes[lane].push(Message::Upserts(upserts));
        }
        if lane == 0 || !lost_after_first {
            lanes[lane].push(Message::Watermark(at));
        }
    }
}

/// A writer publishing at `positions` (increasing), starting from
/// the counts at `from`.
fn writer(from: i64, positions: &[i64], lost: &[bool]) -> Messages {
    let mut lanes = vec![Vec::new(); LANES];
    let mut before = BTreeMap::new();
    if from > 0 {
        // The restored checkpoint, re-published at start.
        publish(&mut lanes, &before, from, false);
        before = counts_at(from);
    }
    let n = positions.len();
    for (k, &at) in positions.iter().enumerate() {
        // A lost watermark only before a later one (the restart's).
        publish(&mut lanes, &before, at, lost[k] && k + 1 < n);
        before = counts_at(at);
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
    ) {
        let p1 = positions(0, steps1);
        let from = p1[handover.min(p1.len() - 1)];
        let p2 = positions(from, steps2);
        let (w1, w2) = (writer(0, &p1, &lost), writer(from, &p2, &lost[8..]));
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
                Message::Upserts(u) => gate.upsert(lane as i32, offset, writer, u),
                Message::Watermark(at) => {
                    gate.watermark(lane as i32, offset, mark(writer, &[(0, at)]))
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
