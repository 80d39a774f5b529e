//! Helpers for tests that run the real `lambda` binary as child processes.
#![allow(dead_code)]

use common::testkit::{get, metric_sum, wait_for};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Spawns `lambda <role> <args…>` with its stderr appended to `log`.
pub fn spawn_role(role: &str, args: &[String], log: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_lambda"))
        .arg(role)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn lambda {role}: {e}"))
}

/// Sends SIGTERM and waits; true if the process exited 0.
pub fn terminate(mut child: Child) -> bool {
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    child.wait().expect("exit").success()
}

/// Waits until the metric family sums to `expected` at `addr`'s /metrics.
pub fn wait_metric(addr: SocketAddr, family: &str, expected: f64, timeout: Duration) -> bool {
    std::panic::catch_unwind(|| {
        wait_for(family, timeout, || {
            let m = get(addr, "/metrics").ok()?.text();
            (metric_sum(&m, family) == expected).then_some(())
        })
    })
    .is_ok()
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
pub struct Lcg(u64);

impl Lcg {
    pub fn from_clock() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        eprintln!("seed {seed}");
        Lcg(seed)
    }

    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// Whether some restart in the log resumed from a non-zero offset, i.e. a
/// kill landed mid-stream.
pub fn resumed_mid_stream(log: &Path, marker: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(marker))
        .any(|l| !l.contains("offset=0"))
}
