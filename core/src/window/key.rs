//! The keys windowed counts go under, and how a speed layer's keys make
//! all-time counts (see the parent module's docs).

use super::Window;
use crate::merge::CountKey;
use std::collections::HashMap;

/// What a counted key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A word's all-time count.
    Word(&'a str),
    /// A word's count in one window.
    InWindow(Window, &'a str),
    /// How many of a window's events were late.
    Late(Window),
    /// A word's count among events without a timestamp (speed layer only:
    /// the batch view counts those all-time only).
    Untimed(&'a str),
}

/// The first character of every windowed key; no word starts with it.
pub const WINDOW_MARK: char = '#';

impl<'a> Key<'a> {
    /// Reads a key; `None` for a key that starts like a windowed one but is
    /// not (no layer writes those).
    pub fn parse(key: &'a str) -> Option<Self> {
        let Some(rest) = key.strip_prefix(WINDOW_MARK) else {
            return Some(Key::Word(key));
        };
        if let Some(word) = rest.strip_prefix('@') {
            return Some(Key::Untimed(word));
        }
        let split = rest.find(|c: char| !c.is_ascii_digit())?;
        let window = Window(rest[..split].parse().ok()?);
        match &rest[split..] {
            "!" => Some(Key::Late(window)),
            tail => tail.strip_prefix('@').map(|w| Key::InWindow(window, w)),
        }
    }

    /// The window of a windowed or late-events key (`None` for a word, an
    /// untimed key or a malformed one): what [`Key::parse`] would say,
    /// reading only the digits. Retention and the serving layer ask this
    /// of every key.
    pub fn window_of(key: &str) -> Option<Window> {
        let rest = key.strip_prefix(WINDOW_MARK)?.as_bytes();
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let window = rest[..digits].iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        match &rest[digits..] {
            b"!" => Some(Window(window)),
            [b'@', ..] => Some(Window(window)),
            _ => None,
        }
    }

    /// Whether `key` is a word's all-time count (cheap: one byte).
    pub fn is_word(key: &str) -> bool {
        !key.starts_with(WINDOW_MARK)
    }

    /// The key's text.
    pub fn encode(self) -> String {
        match self {
            Key::Word(w) => w.to_owned(),
            Key::InWindow(window, w) => format!("{WINDOW_MARK}{}@{w}", window.0),
            Key::Late(window) => format!("{WINDOW_MARK}{}!", window.0),
            Key::Untimed(w) => format!("{WINDOW_MARK}@{w}"),
        }
    }

    /// The word whose all-time count this key's count is part of, where a
    /// serving layer derives it (see the module's docs): a windowed or an
    /// untimed count.
    pub fn adds_to(self) -> Option<&'a str> {
        match self {
            Key::InWindow(_, w) | Key::Untimed(w) => Some(w),
            Key::Word(_) | Key::Late(_) => None,
        }
    }
}

/// The all-time counts per (word, bucket) that a speed layer's counts make:
/// its all-time key of a word where it has one, the sum of the word's
/// windowed and untimed counts where not (see the module's docs). For
/// reading a whole store at once (a replay, tests); a serving layer derives
/// them as upserts arrive.
pub fn all_time_counts(
    counts: impl IntoIterator<Item = (CountKey, u64)>,
) -> HashMap<CountKey, u64> {
    let (mut given, mut derived) = (HashMap::new(), HashMap::<CountKey, u64>::new());
    for (key, count) in counts {
        match Key::parse(&key.word) {
            Some(Key::Word(_)) => {
                given.insert(key, count);
            }
            Some(k) => {
                if let Some(word) = k.adds_to() {
                    let key = CountKey {
                        bucket: key.bucket,
                        word: word.into(),
                    };
                    *derived.entry(key).or_default() += count;
                }
            }
            None => {}
        }
    }
    for (key, count) in derived {
        given.entry(key).or_insert(count);
    }
    given
}

/// Builds `#<window>@<word>` keys into one buffer: the window's prefix is
/// written once per event, then each word after it, without allocating.
#[derive(Debug, Default)]
pub struct WindowedKeys {
    buf: String,
    prefix: usize,
}

impl WindowedKeys {
    /// Starts the keys of an event in `window`.
    pub fn set_window(&mut self, window: Window) {
        use std::fmt::Write;
        self.buf.clear();
        let _ = write!(self.buf, "{WINDOW_MARK}{}@", window.0);
        self.prefix = self.buf.len();
    }

    /// The key of `word` in the current window.
    pub fn key(&mut self, word: &str) -> &str {
        self.buf.truncate(self.prefix);
        self.buf.push_str(word);
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_time_counts_are_given_or_summed_from_windows_per_bucket() {
        let key = |b: u64, k: &str| CountKey::new(0, b, k);
        let counts = [
            // Bucket 0: counted before the rule, its all-time key given.
            (key(0, "a"), 5),
            (key(0, &Key::InWindow(Window(1), "a").encode()), 3),
            (key(0, &Key::InWindow(Window(2), "a").encode()), 1),
            // Bucket 1: derived from two windows and untimed events.
            (key(1, &Key::InWindow(Window(1), "a").encode()), 2),
            (key(1, &Key::InWindow(Window(2), "a").encode()), 4),
            (key(1, &Key::Untimed("a").encode()), 1),
            (key(1, &Key::Late(Window(1)).encode()), 9),
            (key(1, &Key::InWindow(Window(2), "b").encode()), 1),
        ];
        let all = all_time_counts(counts);
        let want: HashMap<CountKey, u64> = [(key(0, "a"), 5), (key(1, "a"), 7), (key(1, "b"), 1)]
            .into_iter()
            .collect();
        assert_eq!(all, want);
    }
}
