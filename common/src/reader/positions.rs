//! The position check: a reader resumes only at a position its partition
//! still holds.

use super::ReaderError;
use crate::client::Connection;
use lambda_core::{Offset, Partition};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::time::Duration;

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that `topic` holds every position (a position may equal the
/// partition's end: nothing new yet); returns each partition's first offset.
pub(super) async fn check_positions(
    kafka: &Connection,
    topic: &str,
    positions: &[(Partition, Offset)],
) -> Result<BTreeMap<Partition, Offset>, ReaderError> {
    let (kafka, topic, positions) = (kafka.clone(), topic.to_owned(), positions.to_vec());
    tokio::task::spawn_blocking(move || {
        let consumer = watermark_client(&kafka, &topic)?;
        check_positions_with(&consumer, &topic, &positions)
    })
    .await
    .expect("the position check does not panic")
}

/// A client to read partitions' watermarks with: their high watermark,
/// whatever isolation level the reader reads at.
pub(super) fn watermark_client(
    kafka: &Connection,
    topic: &str,
) -> Result<BaseConsumer, ReaderError> {
    crate::kafka::client_config(kafka)
        .create()
        .map_err(|source| ReaderError::Kafka {
            topic: topic.to_owned(),
            source,
        })
}

/// [`check_positions`] with a client at hand, blocking.
pub(super) fn check_positions_with(
    consumer: &BaseConsumer,
    topic: &str,
    positions: &[(Partition, Offset)],
) -> Result<BTreeMap<Partition, Offset>, ReaderError> {
    let mut starts = BTreeMap::new();
    for &(partition, offset) in positions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
            .map_err(|source| ReaderError::Watermarks {
                topic: topic.to_owned(),
                partition,
                source,
            })?;
        if !position_is_held(offset, low, high) {
            return Err(ReaderError::OutOfRange {
                topic: topic.to_owned(),
                partition,
                offset,
                low,
                high,
            });
        }
        starts.insert(partition, low);
    }
    Ok(starts)
}

/// Whether a reader may resume at `offset` of a partition holding offsets
/// `low..high`: anywhere from its first record to its end (nothing new yet).
/// Below `low` lie records deleted before the reader saw them; past `high`,
/// offsets this topic never had (it was recreated).
fn position_is_held(offset: Offset, low: Offset, high: Offset) -> bool {
    (low..=high).contains(&offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_must_lie_within_what_the_partition_holds() {
        assert!(
            position_is_held(0, 0, 0),
            "an empty partition, from its start"
        );
        assert!(position_is_held(5, 0, 5), "at the end: nothing new yet");
        assert!(position_is_held(3, 2, 9));
        assert!(
            !position_is_held(6, 0, 5),
            "past the end: the topic was recreated"
        );
        assert!(
            !position_is_held(1, 2, 9),
            "before the start: records deleted unread"
        );
    }
}
