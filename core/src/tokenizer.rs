//! The one tokenizer every layer uses.
//!
//! A word is a maximal run of characters for which [`char::is_alphanumeric`]
//! holds, lowercased with [`char::to_lowercase`]. Everything else separates
//! words. Batch views, realtime counts and query normalisation all go through
//! [`Tokenizer::for_each_word`], so a word means the same thing everywhere.
//!
//! ASCII takes a fast path with identical results: the scanner works on
//! bytes, hands out ASCII words that are already lower case as slices of the
//! input, and lowercases the others into one reused buffer, so it allocates
//! nothing per word. Only a word that contains a non-ASCII character goes
//! through `char` decoding, so mixed text (English with the odd "café") keeps
//! the fast path for its ASCII words.

/// Splits text into words. Holds a scratch buffer that is reused across calls,
/// so keep one per thread (or per task) rather than one per event.
#[derive(Debug, Default, Clone)]
pub struct Tokenizer {
    scratch: String,
}

impl Tokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `f` with every word of `text`, in order.
    pub fn for_each_word(&mut self, text: &str, mut f: impl FnMut(&str)) {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let class = CLASS[bytes[i] as usize];
            if class & WORD != 0 {
                // An ASCII run; it may continue with non-ASCII letters.
                let start = i;
                let upper;
                (i, upper) = ascii_run(bytes, i);
                if i < bytes.len()
                    && CLASS[bytes[i] as usize] & NON_ASCII != 0
                    && starts_alphanumeric(&text[i..])
                {
                    self.lower_ascii_into_scratch(&bytes[start..i]);
                    i = self.continue_general(text, i);
                    f(&self.scratch);
                } else if upper {
                    self.lower_ascii_into_scratch(&bytes[start..i]);
                    f(&self.scratch);
                } else {
                    f(&text[start..i]);
                }
            } else if class & NON_ASCII == 0 {
                i += 1;
            } else if starts_alphanumeric(&text[i..]) {
                self.scratch.clear();
                i = self.continue_general(text, i);
                f(&self.scratch);
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }

    fn lower_ascii_into_scratch(&mut self, word: &[u8]) {
        self.scratch.clear();
        self.scratch
            .extend(word.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }

    /// Appends the lowercased word characters starting at byte `i` to the
    /// scratch buffer; returns where the word ends.
    fn continue_general(&mut self, text: &str, mut i: usize) -> usize {
        for c in text[i..].chars() {
            if !c.is_alphanumeric() {
                break;
            }
            if c.is_ascii() {
                self.scratch.push(c.to_ascii_lowercase());
            } else {
                self.scratch.extend(c.to_lowercase());
            }
            i += c.len_utf8();
        }
        i
    }

    /// The words of `text` as owned strings (convenient in tests and for
    /// query normalisation; hot paths use [`Tokenizer::for_each_word`]).
    pub fn words(&mut self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_word(text, |w| out.push(w.to_owned()));
        out
    }

    /// The reference implementation, char by char: the fast path must agree with it.
    #[cfg(test)]
    fn for_each_word_general(&mut self, text: &str, mut f: impl FnMut(&str)) {
        self.scratch.clear();
        for c in text.chars() {
            if c.is_alphanumeric() {
                self.scratch.extend(c.to_lowercase());
            } else if !self.scratch.is_empty() {
                f(&self.scratch);
                self.scratch.clear();
            }
        }
        if !self.scratch.is_empty() {
            f(&self.scratch);
            self.scratch.clear();
        }
    }
}

/// Byte classes for the ASCII scanner: one table lookup per byte instead of
/// range comparisons.
const WORD: u8 = 1;
const UPPER: u8 = 2;
const NON_ASCII: u8 = 4;
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = if byte.is_ascii_uppercase() {
            WORD | UPPER
        } else if byte.is_ascii_alphanumeric() {
            WORD
        } else if byte.is_ascii() {
            0
        } else {
            NON_ASCII
        };
        b += 1;
    }
    table
};

/// Every byte's high bit.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// `b` in every byte of a `u64`.
const fn splat(b: u8) -> u64 {
    b as u64 * 0x0101_0101_0101_0101
}

/// The high bit of every byte of `x` that lies in `lo..=hi`; every byte of
/// `x` must be below 0x80, so that no sum carries into the next byte.
const fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
    x.wrapping_add(splat(0x80 - lo)) & !x.wrapping_add(splat(0x7f - hi)) & HIGH
}

/// Where the run of ASCII letters and digits that starts at `i` ends, and
/// whether it holds an upper-case letter.
///
/// Eight bytes at a time (SWAR): one compare finds the end of a word of up to
/// seven letters, where a byte-by-byte loop mispredicted a branch at the end
/// of every word. A byte of 0x80 or above ends the run, as in [`CLASS`].
fn ascii_run(bytes: &[u8], mut i: usize) -> (usize, bool) {
    let mut upper = false;
    while let Some(Ok(lanes)) = bytes.get(i..i + 8).map(<[u8; 8]>::try_from) {
        let x = u64::from_le_bytes(lanes);
        let ascii = !x & HIGH;
        let low7 = x & !HIGH;
        let letter = in_range(low7 | splat(0x20), b'a', b'z');
        let alnum = (letter | in_range(low7, b'0', b'9')) & ascii;
        let capital = in_range(low7, b'A', b'Z') & ascii;
        let stop = !alnum & HIGH;
        if stop == 0 {
            upper |= capital != 0;
            i += 8;
            continue;
        }
        // Little-endian: the lowest set bit is the first byte that stops.
        let run = stop.trailing_zeros() as usize / 8;
        let in_run = (1u64 << (8 * run)) - 1;
        return (i + run, upper || capital & in_run != 0);
    }
    while let Some(&b) = bytes.get(i) {
        let class = CLASS[b as usize];
        if class & WORD == 0 {
            break;
        }
        upper |= class & UPPER != 0;
        i += 1;
    }
    (i, upper)
}

