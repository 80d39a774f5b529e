//! The map phase's combiner table: word → count, built for a stream of
//! lookups that mostly miss the CPU cache.
//!
//! A map task looks up every word occurrence (8.4 million of them in the
//! 50 MB benchmark corpus) in a table of every distinct word it has seen
//! (185,000 there, several MB). With a general-purpose hash map each lookup
//! waited for its own cache miss, and compared keys through `memcmp`: `perf`
//! put 60 % of the map phase in the probe. This table does two things
//! instead:
//!
//! - **Fixed-size keys.** A word of up to 24 bytes (nearly all of them) is
//!   its bytes padded with zeros to three `u64`s; a word never contains a
//!   zero byte, so the padding is unambiguous. Hashing is two multiplications
//!   and comparing is three integer compares, with no length checks or calls.
//!   Longer words go to an ordinary map on the side.
//! - **Prefetched probes.** A word is queued with its hash, and the cache
//!   line of its home slot is prefetched right then; the queue is counted
//!   once it holds [`BATCH`] words, by which time the tokenizer has spent
//!   long enough on the words after it that the slots are in cache. The
//!   misses overlap each other and the tokenizing instead of stalling one
//!   lookup after another.
//!
//! Open addressing with linear probing over 32-byte slots (key, a 32-bit hash
//! tag, a 32-bit count), at most 3/4 full. Counts that pass `u32::MAX` carry
//! into a side map, so no count is ever wrong.

use compact_str::CompactString;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::hash::BuildHasher;

/// Words queued before they are counted: enough tokenizing between a
/// word's prefetch and its probe to cover a memory latency, few enough that
/// the prefetched lines are still in L1.
const BATCH: usize = 32;

/// The longest word kept in a slot; longer ones are counted on the side.
pub const INLINE_BYTES: usize = 24;

/// A word's bytes, zero-padded.
type Key = [u64; 3];

#[derive(Debug, Default, Clone, Copy)]
#[repr(align(32))]
struct Slot {
    /// All zero when the slot is free: a word's first byte is never zero.
    key: Key,
    /// The hash's upper half, compared before the key.
    tag: u32,
    /// The count modulo 2^32; whole multiples of 2^32 live in `carry`.
    count: u32,
}

/// Word → count, with batched lookups. Read it with
/// [`WordTable::into_counts`], which counts what is still queued.
#[derive(Debug)]
pub struct WordTable {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
    /// Carries of counts past `u32::MAX`, by slot key.
    carry: FxHashMap<Key, u64>,
    /// Words longer than [`INLINE_BYTES`].
    long: FxHashMap<CompactString, u64>,
    queued: Vec<(Key, u64)>,
}

impl Default for WordTable {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

/// The hash [`WordTable::into_counts`] reports for a word, inline or long:
/// equal words hash equally in every table, so the shuffle can partition by
/// it without hashing again. (Production code never needs it by itself.)
#[cfg(test)]
fn hash_word(word: &str) -> u64 {
    match key_of(word.as_bytes()) {
        Some(key) => hash_key(&key),
        None => FxBuildHasher.hash_one(word),
    }
}

fn key_of(word: &[u8]) -> Option<Key> {
    if word.len() > INLINE_BYTES {
        return None;
    }
    let mut key = [0u64; 3];
    for (lane, chunk) in key.iter_mut().zip(word.chunks(8)) {
        *lane = load_le(chunk);
    }
    Some(key)
}

/// Up to 8 bytes as a little-endian `u64`, zero-padded, with at most three
/// loads and no copy through the stack (a byte-wise copy into a buffer that
/// is then read as `u64`s stalls on store forwarding, and was a tenth of the
/// map phase).
#[inline]
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    if n == 8 {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    } else if n >= 4 {
        // Two overlapping 4-byte loads; the overlap holds equal bytes.
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(lo) | (u64::from(hi) << (8 * (n - 4)))
    } else if n > 0 {
        // Bytes 0, n/2 and n-1 cover every position of 1 to 3 bytes.
        u64::from(b[0])
            | (u64::from(b[n / 2]) << (8 * (n / 2)))
            | (u64::from(b[n - 1]) << (8 * (n - 1)))
    } else {
        0
    }
}

/// The word a key holds: its bytes up to the first zero.
fn word_of(key: &Key) -> CompactString {
    let mut bytes = [0u8; INLINE_BYTES];
    for (i, lane) in key.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&lane.to_le_bytes());
    }
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(INLINE_BYTES);
    // The bytes of a `&str` given to `add`, so this copies them unchanged.
    CompactString::from(String::from_utf8_lossy(&bytes[..len]))
}

/// Folded multiply: the high and low halves of a 128-bit product, xored.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Starts loading the cache line holding `slot`, without waiting for it.
#[inline]
fn prefetch(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    safe_arch::prefetch_t0(slot);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

fn hash_key(key: &Key) -> u64 {
    const SEED: [u64; 3] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
    ];
    fold(fold(key[0] ^ SEED[0], key[1] ^ SEED[1]) ^ key[2], SEED[2])
}

