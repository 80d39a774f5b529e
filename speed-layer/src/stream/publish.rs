//! Publication: a checkpointed micro-batch's counts go to the realtime
//! topic as packed upserts with a watermark on every realtime partition, in
//! one round (see [`lambda_core::realtime`]): the watermarks do not wait for
//! the upserts' acknowledgements, since serving layers count a round's
//! records before they close it. That wait was a second trip through the
//! broker on every event's way to answers (publication 6.2 -> 3.3 ms mean at
//! 20,000 events/s, `bench/freshness.py`).
//!
//! It runs beside consumption: a checkpointed micro-batch's upserts go out
//! while the next one is counted, and whatever checkpoints queued up
//! meanwhile go out together in the next round (one round of upserts and
//! one of watermarks however many micro-batches it carries), so the
//! publisher keeps up with small micro-batches. The channel is short, so a
//! slow broker still slows consumption (backpressure, bounded memory).

use crate::metrics::SpeedMetrics;
use common::kafka::send_all;
use common::shutdown::CancellationToken;
use common::telemetry::events::PublishRetried;
use lambda_core::realtime::{
    round_upserts_key, route, Packer, Round, RoundPart, Watermark, WriterId, WATERMARK_KEY,
};
use lambda_core::window::Millis;
use lambda_core::{Cut, Partition, Positions};
use rdkafka::producer::FutureProducer;
use realtime_store::CountKey;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A checkpointed micro-batch's changed counts and the positions it reached.
pub(super) struct Publication {
    pub(super) upserts: Vec<(CountKey, u64)>,
    pub(super) positions: Positions,
    /// Per partition, the newest timestamp that moved its watermark, at
    /// `positions`.
    pub(super) newest: BTreeMap<Partition, Millis>,
    /// Where partitions started past their checkpoint (see
    /// [`Watermark::starts`]).
    pub(super) starts: Cut,
    /// The oldest counted event's record timestamp (none for the start-up
    /// re-publication).
    pub(super) oldest_event_ms: Option<i64>,
    pub(super) checkpointed_at: Instant,
}

