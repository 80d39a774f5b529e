//! The realtime topic's messages: what the speed layer publishes and serving
//! layers apply.
//!
//! Two kinds of message share the topic:
//!
//! - an **upserts** record (key [`UPSERTS_KEY`]) packs the *absolute* counts
//!   of many (word, partition, bucket)s, as a JSON array of
//!   `[word, partition, bucket, count]`. Each upsert goes to the topic
//!   partition [`route`] picks from its (word, partition, bucket), so the
//!   updates of one key stay in one topic partition and in order. Counts of a
//!   bucket only grow, so applying an upsert as `max(stored, count)` is
//!   idempotent and tolerates redelivery and reordering alike. Packing matters:
//!   a micro-batch changes several counts per event, and one record per count
//!   made the broker carry about seven realtime records per event;
//! - a **watermark** (key [`WATERMARK_KEY`]) closes a micro-batch: the speed
//!   layer sends one to *every* topic partition, carrying the checkpointed
//!   events positions. A serving layer that has seen a watermark `W` on every
//!   partition, with all of the upserts it closes, holds all upserts of
//!   every checkpoint up to `W`; applying exactly those makes its counts
//!   exact at `W`, which is what its answers' `as_of` reports.
//!
//! A speed layer publishes a micro-batch in one **round**: its upserts and
//! its watermarks go out together, not the watermarks after the upserts'
//! acknowledgements (a second trip through the broker on every event's way
//! to answers). So a watermark may reach a partition while one of its
//! upserts records failed and is being re-sent. Each round has a number
//! ([`RoundPart::round`], unique to its writer across restarts); every
//! upserts record of it names the round and its index among the round's
//! records on its partition, and the watermark says how many records the
//! round has on each partition ([`Round::records`]). A serving layer closes
//! a round on a partition only once it holds the watermark and every record
//! — in any order, a re-sent duplicate counted once. Upserts records of
//! older speed layers name no round and precede their watermark.
//!
//! Several speed layers may write the topic, each owning some events
//! partitions (a consumer group shares them), and during a rebalance — or
//! from a zombie that has not noticed it lost a partition — two of them may
//! write counts of one events partition at once. So every message names its
//! **writer** (a speed layer's id, kept in its data directory: a restarted
//! instance is the same writer), and a watermark names only the events
//! partitions its writer owns: a serving layer closes a writer's upserts of
//! an events partition only with that writer's watermarks naming it, and
//! never mixes two writers' half micro-batches (see the serving layer's gate).

use crate::cut::{Cut, Partition, Positions};
use crate::window::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The key of watermark messages.
pub const WATERMARK_KEY: &str = "watermark";

/// The key of packed upserts of writer 0 (a speed layer from before writer
/// ids). Speed layers from before rounds wrote `upserts/<writer, 16 hex
/// digits>`; today's write [`round_upserts_key`]. All three are read.
pub const UPSERTS_KEY: &str = "upserts";

/// Which speed layer wrote a realtime message (see the module's docs).
pub type WriterId = u64;

/// The key of the `index`th upserts record of round `round` on its topic
/// partition, written by `writer`.
pub fn round_upserts_key(writer: WriterId, part: RoundPart) -> String {
    let RoundPart { round, index } = part;
    format!("{UPSERTS_KEY}/{writer:016x}/{round:016x}/{index:08x}")
}

/// Where an upserts record stands in its writer's round of publication (see
/// the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoundPart {
    /// The round's number.
    pub round: u64,
    /// The record's index among the round's records on its topic partition.
    pub index: u32,
}

/// A watermark's round: its number and how many upserts records it has on
/// each topic partition (by partition number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub number: u64,
    pub records: Vec<u32>,
}

