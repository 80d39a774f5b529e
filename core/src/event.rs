//! Events: one text event per Kafka record.
//!
//! [`decode`] turns a record's payload into an [`Event`] or says exactly why it
//! is not one ([`DecodeError`]). Records that fail go to the dead-letter topic
//! with [`DecodeError::reason`] in a header; they never stop a consumer.

use crate::cut::{Offset, Partition};
use thiserror::Error;

/// The default largest event payload accepted, in bytes (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// A decoded event, borrowing its text from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub partition: Partition,
    pub offset: Offset,
    /// Kafka timestamp in milliseconds since the epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
    pub text: &'a str,
}

/// Why a record is not an event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record at partition {partition} offset {offset} is not valid UTF-8 (first bad byte at {valid_up_to})")]
    InvalidUtf8 {
        partition: Partition,
        offset: Offset,
        valid_up_to: usize,
    },
    #[error("record at partition {partition} offset {offset} is {size} bytes, over the {limit}-byte event limit")]
    TooLarge {
        partition: Partition,
        offset: Offset,
        size: usize,
        limit: usize,
    },
    #[error("record at partition {partition} offset {offset} has an empty payload")]
    Empty {
        partition: Partition,
        offset: Offset,
    },
}

impl DecodeError {
    /// A short, stable reason code for dead-letter headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidUtf8 { .. } => "invalid-utf8",
            DecodeError::TooLarge { .. } => "too-large",
            DecodeError::Empty { .. } => "empty",
        }
    }

    /// Every reason code, for pre-registering metric labels.
    pub const REASONS: [&'static str; 3] = ["invalid-utf8", "too-large", "empty"];
}

/// Decodes a record's payload. `None` (a null payload) and an empty payload are
/// both [`DecodeError::Empty`].
pub fn decode(
    partition: Partition,
    offset: Offset,
    timestamp_ms: Option<i64>,
    payload: Option<&[u8]>,
    max_bytes: usize,
) -> Result<Event<'_>, DecodeError> {
    let bytes = match payload {
        None | Some([]) => return Err(DecodeError::Empty { partition, offset }),
        Some(b) => b,
    };
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            partition,
            offset,
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::InvalidUtf8 {
        partition,
        offset,
        valid_up_to: e.valid_up_to(),
    })?;
    Ok(Event {
        partition,
        offset,
        timestamp_ms,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_decodes_with_its_position() {
        let e = decode(2, 41, Some(7), Some("hello world".as_bytes()), 100).expect("valid");
        assert_eq!(
            e,
            Event {
                partition: 2,
                offset: 41,
                timestamp_ms: Some(7),
                text: "hello world"
            }
        );
    }

    #[test]
    fn invalid_utf8_is_a_typed_error_naming_partition_and_offset() {
        let err = decode(3, 99, None, Some(b"ok \xff\xfe"), 100).expect_err("invalid");
        assert_eq!(
            err,
            DecodeError::InvalidUtf8 {
                partition: 3,
                offset: 99,
                valid_up_to: 3
            }
        );
        assert_eq!(err.reason(), "invalid-utf8");
        let msg = err.to_string();
        assert!(
            msg.contains("partition 3") && msg.contains("offset 99"),
            "{msg}"
        );
    }

    #[test]
    fn oversized_and_empty_records_are_rejected() {
        let err = decode(0, 1, None, Some(b"abcdef"), 5).expect_err("too large");
        assert_eq!(err.reason(), "too-large");
        assert!(err.to_string().contains("6 bytes"));
        assert_eq!(
            decode(0, 1, None, Some(b"abcde"), 5).map(|e| e.text),
            Ok("abcde")
        );
        assert_eq!(
            decode(0, 2, None, None, 5).map_err(|e| e.reason()),
            Err("empty")
        );
        assert_eq!(
            decode(0, 3, None, Some(b""), 5).map_err(|e| e.reason()),
            Err("empty")
        );
    }
}
