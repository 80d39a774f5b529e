//! The on-disk record format of the master log.
//!
//! ```text
//! ┌──────────┬──────────┬──────────────┬──────────────┬──────┬─────────────┐
//! │ len: u32 │ crc: u32 │ offset: i64  │ timestamp:i64│ kind │ payload …   │
//! └──────────┴──────────┴──────────────┴──────────────┴──────┴─────────────┘
//!   little-endian; len counts the bytes after the crc (17 + payload);
//!   crc is CRC32C over those same bytes; timestamp -1 means none.
//! ```
//!
//! `kind` keeps records that are not valid events (they are part of what
//! arrived, so the master log keeps them) but marks them, so views skip them.

use lambda_core::{DecodeError, Offset};

/// Bytes before the checksummed body: length and CRC.
pub const HEADER_LEN: usize = 8;
/// Fixed part of the body: offset, timestamp, kind.
pub const BODY_FIXED_LEN: usize = 17;
/// A body larger than this is corruption, not a record (Kafka's own limits are
/// far below it).
pub const MAX_BODY_LEN: usize = 256 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A valid text event.
    Event = 0,
    /// Kept but not an event: the payload is not UTF-8.
    InvalidUtf8 = 1,
    /// Kept but not an event: the payload is over the size limit.
    TooLarge = 2,
    /// Kept but not an event: the payload is empty or null.
    Empty = 3,
    /// A valid text event whose timestamp was further ahead of the batch
    /// layer's clock than `--max-future` allowed when it arrived: counted,
    /// but it does not move the watermark (see `lambda_core::window`).
    FutureEvent = 4,
    /// Not a record of the topic: the reader's position moved past offsets
    /// that hold nothing for a read-committed reader, the last of them
    /// this one (a transaction's marker; an aborted transaction's records
    /// before it). Kept so the log's end is where the reader is, and a
    /// partition that ends with a marker is read to its end.
    Marker = 5,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => RecordKind::Event,
            1 => RecordKind::InvalidUtf8,
            2 => RecordKind::TooLarge,
            3 => RecordKind::Empty,
            4 => RecordKind::FutureEvent,
            5 => RecordKind::Marker,
            _ => return None,
        })
    }

    /// The kind of a decoded record; `future` says its timestamp was too
    /// far ahead of the clock on arrival.
    pub fn of(decoded: &Result<lambda_core::Event<'_>, DecodeError>, future: bool) -> Self {
        match decoded {
            Ok(_) if future => RecordKind::FutureEvent,
            Ok(_) => RecordKind::Event,
            Err(DecodeError::InvalidUtf8 { .. }) => RecordKind::InvalidUtf8,
            Err(DecodeError::TooLarge { .. }) => RecordKind::TooLarge,
            Err(DecodeError::Empty { .. }) => RecordKind::Empty,
        }
    }
}

/// One record, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: Offset,
    pub timestamp_ms: Option<i64>,
    pub kind: RecordKind,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes this record takes on disk.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + BODY_FIXED_LEN + self.payload.len()
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let body_len = BODY_FIXED_LEN + self.payload.len();
        let start = out.len();
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]); // CRC, filled in below
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.unwrap_or(-1).to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(self.payload);
        let crc = crc32c::crc32c(&out[start + HEADER_LEN..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The result of parsing at one position.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole, valid record and the bytes it took.
    Record(Record<'a>, usize),
    /// The buffer ends inside a record (a torn write, or a record still being
    /// written).
    Short,
    /// The bytes here are not a valid record.
    Corrupt(&'static str),
}

/// Parses the record at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    if buf.len() < HEADER_LEN {
        return Parsed::Short;
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Parsed::Corrupt("record length out of range");
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        return Parsed::Short;
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[HEADER_LEN..total];
    if crc32c::crc32c(body) != crc {
        return Parsed::Corrupt("checksum mismatch");
    }
    let offset = i64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let timestamp = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let Some(kind) = RecordKind::from_byte(body[16]) else {
        return Parsed::Corrupt("unknown record kind");
    };
    Parsed::Record(
        Record {
            offset,
            timestamp_ms: (timestamp >= 0).then_some(timestamp),
            kind,
            payload: &body[BODY_FIXED_LEN..],
        },
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let rec = Record {
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            kind: RecordKind::Event,
            payload: b"hello world",
        };
        let mut buf = Vec::new();
        rec.encode_into(&mut buf);
        assert_eq!(buf.len(), rec.encoded_len());
        assert_eq!(parse(&buf), Parsed::Record(rec, buf.len()));
    }

    #[test]
    fn every_truncation_is_short_and_every_bit_flip_is_detected() {
        let rec = Record {
            offset: 7,
            timestamp_ms: None,
            kind: RecordKind::InvalidUtf8,
            payload: b"\xff\xfe",
        };
        let mut buf = Vec::new();
        rec.encode_into(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Parsed::Short, "truncated to {cut}");
        }
        for byte in 4..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(parse(&bad), Parsed::Corrupt(_)),
                    "flip {byte}:{bit}"
                );
            }
        }
    }
}
