//! The realtime topic's messages: what the speed layer publishes and serving
//! layers apply.
//!
//! Two kinds of message share the topic:
//!
//! - an **upsert** carries the *absolute* count of one (word, partition,
//!   bucket), keyed `partition/bucket/word` so its updates stay in one topic
//!   partition and in order. Counts of a bucket only grow, so applying an
//!   upsert as `max(stored, count)` is idempotent and tolerates redelivery and
//!   reordering alike;
//! - a **watermark** (key [`WATERMARK_KEY`]) closes a micro-batch: the speed
//!   layer sends one to *every* topic partition after all of the micro-batch's
//!   upserts were acknowledged, carrying the checkpointed events positions.
//!   A serving layer that has seen a watermark `W` on every partition holds
//!   all upserts of every checkpoint up to `W`; applying exactly those makes
//!   its counts exact at `W`, which is what its answers' `as_of` reports.

use crate::cut::{Cut, Partition};
use serde::{Deserialize, Serialize};

/// The key of watermark messages; upsert keys always contain a `/`.
pub const WATERMARK_KEY: &str = "watermark";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeUpsert {
    pub word: String,
    pub partition: Partition,
    pub bucket: u64,
    pub count: u64,
}

impl RealtimeUpsert {
    /// The Kafka key: `partition/bucket/word`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.partition, self.bucket, self.word)
    }
}

/// The end of a checkpointed micro-batch: the speed layer's next offset of
/// every events partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub positions: Cut,
}

/// One record of the realtime topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealtimeMessage {
    Upsert(RealtimeUpsert),
    Watermark(Watermark),
}

impl RealtimeMessage {
    /// Decodes a record from its key and payload.
    pub fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Self, String> {
        let payload = payload.ok_or("the record has no payload")?;
        if key == Some(WATERMARK_KEY.as_bytes()) {
            serde_json::from_slice(payload)
                .map(Self::Watermark)
                .map_err(|e| format!("malformed watermark: {e}"))
        } else {
            serde_json::from_slice(payload)
                .map(Self::Upsert)
                .map_err(|e| format!("malformed upsert: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_round_trip_as_json() {
        let u = RealtimeUpsert {
            word: "café".into(),
            partition: 2,
            bucket: 7,
            count: 41,
        };
        let json = serde_json::to_string(&u).expect("serialise");
        assert_eq!(
            json,
            r#"{"word":"café","partition":2,"bucket":7,"count":41}"#
        );
        assert_eq!(
            RealtimeMessage::decode(Some(u.key().as_bytes()), Some(json.as_bytes())),
            Ok(RealtimeMessage::Upsert(u.clone()))
        );
        assert_eq!(u.key(), "2/7/café");
    }

    #[test]
    fn watermarks_are_told_apart_by_their_key() {
        let w = Watermark {
            positions: [(0, 10), (1, 4)].into_iter().collect(),
        };
        let json = serde_json::to_vec(&w).expect("serialise");
        assert_eq!(
            RealtimeMessage::decode(Some(WATERMARK_KEY.as_bytes()), Some(&json)),
            Ok(RealtimeMessage::Watermark(w))
        );
        // A watermark payload under an upsert key is a malformed upsert.
        assert!(RealtimeMessage::decode(Some(b"0/0/a"), Some(&json)).is_err());
        assert!(RealtimeMessage::decode(None, None).is_err());
    }
}