impl WordTable {
    /// A table with room for `words` distinct words before it grows.
    pub fn with_capacity(words: usize) -> Self {
        let slots = (words.max(8) * 4 / 3 + 1).next_power_of_two();
        Self {
            slots: vec![Slot::default(); slots],
            mask: slots - 1,
            len: 0,
            carry: FxHashMap::default(),
            long: FxHashMap::default(),
            queued: Vec::with_capacity(BATCH),
        }
    }

    /// Distinct words counted so far (queued words not included).
    pub fn len(&self) -> usize {
        self.len + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.queued.is_empty()
    }

    /// Counts one occurrence of `word`, a word of the shared tokenizer (not
    /// empty, no zero byte).
    #[inline]
    pub fn add(&mut self, word: &str) {
        debug_assert!(!word.is_empty() && !word.as_bytes().contains(&0));
        match key_of(word.as_bytes()) {
            Some(key) => {
                let hash = hash_key(&key);
                prefetch(&self.slots[hash as usize & self.mask]);
                self.queued.push((key, hash));
                if self.queued.len() == BATCH {
                    self.flush();
                }
            }
            None => *self.long.entry(word.into()).or_insert(0) += 1,
        }
    }

    /// Counts every queued word.
    fn flush(&mut self) {
        if (self.len + self.queued.len()) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        // The slots were prefetched as the words were queued.
        let queued = std::mem::take(&mut self.queued);
        for &(key, hash) in &queued {
            self.count(key, hash);
        }
        self.queued = queued;
        self.queued.clear();
    }

    fn count(&mut self, key: Key, hash: u64) {
        let tag = (hash >> 32) as u32;
        let mut i = hash as usize & self.mask;
        loop {
            let slot = &mut self.slots[i];
            if slot.tag == tag && slot.key == key {
                slot.count = slot.count.wrapping_add(1);
                if slot.count == 0 {
                    *self.carry.entry(key).or_insert(0) += 1 << 32;
                }
                return;
            }
            if slot.key[0] == 0 {
                *slot = Slot { key, tag, count: 1 };
                self.len += 1;
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Doubles the slots (which makes the queued words' prefetches miss,
    /// but that costs only time) and re-places every word.
    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        self.mask = size - 1;
        for slot in old.into_iter().filter(|s| s.key[0] != 0) {
            let mut i = hash_key(&slot.key) as usize & self.mask;
            while self.slots[i].key[0] != 0 {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Every word with its hash (the same for the same word in every
    /// table) and its count, in no particular order.
    pub fn into_counts(mut self) -> impl Iterator<Item = (u64, CompactString, u64)> {
        self.flush();
        let carry = std::mem::take(&mut self.carry);
        let long = std::mem::take(&mut self.long);
        self.slots
            .into_iter()
            .filter(|s| s.key[0] != 0)
            .map(move |s| {
                let high = carry.get(&s.key).copied().unwrap_or(0);
                (hash_key(&s.key), word_of(&s.key), high + u64::from(s.count))
            })
            .chain(
                long.into_iter()
                    .map(|(w, c)| (FxBuildHasher.hash_one(w.as_str()), w, c)),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn counts(table: WordTable) -> HashMap<String, u64> {
        table
            .into_counts()
            .map(|(h, w, c)| {
                assert_eq!(h, hash_word(&w), "{w}: the hash the shuffle sees");
                (w.to_string(), c)
            })
            .collect()
    }

    #[test]
    fn counts_past_u32_carry_into_the_side_map() {
        let mut t = WordTable::default();
        t.add("big");
        t.flush();
        let i = t
            .slots
            .iter()
            .position(|s| word_of(&s.key) == "big")
            .expect("slot");
        t.slots[i].count = u32::MAX - 1;
        for _ in 0..3 {
            t.add("big");
        }
        t.add("small");
        let got = counts(t);
        assert_eq!(got["big"], u64::from(u32::MAX) + 2);
        assert_eq!(got["small"], 1);
    }

    #[test]
    fn keys_round_trip_at_every_length() {
        let text = "abcdefghijklmnopqrstuvwxyzé";
        for end in 1..=text.len() {
            let Some(word) = text.get(..end) else {
                continue;
            };
            match key_of(word.as_bytes()) {
                Some(key) => assert_eq!(word_of(&key), word),
                None => assert!(word.len() > INLINE_BYTES, "{word}"),
            }
        }
    }

    proptest! {
        // Each case is thousands of words: fewer cases, still every path
        // (growth, long words, lanes cut at every length) many times over.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn equals_a_hash_map_count(
            words in prop::collection::vec(
                "[a-e]{1,3}|[a-z]{20,30}|é[a-c]{0,2}|[a-z]{7,9}|[a-z]{15,17}|[a-z]{23,25}",
                0..3000,
            ),
            capacity in 0usize..64,
        ) {
            let mut t = WordTable::with_capacity(capacity);
            let mut want: HashMap<String, u64> = HashMap::new();
            for w in &words {
                t.add(w);
                *want.entry(w.clone()).or_insert(0) += 1;
            }
            prop_assert_eq!(t.is_empty(), words.is_empty());
            prop_assert_eq!(counts(t), want);
        }
    }
}
