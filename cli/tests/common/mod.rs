//! Helpers for the whole-stack tests: the stack's description ([`spec`]),
//! the harness of the end-to-end and reliability suites ([`stack`]), and the
//! real `lambda` binary run as child processes.
#![allow(dead_code)]

pub mod spec;
pub mod stack;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::get;

pub use testkit::free_addr;

/// A running `lambda` role, killed if it is dropped still running: a test
/// that fails half-way must not leave a demo behind eating a core.
pub struct RoleProcess(Child);

impl std::ops::Deref for RoleProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for RoleProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns `lambda <role> <args…>` with its stderr appended to `log`.
pub fn spawn_role(role: &str, args: &[String], log: &Path) -> RoleProcess {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_lambda"))
        .arg(role)
        .args(args)
        .env("RUST_LOG", "info")
        // A role that fails logs its error chain last, not the backtrace of
        // where the error was made (panics keep theirs): the failing test
        // shows a log's last lines.
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(RoleProcess)
        .unwrap_or_else(|e| panic!("spawn lambda {role}: {e}"))
}

/// Sends SIGTERM and waits; true if the process exited 0.
pub fn terminate(mut child: RoleProcess) -> bool {
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    child.wait().expect("exit").success()
}

/// Whether the metric family reaches `expected` at `addr`'s /metrics in time.
pub fn wait_metric(addr: SocketAddr, family: &str, expected: f64, timeout: Duration) -> bool {
    std::panic::catch_unwind(|| testkit::wait_metric(addr, family, expected, timeout)).is_ok()
}

/// A small deterministic generator; the seed is printed so a failure can be
/// replayed with `TEST_SEED=<seed>`.
pub struct Lcg(u64);

impl Lcg {
    pub fn from_clock() -> Self {
        let seed = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
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

/// Produces `total` events in bursts of 150, pausing between bursts, in the
/// background, so a test can kill processes while events keep arriving.
pub fn produce_in_bursts(
    brokers: &str,
    topic: &str,
    total: usize,
    event: fn(usize) -> String,
) -> tokio::task::JoinHandle<()> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::spawn(async move {
        for chunk in (0..total).collect::<Vec<_>>().chunks(150) {
            let records = chunk
                .iter()
                .map(|&i| (i.to_string(), event(i).into_bytes()));
            ::testkit::produce(&brokers, &topic, records).await;
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    })
}

/// Starts a process `rounds` times and SIGKILLs it at a random moment after
/// its HTTP server (at `addr`) answers, so on a slow, loaded machine the kill
/// still lands while it works rather than during start-up.
pub async fn kill_repeatedly(
    rounds: usize,
    rng: &mut Lcg,
    addr: SocketAddr,
    spawn: impl Fn() -> RoleProcess,
) {
    for round in 0..rounds {
        let mut child = spawn();
        let up = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while get(addr, "/metrics").is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        up.await.expect("join");
        let wait_ms = 100 + rng.next(900);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        let status = child.wait().expect("reaped");
        eprintln!("round {round}: killed after {wait_ms} ms ({status})");
    }
}

/// Runs a last instance until the metric `family` at `addr` reaches `total`,
/// stops it with SIGTERM (it must exit 0), and checks that some earlier
/// restart resumed mid-stream (otherwise the kills proved nothing). Panics
/// with the process log on failure.
pub async fn finish_cleanly(
    child: RoleProcess,
    addr: SocketAddr,
    family: &'static str,
    total: usize,
    log: &Path,
    resume_marker: &str,
) {
    let caught_up = tokio::task::spawn_blocking(move || {
        wait_metric(addr, family, total as f64, Duration::from_secs(120))
    })
    .await
    .expect("join");
    let clean_exit = terminate(child);
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        caught_up && clean_exit,
        "caught up: {caught_up}, clean exit: {clean_exit}; log:\n{}",
        text()
    );
    assert!(
        resumed_mid_stream(log, resume_marker),
        "no restart resumed mid-stream; the kills proved nothing:\n{}",
        text()
    );
}

/// Everything a crash test needs: a broker with a 3-partition topic, a data
/// directory, a log file and an HTTP address for the process under test.
pub struct CrashRig {
    pub broker: ::common::broker::EmbeddedBroker,
    pub brokers: String,
    pub topic: String,
    pub data_dir: std::path::PathBuf,
    pub log_file: std::path::PathBuf,
    pub addr: SocketAddr,
    pub rng: Lcg,
    _dir: tempfile::TempDir,
}

/// One crash scenario, the same for every role.
pub struct Scenario {
    /// `batch`, `speed` or `serve`.
    pub role: &'static str,
    /// Flags beyond the broker, topics, data directory and address.
    pub flags: &'static [&'static str],
    /// The metric family that reaches `total` once every record is processed.
    pub done_metric: &'static str,
    /// The log line a restart prints with its resume offset.
    pub resume_marker: &'static str,
    pub total: usize,
    pub event: fn(usize) -> String,
}

impl CrashRig {
    /// The role's flags for this rig: its broker, topics (`<topic>.dlq`,
    /// `<topic>.rt`), data directory and HTTP address, then `extra`.
    pub fn role_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--brokers".into(),
            self.brokers.clone(),
            "--topic".into(),
            self.topic.clone(),
            "--dead-letter-topic".into(),
            format!("{}.dlq", self.topic),
            "--realtime-topic".into(),
            format!("{}.rt", self.topic),
            "--data-dir".into(),
            self.data_dir.to_str().expect("utf-8 path").into(),
            "--http-addr".into(),
            self.addr.to_string(),
            "--partitions".into(),
            "3".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Produces `total` events in bursts while starting the role and
    /// SIGKILLing it five times at random moments, then lets a last run
    /// catch up and stops it with SIGTERM (see [`finish_cleanly`]).
    pub async fn run(&mut self, scenario: &Scenario) {
        let producer =
            produce_in_bursts(&self.brokers, &self.topic, scenario.total, scenario.event);
        let args = self.role_args(scenario.flags);
        let log = self.log_file.clone();
        kill_repeatedly(5, &mut self.rng, self.addr, || {
            spawn_role(scenario.role, &args, &log)
        })
        .await;
        producer.await.expect("producer");
        let child = spawn_role(scenario.role, &args, &log);
        finish_cleanly(
            child,
            self.addr,
            scenario.done_metric,
            scenario.total,
            &log,
            scenario.resume_marker,
        )
        .await;
    }

    pub async fn new(name: &str) -> Self {
        use ::common::broker::{BrokerStorage, EmbeddedBroker};
        let rng = Lcg::from_clock();
        let broker = EmbeddedBroker::start(BrokerStorage::Memory)
            .await
            .expect("broker");
        let brokers = broker.bootstrap();
        let topic = ::testkit::unique(name);
        ::common::kafka::ensure_topic(
            &::common::client::Connection::plaintext(&brokers),
            &topic,
            3,
            Duration::from_secs(30),
        )
        .await
        .expect("topic");
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            broker,
            brokers,
            topic,
            data_dir: dir.path().join("data"),
            log_file: dir.path().join(format!("{name}.log")),
            addr: free_addr(),
            rng,
            _dir: dir,
        }
    }
}