impl Publication {
    /// This publication with later ones folded in, to go out in one round.
    /// Counts are absolute and only grow, so a key's latest count replaces
    /// the earlier ones; the latest positions cover every checkpoint folded
    /// in, and the watermark carrying them follows all of their upserts.
    fn coalesce(self, later: Vec<Publication>) -> Publication {
        if later.is_empty() {
            return self;
        }
        let total = self.upserts.len() + later.iter().map(|p| p.upserts.len()).sum::<usize>();
        let mut counts = FxHashMap::with_capacity_and_hasher(total, Default::default());
        counts.extend(self.upserts);
        let (mut positions, mut oldest) = (self.positions, self.oldest_event_ms);
        let (mut newest, mut starts) = (self.newest, self.starts);
        for p in later {
            for (key, count) in p.upserts {
                let c = counts.entry(key).or_insert(0);
                *c = (*c).max(count);
            }
            positions = p.positions;
            newest = p.newest;
            starts = p.starts;
            oldest = match (oldest, p.oldest_event_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Publication {
            upserts: counts.into_iter().collect(),
            positions,
            newest,
            starts,
            oldest_event_ms: oldest,
            checkpointed_at: self.checkpointed_at,
        }
    }
}

/// Starts the publisher: publications sent to the returned channel go out
/// in order until it is closed; then the task ends.
pub(super) fn spawn_publisher(
    producer: FutureProducer,
    topic: String,
    realtime_partitions: usize,
    writer: WriterId,
    metrics: Arc<SpeedMetrics>,
    token: CancellationToken,
) -> (mpsc::Sender<Publication>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Publication>(8);
    let task = tokio::spawn(async move {
        // Round numbers: from a random start, so that a restarted writer
        // (the same id) does not reuse the numbers of rounds it left behind.
        let mut round = common::random_id();
        while let Some(first) = rx.recv().await {
            let mut queued = Vec::new();
            while let Ok(later) = rx.try_recv() {
                queued.push(later);
            }
            let publication = first.coalesce(queued);
            let out = Outbox {
                producer: &producer,
                topic: &topic,
                metrics: &metrics,
                token: &token,
            };
            round = round.wrapping_add(1);
            let watermark = Watermark {
                writer,
                positions: publication.positions,
                oldest_event_ms: publication.oldest_event_ms,
                newest: publication.newest,
                starts: publication.starts,
                round: None,
            };
            let records = round_records(
                writer,
                round,
                &publication.upserts,
                watermark,
                realtime_partitions,
            );
            if out.deliver(records).await {
                metrics
                    .upserts_published
                    .add(publication.upserts.len() as u64);
                metrics
                    .publish_stage
                    .observe(publication.checkpointed_at.elapsed());
            }
        }
    });
    (tx, task)
}

/// Where publications go.
struct Outbox<'a> {
    producer: &'a FutureProducer,
    topic: &'a str,
    metrics: &'a SpeedMetrics,
    token: &'a CancellationToken,
}

impl Outbox<'_> {
    /// Sends `(key, payload, partition)` records until each is acknowledged.
    /// Returns false if cancelled first (the checkpoint re-publishes them on
    /// the next start).
    async fn deliver(&self, mut pending: Vec<(String, Vec<u8>, Option<i32>)>) -> bool {
        let mut delay = Duration::from_millis(100);
        while !pending.is_empty() {
            let results = send_all(self.producer, self.topic, &pending).await;
            let mut failed = Vec::new();
            for (record, r) in pending.into_iter().zip(results) {
                match r {
                    Ok(()) => self.metrics.realtime_records.inc(),
                    Err(error) => {
                        let (topic, error) = (self.topic, &error);
                        PublishRetried { topic, error }.emit(&self.metrics.publish_failures);
                        failed.push(record);
                    }
                }
            }
            pending = failed;
            if !pending.is_empty() {
                if self.token.is_cancelled() {
                    return false;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        true
    }
}

/// A micro-batch's round `number` from `writer`: its counts packed into
/// upserts records, each upsert on the realtime partition its key routes
/// to, and after them on every partition the watermark, which counts the
/// round's records there.
fn round_records(
    writer: WriterId,
    number: u64,
    counts: &[(CountKey, u64)],
    mut watermark: Watermark,
    partitions: usize,
) -> Vec<(String, Vec<u8>, Option<i32>)> {
    let mut packers: Vec<Packer> = (0..partitions).map(|_| Packer::default()).collect();
    for (k, c) in counts {
        let (word, partition, bucket) = (&*k.word, k.bucket.partition, k.bucket.bucket);
        packers[route(word, partition, bucket, partitions) as usize]
            .push(word, partition, bucket, *c);
    }
    let mut records = Vec::new();
    let mut per_lane = Vec::with_capacity(partitions);
    for (lane, packer) in packers.into_iter().enumerate() {
        let payloads = packer.finish();
        per_lane.push(u32::try_from(payloads.len()).expect("fewer than 2^32 records"));
        for (index, payload) in (0..).zip(payloads) {
            let key = round_upserts_key(
                writer,
                RoundPart {
                    round: number,
                    index,
                },
            );
            records.push((key, payload, Some(lane as i32)));
        }
    }
    watermark.round = Some(Round {
        number,
        records: per_lane,
    });
    let payload = serde_json::to_vec(&watermark).expect("a watermark always serialises");
    records.extend(
        (0..partitions as i32).map(|r| (WATERMARK_KEY.to_owned(), payload.clone(), Some(r))),
    );
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_core::{BucketKey, Offset};

    fn key(word: &str, bucket: u64) -> CountKey {
        CountKey {
            bucket: BucketKey {
                partition: 0,
                bucket,
            },
            word: word.into(),
        }
    }

    fn publication(upserts: &[(&str, u64)], next: Offset, oldest: Option<i64>) -> Publication {
        Publication {
            upserts: upserts.iter().map(|&(w, c)| (key(w, 0), c)).collect(),
            positions: [(0, next)].into_iter().collect(),
            newest: [(0, next * 1_000)].into_iter().collect(),
            starts: [(0, next / 2)].into_iter().collect(),
            oldest_event_ms: oldest,
            checkpointed_at: Instant::now(),
        }
    }

    /// Every partition's records of a round decode to the round's parts,
    /// indexed 0.. without a gap, and end with the watermark that counts
    /// them; the upserts are the counts, each on its routed partition.
    #[test]
    fn a_round_numbers_its_records_and_its_watermark_counts_them() {
        use lambda_core::realtime::RealtimeMessage;
        let counts: Vec<(CountKey, u64)> = (0..40_000u64)
            .map(|i| (key(&format!("word{i}"), i % 7), i + 1))
            .collect();
        let watermark = Watermark {
            writer: 9,
            positions: [(0, 40_000)].into_iter().collect(),
            oldest_event_ms: None,
            newest: BTreeMap::new(),
            starts: Cut::new(),
            round: None,
        };
        let records = round_records(9, 77, &counts, watermark, 3);
        let mut upserts = Vec::new();
        for lane in 0..3 {
            let mine: Vec<_> = records.iter().filter(|r| r.2 == Some(lane)).collect();
            let decoded: Vec<RealtimeMessage> = mine
                .iter()
                .map(|(k, payload, _)| {
                    RealtimeMessage::decode(Some(k.as_bytes()), Some(payload)).expect("decodes")
                })
                .collect();
            let (last, rest) = decoded.split_last().expect("a watermark at least");
            let RealtimeMessage::Watermark(w) = last else {
                panic!("partition {lane} does not end with the watermark");
            };
            let round = w.round.as_ref().expect("the watermark names its round");
            assert_eq!((w.writer, round.number), (9, 77));
            assert_eq!(round.records[lane as usize] as usize, rest.len());
            for (i, m) in rest.iter().enumerate() {
                let RealtimeMessage::Upserts {
                    writer,
                    round: Some(part),
                    upserts: u,
                } = m
                else {
                    panic!("partition {lane}: record {i} is not a round's upserts: {m:?}");
                };
                assert_eq!((*writer, part.round, part.index), (9, 77, i as u32));
                for x in u {
                    assert_eq!(route(&x.word, x.partition, x.bucket, 3), lane);
                }
                upserts.extend(u.iter().map(|x| (key(&x.word, x.bucket), x.count)));
            }
        }
        assert!(
            records.len() > 3 + 3,
            "40,000 counts take several records per partition"
        );
        upserts.sort_by(|a, b| a.0.word.cmp(&b.0.word));
        let mut want = counts;
        want.sort_by(|a, b| a.0.word.cmp(&b.0.word));
        assert_eq!(upserts, want);
    }

    #[test]
    fn queued_publications_go_out_as_one_with_the_latest_counts_and_positions() {
        let first = publication(&[("a", 1), ("b", 2)], 3, Some(500));
        let started = first.checkpointed_at;
        let merged = first.coalesce(vec![
            publication(&[("a", 4)], 7, Some(400)),
            publication(&[("c", 1), ("a", 5)], 9, None),
        ]);
        let mut upserts = merged.upserts.clone();
        upserts.sort_by(|x, y| x.0.word.cmp(&y.0.word));
        assert_eq!(
            upserts,
            vec![(key("a", 0), 5), (key("b", 0), 2), (key("c", 0), 1)]
        );
        assert_eq!(merged.positions, [(0, 9)].into_iter().collect());
        assert_eq!(merged.newest, [(0, 9_000)].into_iter().collect());
        assert_eq!(merged.starts, [(0, 4)].into_iter().collect());
        assert_eq!(merged.oldest_event_ms, Some(400));
        assert_eq!(merged.checkpointed_at, started);
        let alone = publication(&[("a", 1)], 3, None).coalesce(Vec::new());
        assert_eq!(alone.upserts, vec![(key("a", 0), 1)]);
    }
}
