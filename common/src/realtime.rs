//! The realtime upsert: what the speed layer publishes and serving layers
//! apply.
//!
//! Each message carries the *absolute* count of one (word, partition, bucket),
//! keyed by that triple so its updates stay in one partition and in order.
//! Counts of a bucket only grow, so applying an upsert as `max(stored, count)`
//! is idempotent and tolerates redelivery and reordering alike.

use crate::cut::Partition;
use serde::{Deserialize, Serialize};

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
            serde_json::from_str::<RealtimeUpsert>(&json).expect("parse"),
            u
        );
        assert_eq!(u.key(), "2/7/café");
    }
}