/// The writer named by an upserts key, and the round part it names (none in
/// keys of speed layers from before rounds), if it is one.
fn upserts_writer(key: &[u8]) -> Option<(WriterId, Option<RoundPart>)> {
    let rest = key.strip_prefix(UPSERTS_KEY.as_bytes())?;
    if rest.is_empty() {
        return Some((0, None));
    }
    let rest = std::str::from_utf8(rest.strip_prefix(b"/")?).ok()?;
    let hex = |field: &str, len: usize| {
        (field.len() == len && field.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(field, 16).ok())
            .flatten()
    };
    let mut fields = rest.split('/');
    let writer = hex(fields.next()?, 16)?;
    match (fields.next(), fields.next(), fields.next()) {
        (None, _, _) => Some((writer, None)),
        (Some(round), Some(index), None) => {
            let part = RoundPart {
                round: hex(round, 16)?,
                index: u32::try_from(hex(index, 8)?).ok()?,
            };
            Some((writer, Some(part)))
        }
        _ => None,
    }
}

/// A packed record is closed once its payload reaches this size, well under
/// Kafka's default 1 MB message limit.
pub const PACK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeUpsert {
    pub word: String,
    pub partition: Partition,
    pub bucket: u64,
    pub count: u64,
}

impl RealtimeUpsert {
    /// The upsert's key: `partition/bucket/word`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.partition, self.bucket, self.word)
    }
}

/// The realtime topic partition of the upserts of one (word, partition,
/// bucket): CRC32C over the partition and bucket (big-endian) and the word,
/// stable across processes and versions, and free of allocation (it runs
/// for every published count).
pub fn route(word: &str, partition: Partition, bucket: u64, partitions: usize) -> i32 {
    // One CRC over the key's bytes gathered on the stack when they fit: the
    // same value as three appends, at a third of the calls.
    const HEAD: usize = 4 + 8;
    let mut key = [0u8; 64];
    let w = word.as_bytes();
    let crc = if let Some(tail) = key.get_mut(HEAD..HEAD + w.len()) {
        tail.copy_from_slice(w);
        key[..4].copy_from_slice(&partition.to_be_bytes());
        key[4..HEAD].copy_from_slice(&bucket.to_be_bytes());
        crc32c::crc32c(&key[..HEAD + w.len()])
    } else {
        let crc = crc32c::crc32c(&partition.to_be_bytes());
        let crc = crc32c::crc32c_append(crc, &bucket.to_be_bytes());
        crc32c::crc32c_append(crc, w)
    };
    (crc as usize % partitions.max(1)) as i32
}

/// Packs upserts into record payloads of about [`PACK_BYTES`] each (one
/// upsert larger than that gets a record of its own).
#[derive(Debug, Default)]
pub struct Packer {
    current: Vec<u8>,
    done: Vec<Vec<u8>>,
}

impl Packer {
    pub fn push(&mut self, word: &str, partition: Partition, bucket: u64, count: u64) {
        self.current
            .push(if self.current.is_empty() { b'[' } else { b',' });
        serde_json::to_writer(&mut self.current, &(word, partition, bucket, count))
            .expect("writing JSON to a Vec cannot fail");
        if self.current.len() >= PACK_BYTES {
            self.close();
        }
    }

    fn close(&mut self) {
        if !self.current.is_empty() {
            self.current.push(b']');
            self.done.push(std::mem::take(&mut self.current));
        }
    }

    /// The payloads, each a complete JSON array.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.close();
        self.done
    }
}

/// The end of a checkpointed micro-batch: the speed layer's next offset of
/// every events partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Its writer; 0 from speed layers before writer ids.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub writer: WriterId,
    /// The next offset of every events partition the writer owns.
    pub positions: Positions,
    /// The record timestamp (ms since the epoch) of the oldest event the
    /// micro-batch counted, if it counted any: serving layers measure how
    /// long events took to become visible from it. Absent in watermarks of
    /// older speed layers and of re-publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_event_ms: Option<i64>,
    /// Per events partition, the newest timestamp that moved its event-time
    /// watermark among the events below `positions` (what tells a serving
    /// layer whether a time range is complete). Absent from older speed
    /// layers' watermarks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub newest: BTreeMap<Partition, Millis>,
    /// Per events partition where the speed layer last started *past* its
    /// checkpoint — at a batch cut, having no checkpoint or one behind it —
    /// the offset it started at: its counts cover the events from there to
    /// `positions`, and the ones below are only in batch views whose cut
    /// reaches it. A serving layer whose view and realtime counts both end
    /// below it must not apply these counts until it holds such a view.
    /// Absent for partitions it never started past a checkpoint (and from
    /// older speed layers' watermarks).
    #[serde(default, skip_serializing_if = "Cut::is_empty")]
    pub starts: Cut,
    /// The round it closes (see the module's docs); absent from older speed
    /// layers' watermarks, which follow their upserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<Round>,
}

