//! Helpers for tests that drive real components. A dev-dependency only: the
//! `lambda` binary does not link it.
//!
//! # Layout
//!
//! - this file: unique names, free ports, polling, metrics scraping,
//!   recounts (the truth answers are checked against), poisoned event
//!   streams, a tmpfs for full-disk tests;
//! - `kafka`: producing and consuming on the embedded broker;
//! - `s3`: an S3-compatible server (moto);
//! - `wire`: brokers behind TLS, SASL or a proxy that corrupts records on
//!   the wire, and the test certificates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A name unique within this machine's test run (process id + counter), so
/// tests can share a broker without sharing topics, groups or directories.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub use common::http::{get, http, HttpResponse};

/// The truth a test checks answers against: every word of `texts` counted
/// by the tokenizer the layers use.
pub fn recount<T: AsRef<str>>(texts: impl IntoIterator<Item = T>) -> HashMap<String, u64> {
    let mut tokenizer = lambda_core::Tokenizer::new();
    let mut counts = HashMap::new();
    for text in texts {
        tokenizer.for_each_word(text.as_ref(), |w| {
            *counts.entry(w.to_owned()).or_insert(0) += 1
        });
    }
    counts
}

/// Realtime counts per word, all-time and summed over every window, and the
/// late events: when every event has a timestamp, each occurrence of a word
/// is counted once in its window, and the all-time counts (given, or
/// derived from those, see [`lambda_core::window::all_time_counts`]) must
/// equal their sums.
#[derive(Debug, Default)]
pub struct PerWord {
    pub all_time: HashMap<String, u64>,
    pub in_windows: HashMap<String, u64>,
    /// Counts of events without a timestamp.
    pub untimed: u64,
    pub late: u64,
    /// How many (word, bucket) all-time counts the store holds itself (a
    /// speed layer's: none; a serving layer's: every one it derived).
    pub all_time_keys: usize,
}

impl PerWord {
    pub fn of(counts: impl IntoIterator<Item = (lambda_core::CountKey, u64)>) -> PerWord {
        use lambda_core::window::{all_time_counts, Key};
        let counts: Vec<_> = counts.into_iter().collect();
        let mut out = PerWord::default();
        for (k, c) in &counts {
            match Key::parse(&k.word) {
                Some(Key::Word(_)) => out.all_time_keys += 1,
                Some(Key::InWindow(_, w)) => *out.in_windows.entry(w.to_owned()).or_insert(0) += c,
                Some(Key::Untimed(_)) => out.untimed += c,
                Some(Key::Late(_)) => out.late += c,
                None => panic!("a key no layer writes: {:?}", k.word),
            }
        }
        for (k, c) in all_time_counts(counts) {
            *out.all_time.entry(k.word.into()).or_insert(0) += c;
        }
        out
    }
}

/// The counts in the realtime store under `data_dir`, per word, summed over
/// the buckets at or above `cut`; and how many counts lay below it.
pub fn realtime_per_word(
    data_dir: &std::path::Path,
    cut: &lambda_core::Cut,
    size: lambda_core::BucketSize,
) -> (HashMap<String, u64>, usize) {
    let store = realtime_store::RealtimeStore::open(&data_dir.join("realtime"))
        .expect("the realtime store opens");
    let mut below = 0;
    let mut out = HashMap::new();
    let counts = store.load_counts().expect("counts");
    // All-time counts only: the windowed keys of the same events are checked
    // by the windows tests.
    for (k, c) in lambda_core::window::all_time_counts(counts) {
        if cut.is_realtime_bucket(size, k.bucket.partition, k.bucket.bucket) {
            *out.entry(k.word.to_string()).or_insert(0) += c;
        } else {
            below += 1;
        }
    }
    (out, below)
}

/// `n` records keyed `k<i>`, 1 % of them poison pills in turn invalid UTF-8,
/// over 500 bytes, or empty: (every record, the texts of the good ones).
pub fn poisoned_events(n: usize) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let vocab = ["ant", "Bee", "cat", "dög", "eel", "fox", "gnu"];
    let mut records = Vec::new();
    let mut good = Vec::new();
    for i in 0..n {
        if i % 100 == 37 {
            let bad = match (i / 100) % 3 {
                0 => b"\xc3\x28 invalid".to_vec(),
                1 => vec![b'y'; 501],
                _ => Vec::new(),
            };
            records.push((format!("k{i}"), bad));
            continue;
        }
        let text: Vec<&str> = (0..(i % 5) + 1)
            .map(|j| vocab[(i * 13 + j * 5) % vocab.len()])
            .collect();
        let text = text.join(" ");
        records.push((format!("k{i}"), text.clone().into_bytes()));
        good.push(text);
    }
    (records, good)
}

/// A free local address for a server a test starts (a `lambda` role, moto,
/// a broker behind a proxy), chosen at random below the kernel's ephemeral
/// ports (32768 and up): neither another `bind` to port 0 nor the local end
/// of an outgoing connection (a Kafka client's) can be given it between this
/// check and the server's own bind. Never the same twice in one test
/// process. (With port 0, two roles of one stack were once given the same
/// port in CI, and the second could not listen.)
pub fn free_addr() -> std::net::SocketAddr {
    use std::hash::BuildHasher;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        // Each `RandomState` is keyed anew: a random number.
        let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
        let port = 20_000 + (random % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        if let Ok(addr) =
            std::net::TcpListener::bind(("127.0.0.1", port)).and_then(|l| l.local_addr())
        {
            given.push(port);
            return addr;
        }
    }
}

mod kafka;
pub mod s3;
mod transactional;
mod wire;
pub use kafka::{
    consume_below, consume_n, consume_until_idle, memory_broker, produce, produce_timed,
    produce_to_partitions, Consumed, Reach,
};
pub use transactional::Transactional;
pub use wire::{
    broker_behind_corrupting_proxy, broker_behind_tls, corrupt_markers, secured_broker,
    TestCertificates, CORRUPT_MARKER,
};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the metric family sums to at least `reaches` at `addr`'s
/// `/metrics` (a layer's position reaching a count of records); panics after
/// `timeout`. Blocking: call from a blocking thread.
pub fn wait_metric(addr: std::net::SocketAddr, family: &str, reaches: f64, timeout: Duration) {
    wait_for(&format!("{family} to reach {reaches}"), timeout, || {
        let m = get(addr, "/metrics").ok()?.text();
        (metric_sum(&m, family) >= reaches).then_some(())
    })
}

/// Sums the samples of a Prometheus metric family in `text`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `(word, count)` list of a `/v1/top` answer, in its order; empty when
/// the answer has no word list, `("", 0)` for an entry without those fields,
/// so a malformed answer never equals an expected ranking.
pub fn top_words(answer: &serde_json::Value) -> Vec<(String, u64)> {
    answer["words"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    (
                        w["word"].as_str().unwrap_or("").to_owned(),
                        w["count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A small tmpfs mounted for one test (to fill a disk), unmounted on drop.
/// Needs root (CAP_SYS_ADMIN); says so clearly instead of passing without it.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(path: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this scenario mounts a small tmpfs and needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metric_samples() {
        let text = "# HELP x y\nx_total{p=\"0\"} 2\nx_total{p=\"1\"} 3\nx_total_other 9\n";
        assert_eq!(metric_sum(text, "x_total"), 5.0);
    }
}