fn starts_alphanumeric(text: &str) -> bool {
    text.chars().next().is_some_and(char::is_alphanumeric)
}

/// Normalises a query term: `Some(word)` when `text` is exactly one word
/// (after the tokenizer's rule), `None` when it is zero or several words.
pub fn single_word(text: &str) -> Option<String> {
    let mut tokenizer = Tokenizer::new();
    let mut first: Option<String> = None;
    let mut count = 0usize;
    tokenizer.for_each_word(text, |w| {
        count += 1;
        if first.is_none() {
            first = Some(w.to_owned());
        }
    });
    if count == 1 {
        first
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(text: &str) -> Vec<String> {
        Tokenizer::new().words(text)
    }

    fn general(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        Tokenizer::new().for_each_word_general(text, |w| out.push(w.to_owned()));
        out
    }

    #[test]
    fn splits_on_whitespace_and_punctuation_and_lowercases() {
        assert_eq!(words("Hello, World! hello"), ["hello", "world", "hello"]);
    }

    #[test]
    fn digits_are_word_characters() {
        assert_eq!(words("route 66 and R2D2"), ["route", "66", "and", "r2d2"]);
    }

    #[test]
    fn apostrophes_and_hyphens_separate() {
        assert_eq!(
            words("don't well-known rock’n’roll"),
            ["don", "t", "well", "known", "rock", "n", "roll"]
        );
    }

    #[test]
    fn accented_and_non_latin_letters_are_word_characters() {
        assert_eq!(words("café naïve"), ["café", "naïve"]);
        assert_eq!(words("Привет, мир"), ["привет", "мир"]);
        assert_eq!(words("東京 タワー"), ["東京", "タワー"]);
        // Non-ASCII digits are numeric, hence alphanumeric.
        assert_eq!(words("٣٤ ½"), ["٣٤", "½"]);
    }

    #[test]
    fn upper_case_non_ascii_is_lowercased() {
        assert_eq!(words("ÉCOLE ΣΟΦΊΑ Ärger"), ["école", "σοφία", "ärger"]);
        // `char::to_lowercase` may yield several chars: 'İ' becomes "i\u{307}".
        assert_eq!(words("İstanbul"), ["i\u{307}stanbul"]);
    }

    #[test]
    fn empty_input_and_separators_only_give_no_words() {
        assert!(words("").is_empty());
        assert!(words("  \t\n--,;'!? ").is_empty());
        assert!(words("— … «»").is_empty());
    }

    #[test]
    fn ascii_fast_path_reuses_input_and_buffer() {
        // Lower-case words are slices of the input; capitalised ones go through
        // the scratch buffer, whose capacity is reused rather than reallocated.
        let mut t = Tokenizer::new();
        let text = "already lower UPPER Mixed";
        let mut borrowed = 0;
        t.for_each_word(text, |w| {
            let p = w.as_ptr() as usize;
            let base = text.as_ptr() as usize;
            if (base..base + text.len()).contains(&p) {
                borrowed += 1;
            }
        });
        assert_eq!(borrowed, 2);
        let cap = t.scratch.capacity();
        t.for_each_word("ABC DEF", |_| {});
        assert_eq!(t.scratch.capacity(), cap);
    }

    #[test]
    fn single_word_accepts_exactly_one_word() {
        assert_eq!(single_word("Hello").as_deref(), Some("hello"));
        assert_eq!(single_word("  ÉCOLE! ").as_deref(), Some("école"));
        assert_eq!(single_word("two words"), None);
        assert_eq!(single_word("---"), None);
        assert_eq!(single_word(""), None);
    }

    /// The eight-at-a-time scan against the byte table, for every byte value
    /// ending a run of every length, at every alignment within a lane.
    #[test]
    fn ascii_run_agrees_with_the_byte_table() {
        let reference = |bytes: &[u8], mut i: usize| {
            let mut upper = false;
            while i < bytes.len() && CLASS[bytes[i] as usize] & WORD != 0 {
                upper |= CLASS[bytes[i] as usize] & UPPER != 0;
                i += 1;
            }
            (i, upper)
        };
        let letters = b"aZ09zA9q";
        for run in 0..20 {
            for stop in 0..=255u8 {
                for lead in 0..8 {
                    let mut bytes = vec![b' '; lead];
                    bytes.extend((0..run).map(|k| letters[(k + stop as usize) % letters.len()]));
                    bytes.push(stop);
                    bytes.extend_from_slice(b"ABCDEFGHIJ");
                    assert_eq!(
                        ascii_run(&bytes, lead),
                        reference(&bytes, lead),
                        "run {run} then byte {stop:#x}, after {lead}"
                    );
                    // And with the input ending right after the run.
                    let cut = &bytes[..lead + run];
                    assert_eq!(ascii_run(cut, lead), reference(cut, lead));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn fast_path_equals_general_path_on_ascii(text in "[ -~\t\n]{0,200}") {
            prop_assert_eq!(words(&text), general(&text));
        }

        #[test]
        fn fast_path_equals_general_path_on_mixed_text(text in "[a-zA-Z0-9 ,.'\n-]{0,20}([éÉßİΣσ東½٣\u{0301}\u{00a0}—][a-zA-Z0-9 ,.'-]{0,10}){0,10}") {
            prop_assert_eq!(words(&text), general(&text));
        }

        #[test]
        fn dispatch_equals_general_path_on_any_string(text in any::<String>()) {
            prop_assert_eq!(words(&text), general(&text));
        }
    }
}