fn is_zero(writer: &WriterId) -> bool {
    *writer == 0
}

/// One record of the realtime topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealtimeMessage {
    Upserts {
        writer: WriterId,
        /// Its place in its writer's round (none from older speed layers).
        round: Option<RoundPart>,
        upserts: Vec<RealtimeUpsert>,
    },
    Watermark(Watermark),
}

impl RealtimeMessage {
    /// Decodes a record from its key and payload.
    pub fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Self, String> {
        let payload = payload.ok_or("the record has no payload")?;
        match key {
            Some(k) if k == WATERMARK_KEY.as_bytes() => serde_json::from_slice(payload)
                .map(Self::Watermark)
                .map_err(|e| format!("malformed watermark: {e}")),
            Some(k) => {
                let Some((writer, round)) = upserts_writer(k) else {
                    return Err(format!("unknown key {:?}", String::from_utf8_lossy(k)));
                };
                serde_json::from_slice::<Vec<(String, Partition, u64, u64)>>(payload)
                    .map(|packed| Self::Upserts {
                        writer,
                        round,
                        upserts: packed
                            .into_iter()
                            .map(|(word, partition, bucket, count)| RealtimeUpsert {
                                word,
                                partition,
                                bucket,
                                count,
                            })
                            .collect(),
                    })
                    .map_err(|e| format!("malformed upserts: {e}"))
            }
            None => Err("the record has no key".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of packed upserts written by `writer` before rounds.
    fn upserts_key(writer: WriterId) -> String {
        if writer == 0 {
            UPSERTS_KEY.to_owned()
        } else {
            format!("{UPSERTS_KEY}/{writer:016x}")
        }
    }

    fn upsert(word: &str, partition: Partition, bucket: u64, count: u64) -> RealtimeUpsert {
        RealtimeUpsert {
            word: word.into(),
            partition,
            bucket,
            count,
        }
    }

    fn decode_all(payloads: &[Vec<u8>]) -> Vec<RealtimeUpsert> {
        payloads
            .iter()
            .flat_map(
                |p| match RealtimeMessage::decode(Some(UPSERTS_KEY.as_bytes()), Some(p)) {
                    Ok(RealtimeMessage::Upserts { upserts, .. }) => upserts,
                    other => panic!("not upserts: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn upserts_pack_into_json_arrays_and_round_trip() {
        let mut packer = Packer::default();
        packer.push("café", 2, 7, 41);
        packer.push("\"q\"", 0, 0, 1);
        let payloads = packer.finish();
        assert_eq!(payloads.len(), 1);
        assert_eq!(
            String::from_utf8_lossy(&payloads[0]),
            r#"[["café",2,7,41],["\"q\"",0,0,1]]"#
        );
        assert_eq!(
            decode_all(&payloads),
            vec![upsert("café", 2, 7, 41), upsert("\"q\"", 0, 0, 1)]
        );
        assert!(Packer::default().finish().is_empty(), "nothing to send");
    }

    #[test]
    fn big_batches_split_into_records_under_the_pack_size() {
        let mut packer = Packer::default();
        let want: Vec<RealtimeUpsert> = (0..40_000)
            .map(|i| upsert(&format!("word{i}"), i % 3, i as u64 / 7, i as u64))
            .collect();
        for u in &want {
            packer.push(&u.word, u.partition, u.bucket, u.count);
        }
        let payloads = packer.finish();
        assert!(payloads.len() > 1, "{} records", payloads.len());
        assert!(payloads.iter().all(|p| p.len() < PACK_BYTES + 64));
        assert_eq!(decode_all(&payloads), want);
    }

    #[test]
    fn routing_is_stable_and_spreads_keys() {
        // The values of every version so far: a key's upserts stay on one
        // realtime partition across an upgrade.
        let long = "x".repeat(80);
        let pinned = [
            ("café", 2, 7, 754_715_845),
            ("lambda", 0, 0, -1_667_509_819),
            ("", 3, u64::MAX, -159_367_111),
            (long.as_str(), 1, 12_345, 1_952_507_589),
            ("#29938191@u2250", 7, 99, 496_212_150),
        ];
        for (word, p, b, want) in pinned {
            assert_eq!(route(word, p, b, 1 << 40), want, "{word:?} {p} {b}");
        }
        let mut used = [0usize; 4];
        for i in 0..1000 {
            used[route(&format!("w{i}"), 0, 0, 4) as usize] += 1;
        }
        assert!(used.iter().all(|&n| n > 150), "{used:?}");
        assert_eq!(route("x", 0, 0, 1), 0);
    }

    #[test]
    fn watermarks_are_told_apart_by_their_key() {
        let w = Watermark {
            writer: 0x00ab_cdef_0123_4567,
            positions: [(0, 10), (1, 4)].into_iter().collect(),
            oldest_event_ms: Some(1_764_633_600_000),
            newest: [(0, 1_764_633_601_000)].into_iter().collect(),
            starts: [(1, 2)].into_iter().collect(),
            round: Some(Round {
                number: 7,
                records: vec![2, 0],
            }),
        };
        let json = serde_json::to_vec(&w).expect("serialise");
        assert_eq!(
            RealtimeMessage::decode(Some(WATERMARK_KEY.as_bytes()), Some(&json)),
            Ok(RealtimeMessage::Watermark(w))
        );
        // A watermark without the event time (an older speed layer's) reads.
        assert_eq!(
            RealtimeMessage::decode(
                Some(WATERMARK_KEY.as_bytes()),
                Some(br#"{"positions":{"0":3}}"#)
            ),
            Ok(RealtimeMessage::Watermark(Watermark {
                writer: 0,
                positions: [(0, 3)].into_iter().collect(),
                oldest_event_ms: None,
                newest: BTreeMap::new(),
                starts: Cut::new(),
                round: None,
            }))
        );
        // A watermark payload under the upserts key is malformed upserts.
        assert!(RealtimeMessage::decode(Some(UPSERTS_KEY.as_bytes()), Some(&json)).is_err());
        assert!(RealtimeMessage::decode(Some(b"0/0/a"), Some(b"[]")).is_err());
        assert!(RealtimeMessage::decode(None, None).is_err());
    }

    #[test]
    fn upserts_name_their_writer_in_the_key() {
        let payload = br#"[["a",1,2,3]]"#;
        let decode = |key: &str| RealtimeMessage::decode(Some(key.as_bytes()), Some(payload));
        let upserts = vec![upsert("a", 1, 2, 3)];
        assert_eq!(upserts_key(0), UPSERTS_KEY, "writer 0 keeps the old key");
        for writer in [0, 1, 0xfeed_0000_0000_beef, u64::MAX] {
            assert_eq!(
                decode(&upserts_key(writer)),
                Ok(RealtimeMessage::Upserts {
                    writer,
                    round: None,
                    upserts: upserts.clone()
                })
            );
            for part in [
                RoundPart { round: 0, index: 0 },
                RoundPart {
                    round: u64::MAX,
                    index: u32::MAX,
                },
                RoundPart {
                    round: 0x1234,
                    index: 5,
                },
            ] {
                assert_eq!(
                    decode(&round_upserts_key(writer, part)),
                    Ok(RealtimeMessage::Upserts {
                        writer,
                        round: Some(part),
                        upserts: upserts.clone()
                    })
                );
            }
        }
        for bad in [
            "upserts/",
            "upserts/12",
            "upserts/zzzzzzzzzzzzzzzz",
            "upserts-0000000000000001",
            "upserts/0000000000000001/",
            "upserts/0000000000000001/0000000000000002",
            "upserts/0000000000000001/0000000000000002/",
            "upserts/0000000000000001/0000000000000002/0000003",
            "upserts/0000000000000001/0000000000000002/00000003/",
            "upserts/0000000000000001/000000000000000g/00000003",
            "upserts/0000000000000001/+000000000000002/00000003",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
