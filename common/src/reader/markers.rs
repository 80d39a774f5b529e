//! Positions past transaction markers: a read-committed consumer receives no
//! record for a transaction's marker or an aborted transaction's records,
//! yet its position moves past them (see [`super::ReadBatch::passed`]).

use super::group::ReaderContext;
use super::resume::Resume;
use lambda_core::{Offset, Partition};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset as KafkaOffset;
use std::collections::BTreeMap;
use std::time::Duration;

/// Moves each partition whose consumer position is past the offset
/// after its last record there (see [`ReadBatch::passed`]); returns
/// those. librdkafka moves a read-committed consumer's position past
/// the transaction markers and aborted records it drops, in order with
/// the records it delivers. Only partitions whose resume check is
/// settled: before that a seek back may still come, and positions of
/// records skipped below the resume position mean nothing.
pub(super) fn passed(
    consumer: &StreamConsumer<ReaderContext>,
    topic: &str,
    resume: &Resume,
    next: &mut BTreeMap<Partition, Offset>,
) -> Vec<(Partition, Offset)> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    let mut passed = Vec::new();
    for e in positions.elements_for_topic(topic) {
        let (p, KafkaOffset::Offset(at)) = (e.partition(), e.offset()) else {
            continue;
        };
        if let Some(next) = next.get_mut(&p) {
            if at > *next && resume.settled(p) {
                *next = at;
                passed.push((p, at));
            }
        }
    }
    passed
}

/// How often a reader without records checks whether its position moved
/// past a transaction marker.
pub(super) const PASSED_CHECK: Duration = Duration::from_millis(100);
