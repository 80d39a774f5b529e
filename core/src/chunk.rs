//! The binary form of a set of counts, as the realtime store keeps it.
//!
//! A chunk is a sequence of entries, each
//!
//! ```text
//! partition: varint | bucket: varint | count: varint | word length: varint | word: UTF-8
//! ```
//!
//! with unsigned LEB128 varints. Chunks are cut at [`CHUNK_BYTES`] so that no
//! store value grows past what the store (sled) keeps inline in its log.

use crate::merge::{BucketKey, CountKey};

/// A chunk is closed once it holds this many bytes (one entry may overrun it).
pub const CHUNK_BYTES: usize = 64 << 10;

/// Encodes counts into chunks of about [`CHUNK_BYTES`].
#[derive(Debug, Default)]
pub struct ChunkWriter {
    done: Vec<Vec<u8>>,
    current: Vec<u8>,
    bytes: u64,
}

impl ChunkWriter {
    pub fn push(&mut self, key: &CountKey, count: u64) {
        self.push_parts(key.bucket, &key.word, count);
    }

    /// [`push`](Self::push) for a key held in parts.
    pub fn push_parts(&mut self, bucket: BucketKey, word: &str, count: u64) {
        let out = &mut self.current;
        let before = out.len();
        // Partitions are non-negative; the cast keeps the bits either way.
        put_varint(out, u64::from(bucket.partition as u32));
        put_varint(out, bucket.bucket);
        put_varint(out, count);
        put_varint(out, word.len() as u64);
        out.extend_from_slice(word.as_bytes());
        self.bytes += (out.len() - before) as u64;
        if out.len() >= CHUNK_BYTES {
            self.done.push(std::mem::take(out));
        }
    }

    /// Total encoded bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// Calls `f` with every entry of a chunk, in order.
pub fn decode(chunk: &[u8], mut f: impl FnMut(CountKey, u64)) -> Result<(), &'static str> {
    decode_parts(chunk, |bucket, word, count| {
        f(
            CountKey {
                bucket,
                word: word.into(),
            },
            count,
        )
    })
}

/// [`decode`] without allocating: the word is borrowed from the chunk.
pub fn decode_parts(
    chunk: &[u8],
    mut f: impl FnMut(BucketKey, &str, u64),
) -> Result<(), &'static str> {
    let mut pos = 0;
    while pos < chunk.len() {
        let partition = get_varint(chunk, &mut pos).ok_or("malformed partition")?;
        let partition = u32::try_from(partition).map_err(|_| "partition out of range")? as i32;
        let bucket = get_varint(chunk, &mut pos).ok_or("malformed bucket")?;
        let count = get_varint(chunk, &mut pos).ok_or("malformed count")?;
        let len = get_varint(chunk, &mut pos).ok_or("malformed word length")?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| pos.checked_add(len))
            .filter(|&end| end <= chunk.len())
            .ok_or("word runs past the chunk")?;
        let word = std::str::from_utf8(&chunk[pos..end]).map_err(|_| "word is not UTF-8")?;
        pos = end;
        f(BucketKey { partition, bucket }, word, count);
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32, b: u64, w: &str) -> CountKey {
        CountKey::new(p, b, w)
    }

    #[test]
    fn entries_round_trip_across_chunks() {
        let mut w = ChunkWriter::default();
        let entries: Vec<(CountKey, u64)> = (0..20_000u64)
            .map(|i| {
                (
                    key((i % 7) as i32, i * 1_000_003, &format!("wörd{i}")),
                    i * i,
                )
            })
            .chain([(key(i32::MAX, u64::MAX, ""), u64::MAX)])
            .collect();
        for (k, c) in &entries {
            w.push(k, *c);
        }
        let bytes = w.bytes();
        let chunks = w.finish();
        assert!(chunks.len() > 1, "20k entries span several chunks");
        assert_eq!(chunks.iter().map(|c| c.len() as u64).sum::<u64>(), bytes);
        let mut back = Vec::new();
        for c in &chunks {
            assert!(c.len() < CHUNK_BYTES + 64);
            decode(c, |k, n| back.push((k, n))).expect("decodes");
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn damaged_chunks_are_errors_not_panics() {
        let mut w = ChunkWriter::default();
        w.push(&key(1, 2, "word"), 3);
        let chunk = w.finish().remove(0);
        for cut in 0..chunk.len() {
            assert!(decode(&chunk[..cut], |_, _| {}).is_err() || cut == 0);
        }
        let mut bad = chunk.clone();
        *bad.last_mut().expect("non-empty") = 0xff;
        assert_eq!(decode(&bad, |_, _| {}), Err("word is not UTF-8"));
        assert_eq!(decode(&[0xff; 11], |_, _| {}), Err("malformed partition"));
    }
}
