//! The whole-stack harness of the end-to-end and reliability suites: the
//! three layers as separate `lambda` processes, on a broker that is a
//! process too (the reliability suite restarts it) or one the test started
//! in-process (in-memory storage, or behind TLS and SASL); a producer of
//! events with unique, checkable content; and the ground truth, computed
//! independently of the layers' code, with the checks against it.

pub use crate::common::spec::Role;
use crate::common::spec::StackSpec;
use crate::common::{free_addr, spawn_role, terminate, Lcg, RoleProcess};
use ::common::broker::EmbeddedBroker;
use ::common::client::Connection;
use ::testkit::{get, http, unique, wait_for, Consumed};
use lambda_core::Cut;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The short profile runs in CI; `LAMBDA_SUITE=full` multiplies event counts
/// and kills (see the README).
pub fn full_profile() -> bool {
    std::env::var("LAMBDA_SUITE").is_ok_and(|v| v == "full")
}

/// Scales a short-profile count up for the full profile.
pub fn scaled(short: usize) -> usize {
    if full_profile() {
        short * 5
    } else {
        short
    }
}

pub const TOKEN: &str = "suite-admin-token";
pub const MAX_EVENT_BYTES: usize = 1024;

struct Proc {
    child: Option<RoleProcess>,
    addr: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
}

/// What a scenario changes about the stack.
#[derive(Default)]
pub struct Options {
    /// The broker: a `lambda broker` process on SQLite storage (default),
    /// or one the test started, with how to reach it.
    pub broker: Option<(EmbeddedBroker, Connection)>,
    /// The batch layer's data directory (default: under the stack's temp dir).
    pub batch_data_dir: Option<PathBuf>,
    /// Extra flags for the batch layer.
    pub batch_flags: Vec<String>,
    /// Extra flags for the serving layer.
    pub serve_flags: Vec<String>,
    /// Extra flags for every layer (e.g. how to reach a secured broker).
    pub layer_flags: Vec<String>,
    /// Recompute only when asked (`POST /v1/admin/recompute`), not every 2 s.
    pub recompute_on_demand: bool,
    /// The serving layer's `--stale-after` (default: the layer's).
    pub stale_after: Option<String>,
    /// Things the stack's temp dir must outlive (certificates, a database).
    pub keep: Vec<tempfile::TempDir>,
    /// The Kappa architecture: no batch layer; the speed and serving layers
    /// run with `--architecture kappa`.
    pub kappa: bool,
    /// A second speed layer ([`Role::Speed2`]) sharing the partitions.
    pub second_speed: bool,
    /// A second batch layer ([`Role::Batch2`]) sharing the partitions and
    /// a store (with chunks of 200 offsets, so partitions change hands
    /// between sealed chunks and local tails).
    pub second_batch: bool,
    /// A second serving replica ([`Role::Serve2`]); the end-of-scenario
    /// check covers both.
    pub second_serve: bool,
}

impl Options {
    /// On a broker the test started, recomputing only when asked, answers
    /// stale 2 s after the batch layer stops answering: the end-to-end
    /// suite's stack.
    pub fn on(broker: EmbeddedBroker, kafka: Connection) -> Options {
        Options {
            broker: Some((broker, kafka)),
            recompute_on_demand: true,
            stale_after: Some("2s".to_owned()),
            ..Options::default()
        }
    }
}

/// Where the broker runs.
enum Broker {
    Process {
        addr: SocketAddr,
        child: Option<RoleProcess>,
    },
    /// Held so that it runs as long as the stack.
    InProcess { _broker: EmbeddedBroker },
}

/// The running system.
pub struct Stack {
    pub dir: tempfile::TempDir,
    /// How the test's own clients reach the broker (as the layers do).
    pub kafka: Connection,
    pub topic: String,
    pub rng: Lcg,
    broker: Broker,
    procs: BTreeMap<Role, Proc>,
    _keep: Vec<tempfile::TempDir>,
}

impl Stack {
    /// Starts the broker (unless given one), creates the topics, starts the
    /// three roles and waits until each answers HTTP.
    pub async fn start(name: &str, options: Options) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let topic = unique(name);
        let (broker, kafka) = match options.broker {
            Some((broker, kafka)) => (Broker::InProcess { _broker: broker }, kafka),
            None => {
                let addr = free_addr();
                let broker = Broker::Process { addr, child: None };
                (broker, Connection::plaintext(&addr.to_string()))
            }
        };
        let mut stack = Stack {
            kafka,
            topic: topic.clone(),
            rng: Lcg::from_clock(),
            broker,
            procs: BTreeMap::new(),
            dir,
            _keep: options.keep,
        };
        if matches!(stack.broker, Broker::Process { .. }) {
            stack.start_broker().await;
        }
        for t in [topic.clone(), format!("{topic}.dlq"), format!("{topic}.rt")] {
            ::common::kafka::ensure_topic(&stack.kafka, &t, 3, Duration::from_secs(60))
                .await
                .expect("topic");
        }
        let addrs: BTreeMap<Role, SocketAddr> = Role::ALL
            .iter()
            .chain(options.second_speed.then_some(&Role::Speed2))
            .chain(options.second_batch.then_some(&Role::Batch2))
            .chain(options.second_serve.then_some(&Role::Serve2))
            .map(|&r| (r, free_addr()))
            .collect();
        let spec = StackSpec {
            admin_token: TOKEN.to_owned(),
            max_event_bytes: MAX_EVENT_BYTES,
            recompute_interval: if options.recompute_on_demand {
                "1h"
            } else {
                "2s"
            }
            .to_owned(),
            poll_interval: "200ms".to_owned(),
            micro_batch_records: Some(500),
            stale_after: options.stale_after.clone(),
            extra: options.layer_flags.clone(),
            ..StackSpec::new(stack.kafka.brokers(), &topic)
        };
        let batch_url = format!("http://{}", addrs[&Role::Batch]);
        let (mut roles, batch_url) = if options.kappa {
            (vec![Role::Speed, Role::Serve], None)
        } else {
            (Role::ALL.to_vec(), Some(batch_url.as_str()))
        };
        if options.second_speed {
            roles.push(Role::Speed2);
        }
        if options.second_batch {
            roles.push(Role::Batch2);
        }
        if options.second_serve {
            roles.push(Role::Serve2);
        }
        // With two batch layers, every speed and serving layer lists both
        // (the second speed layer and replica the second first): either
        // serves the same views.
        let both = addrs
            .get(&Role::Batch2)
            .map(|b2| format!("http://{},http://{b2}", addrs[&Role::Batch]));
        let shared_store =
            ::common::store::Store::file_url(&stack.dir.path().join("store")).expect("a store URL");
        for &role in &roles {
            let data_dir = match (role, &options.batch_data_dir) {
                (Role::Batch, Some(d)) => d.clone(),
                _ => stack.dir.path().join(role.name()),
            };
            let http = addrs[&role].to_string();
            // With two batch layers the second speed layer and replica read
            // the views from the store itself.
            let from_store = both.is_some() && matches!(role, Role::Speed2 | Role::Serve2);
            let batch_url = match (role, &both) {
                (Role::Speed | Role::Serve, Some(both)) => Some(both.as_str()),
                _ if from_store => None,
                _ => batch_url,
            };
            let mut args = spec.flags(role, &data_dir, &http, batch_url);
            if from_store {
                args.extend(["--store-url".to_owned(), shared_store.clone()]);
            }
            if matches!(role, Role::Batch | Role::Batch2) {
                args.extend(options.batch_flags.iter().cloned());
            }
            if matches!(role, Role::Serve | Role::Serve2) {
                args.extend(options.serve_flags.iter().cloned());
            }
            if options.second_batch && matches!(role, Role::Batch | Role::Batch2) {
                args.extend(
                    [
                        "--share-partitions",
                        "--store-url",
                        &shared_store,
                        "--chunk-offsets",
                        "200",
                    ]
                    .map(str::to_owned),
                );
            }
            if options.second_speed && matches!(role, Role::Speed | Role::Speed2) {
                args.push("--share-partitions".to_owned());
            }
            if options.kappa {
                args.extend(["--architecture".to_owned(), "kappa".to_owned()]);
            }
            let log = stack.dir.path().join(format!("{}.log", role.name()));
            stack.procs.insert(
                role,
                Proc {
                    child: None,
                    addr: addrs[&role],
                    args,
                    log,
                },
            );
        }
        for role in roles {
            stack.start_role(role).await;
        }
        stack
    }

    /// The roles this stack runs (no batch layer in Kappa).
    pub fn roles(&self) -> Vec<Role> {
        self.procs.keys().copied().collect()
    }

    pub fn addr(&self, role: Role) -> SocketAddr {
        self.procs[&role].addr
    }

    pub fn log(&self, role: Role) -> String {
        std::fs::read_to_string(&self.procs[&role].log).unwrap_or_default()
    }

    fn broker_log(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for role in self.roles() {
            let text = self.log(role);
            let lines: Vec<&str> = text.lines().collect();
            let (earlier, tail) = lines.split_at(lines.len().saturating_sub(40));
            // Errors scrolled out of the tail (a role's error exit, say,
            // followed by a backtrace) are the first thing to read.
            let errors: Vec<&&str> = earlier
                .iter()
                .filter(|l| l.contains(" ERROR ") || l.starts_with("Error:"))
                .take(20)
                .collect();
            if !errors.is_empty() {
                out.push_str(&format!("--- {} (errors before that) ---\n", role.name()));
                for l in errors {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            out.push_str(&format!("--- {} (last 40 lines) ---\n", role.name()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Starts (or restarts) the broker process on the same address and
    /// data directory, and waits until it accepts connections.
    pub async fn start_broker(&mut self) {
        let log = self.broker_log();
        let data_dir = self.dir.path().join("broker");
        let Broker::Process { addr, child } = &mut self.broker else {
            panic!("the test started the broker; it restarts it");
        };
        assert!(child.is_none(), "broker already running");
        let addr = *addr;
        *child = Some(spawn_role(
            "broker",
            &[
                "--broker-addr".into(),
                addr.to_string(),
                "--data-dir".into(),
                data_dir.to_str().expect("utf-8").into(),
            ],
            &log,
        ));
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "broker did not listen on {addr}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("join");
    }

    /// Stops the broker process with SIGTERM (a clean stop) and waits for it.
    pub fn stop_broker(&mut self) {
        let Broker::Process { child, .. } = &mut self.broker else {
            panic!("the test started the broker; it stops it");
        };
        let child = child.take().expect("broker running");
        assert!(terminate(child), "broker did not exit cleanly");
    }

    /// Starts a role and waits until its HTTP server answers.
    pub async fn start_role(&mut self, role: Role) {
        let proc = self.procs.get_mut(&role).expect("role");
        assert!(proc.child.is_none(), "{} already running", role.name());
        proc.child = Some(spawn_role(role.subcommand(), &proc.args, &proc.log));
        let addr = proc.addr;
        let up = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            while get(addr, "/metrics").is_err() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        })
        .await
        .expect("join");
        assert!(up, "{} did not come up:\n{}", role.name(), self.logs());
        // Answering at its address is not proof enough: had another role
        // taken the port, this one would have exited at start.
        let child = self.procs.get_mut(&role).and_then(|p| p.child.as_mut());
        if let Some(status) = child.and_then(|c| c.try_wait().ok().flatten()) {
            panic!(
                "{} exited at start ({status}):\n{}",
                role.name(),
                self.logs()
            );
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to a running role: a paused process
    /// is a zombie once its group's session times out.
    pub fn signal(&self, role: Role, signal: &str) {
        let pid = self.procs[&role].child.as_ref().expect("role running").id();
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// SIGKILLs a role.
    pub fn kill(&mut self, role: Role) {
        let mut child = self
            .procs
            .get_mut(&role)
            .and_then(|p| p.child.take())
            .expect("role running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    /// SIGTERMs a role; it must exit 0.
    pub fn stop(&mut self, role: Role) {
        let child = self
            .procs
            .get_mut(&role)
            .and_then(|p| p.child.take())
            .expect("role running");
        let clean = terminate(child);
        assert!(
            clean,
            "{} did not exit 0 on SIGTERM:\n{}",
            role.name(),
            self.logs()
        );
    }

    /// Starts a role, lets it run a random 100–1,000 ms, SIGKILLs it, `rounds` times.
    pub async fn kill_repeatedly(&mut self, role: Role, rounds: usize) {
        for round in 0..rounds {
            self.start_role(role).await;
            let ms = 100 + self.rng.next(900);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            self.kill(role);
            eprintln!("{}: round {round} killed after {ms} ms", role.name());
        }
    }

    /// Produces `events` (already encoded), waiting for every
    /// acknowledgement; records that fail (broker down) are sent again until
    /// acknowledged. Returns how many sends were retried.
    pub async fn produce(&self, events: Vec<Vec<u8>>) -> usize {
        let records = events.into_iter().map(|e| (None, e)).collect();
        self.producer().send(records).await
    }

    /// Produces `events` as [`Self::produce`] does, but spread over the
    /// events topic's three partitions in turn (records without a key
    /// follow librdkafka's sticky partitioner: a quick burst lands on one).
    pub async fn produce_to_every_partition(&self, events: Vec<Vec<u8>>) -> usize {
        let records = (0..)
            .zip(events)
            .map(|(i, e)| (format!("e{i}"), e, Some(i % 3)))
            .collect();
        self.producer().send(records).await
    }

    fn producer(&self) -> Producer {
        Producer {
            kafka: self.kafka.clone(),
            topic: self.topic.clone(),
        }
    }

    /// Produces `events` in bursts of `burst` with a pause between bursts,
    /// in the background.
    pub fn produce_in_background(
        &self,
        events: Vec<Vec<u8>>,
        burst: usize,
        pause: Duration,
    ) -> tokio::task::JoinHandle<usize> {
        let producer = self.producer();
        tokio::spawn(async move {
            let mut retried = 0;
            for chunk in events.chunks(burst) {
                let records = chunk.iter().map(|e| (None, e.clone())).collect();
                retried += producer.send(records).await;
                tokio::time::sleep(pause).await;
            }
            retried
        })
    }

    /// The events topic's end offsets.
    pub async fn topic_ends(&self) -> Cut {
        let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = ::common::kafka::client_config(&kafka)
                .create()
                .expect("consumer");
            let mut cut = Cut::new();
            for p in 0..3 {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(30))
                    .expect("watermarks");
                cut.set(p, high);
            }
            cut
        })
        .await
        .expect("join")
    }

    /// Every record of the events topic (read back with a plain consumer).
    pub async fn topic_records(&self) -> (Cut, Vec<Consumed>) {
        let ends = self.topic_ends().await;
        let records =
            ::testkit::consume_below(&self.kafka, &self.topic, &ends, Duration::from_secs(120))
                .await;
        (ends, records)
    }

    /// Waits until the serving layer's answers cover `ends`.
    pub async fn wait_served(&self, ends: &Cut, timeout: Duration) {
        self.wait_served_by(Role::Serve, ends, timeout).await;
    }

    /// The serving replicas this stack runs.
    pub fn replicas(&self) -> Vec<Role> {
        self.roles()
            .into_iter()
            .filter(|r| matches!(r, Role::Serve | Role::Serve2))
            .collect()
    }

    /// Waits until serving replica `role` answers at `as_of` == `ends`.
    pub async fn wait_served_by(&self, role: Role, ends: &Cut, timeout: Duration) {
        let addr = self.addr(role);
        let want = ends.clone();
        let reached = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(s) = json(addr, "/v1/status") {
                    if cut_of(&s["as_of"]) == want {
                        return true;
                    }
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("join");
        let status = json(addr, "/v1/status");
        assert!(
            reached,
            "{} never reached as_of {ends}; status {status:?}\n{}",
            role.name(),
            self.logs()
        );
    }

    /// The end-of-scenario check: once production is over and the serving
    /// layer covers the whole topic, every word of the topic's good events
    /// is answered with exactly its count, at `as_of` == the topic's end,
    /// and `/v1/top` equals the truth's ranking.
    pub async fn assert_exact(&self) -> Truth {
        let (ends, records) = self.topic_records().await;
        let truth = Truth::of(&records);
        for role in self.replicas() {
            self.assert_exact_on(role, &truth, &ends).await;
        }
        truth
    }

    /// [`Self::assert_exact`] on one serving replica.
    async fn assert_exact_on(&self, role: Role, truth: &Truth, ends: &Cut) {
        self.wait_served_by(role, ends, Duration::from_secs(180))
            .await;
        let addr = self.addr(role);
        let words: Vec<(String, u64)> = truth.counts.iter().map(|(w, c)| (w.clone(), *c)).collect();
        let want_top = truth.top(100);
        let ends_c = ends.clone();
        let mismatches = tokio::task::spawn_blocking(move || {
            let mut bad = Vec::new();
            for (word, want) in &words {
                let a = json(addr, &format!("/v1/words/{word}")).expect("word answer");
                let got = a["count"].as_u64().expect("count");
                let as_of = cut_of(&a["as_of"]);
                if got != *want || as_of != ends_c {
                    bad.push(format!(
                        "{word}: served {got} at {as_of}, truth {want} at {ends_c}"
                    ));
                }
            }
            let top = json(addr, "/v1/top?k=100").expect("top answer");
            let got_top = ::testkit::top_words(&top);
            if got_top != want_top {
                bad.push(format!(
                    "top-100 differs: served {got_top:?}, truth {want_top:?}"
                ));
            }
            // Every view swap so far, checked against the realtime counts.
            let status = json(addr, "/v1/status").expect("status");
            let reconciliation = &status["reconciliation"];
            if reconciliation["mismatches"].as_u64() != Some(0) {
                bad.push(format!("the layers disagreed at a swap: {reconciliation}"));
            }
            bad
        })
        .await
        .expect("join");
        assert!(
            mismatches.is_empty(),
            "{}: {} of {} words differ from the truth (first 20):\n{}\n{}",
            role.name(),
            mismatches.len(),
            truth.counts.len(),
            mismatches
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            self.logs()
        );
        eprintln!(
            "{} exact: {} words, {} good events, {} bad records, as_of {ends}",
            role.name(),
            truth.counts.len(),
            truth.good_events,
            truth.bad.len()
        );
    }

    /// Stops every role with SIGTERM (each must exit 0), then the broker.
    pub fn shutdown(mut self) {
        for role in self.roles() {
            if self.procs[&role].child.is_some() {
                self.stop(role);
            }
        }
        // A broker the test started goes with the stack.
        if let Broker::Process { child: Some(_), .. } = self.broker {
            self.stop_broker();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed scenario explains itself with what every role logged.
            eprintln!("{}", self.logs());
        }
        for proc in self.procs.values_mut() {
            if let Some(mut c) = proc.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Broker::Process { child: Some(c), .. } = &mut self.broker {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A producer usable from a background task.
struct Producer {
    kafka: Connection,
    topic: String,
}

impl Producer {
    async fn send<R: ::common::kafka::OutgoingRecord>(&self, mut pending: Vec<R>) -> usize {
        let producer: rdkafka::producer::FutureProducer =
            ::common::kafka::producer_config(&self.kafka)
                .set("message.timeout.ms", "5000")
                .create()
                .expect("producer");
        let mut retried = 0;
        let deadline = Instant::now() + Duration::from_secs(180);
        while !pending.is_empty() {
            let results = ::common::kafka::send_all(&producer, &self.topic, &pending).await;
            let failed: Vec<R> = pending
                .into_iter()
                .zip(results)
                .filter(|(_, r)| r.is_err())
                .map(|(rec, _)| rec)
                .collect();
            retried += failed.len();
            assert!(Instant::now() < deadline, "records undelivered after 3 min");
            if !failed.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            pending = failed;
        }
        retried
    }
}

/// GET a JSON answer (None on a connection error or a non-200 status).
pub fn json(addr: SocketAddr, path: &str) -> Option<Value> {
    let r = get(addr, path).ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).ok())?
}

/// Forces a recompute through the serving layer's admin endpoint, in `mode`
/// (`full`, `incremental`) or the batch layer's; asserts it succeeded and
/// the serving layer answers from the new view on return.
pub fn recompute(addr: SocketAddr, mode: Option<&str>) -> Value {
    let auth = format!("Bearer {TOKEN}");
    let path = match mode {
        Some(mode) => format!("/v1/admin/recompute?mode={mode}"),
        None => "/v1/admin/recompute".to_owned(),
    };
    let r = http(
        addr,
        "POST",
        &path,
        &[("Authorization", auth.as_str())],
        b"",
    )
    .expect("POST /v1/admin/recompute");
    assert_eq!(r.status, 200, "{}", r.text());
    let r: Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(r["loaded"], true, "{r}");
    r
}

/// Recomputes through the batch layer's own endpoint (`addr` is the batch
/// layer's), with no serving layer involved; returns the new view's cut.
pub fn batch_recompute(addr: SocketAddr) -> Cut {
    let auth = format!("Bearer {TOKEN}");
    let r = http(
        addr,
        "POST",
        "/recompute",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .expect("POST /recompute");
    assert_eq!(r.status, 200, "{}", r.text());
    let manifest: Value = serde_json::from_slice(&r.body).expect("JSON");
    cut_of(&manifest["header"]["cut"])
}

/// POST the admin recompute to the serving layer; true on 200.
pub fn admin_recompute(addr: SocketAddr) -> bool {
    let auth = format!("Bearer {TOKEN}");
    http(
        addr,
        "POST",
        "/v1/admin/recompute",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .is_ok_and(|r| r.status == 200)
}

pub fn cut_of(v: &Value) -> Cut {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// Event `i` of a scenario: a unique word `u<i>` plus six words of a
/// 200-word vocabulary, so a lost or doubled event changes the count of a
/// word that only it contains.
pub fn event(i: usize) -> Vec<u8> {
    let mut s = format!("u{i}");
    for j in 0..6 {
        let w = (i.wrapping_mul(7919) + j * 104_729) % 200;
        s.push_str(&format!(" w{w}"));
    }
    s.into_bytes()
}

/// Ground truth, computed from what the events topic holds, by a rule
/// written independently of the layers' tokenizer: a record counts if it is
/// valid UTF-8, not empty and at most `MAX_EVENT_BYTES`; its words are the
/// lowercased runs of ASCII letters and digits (the suite's events are ASCII).
#[derive(Debug, Default)]
pub struct Truth {
    pub counts: BTreeMap<String, u64>,
    pub good_events: usize,
    /// (partition, offset, reason) of every record that is not an event.
    pub bad: Vec<(i32, i64, &'static str)>,
    /// Per word, per partition, the offsets of its occurrences (repeated per
    /// occurrence), for the truth at a cut.
    occurrences: HashMap<String, BTreeMap<i32, Vec<i64>>>,
}

impl Truth {
    pub fn of(records: &[Consumed]) -> Truth {
        let mut t = Truth::default();
        for r in records {
            let reason = if r.payload.is_empty() {
                Some("empty")
            } else if r.payload.len() > MAX_EVENT_BYTES {
                Some("too-large")
            } else if std::str::from_utf8(&r.payload).is_err() {
                Some("invalid-utf8")
            } else {
                None
            };
            if let Some(reason) = reason {
                t.bad.push((r.partition, r.offset, reason));
                continue;
            }
            t.good_events += 1;
            let text = std::str::from_utf8(&r.payload).expect("checked");
            for word in text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                let word = word.to_ascii_lowercase();
                *t.counts.entry(word.clone()).or_insert(0) += 1;
                t.occurrences
                    .entry(word)
                    .or_default()
                    .entry(r.partition)
                    .or_default()
                    .push(r.offset);
            }
        }
        for per_partition in t.occurrences.values_mut() {
            for offsets in per_partition.values_mut() {
                offsets.sort_unstable();
            }
        }
        t
    }

    /// The count of `word` over the records below `cut`.
    pub fn at(&self, word: &str, cut: &Cut) -> u64 {
        self.occurrences.get(word).map_or(0, |ps| {
            ps.iter()
                .map(|(&p, offsets)| offsets.partition_point(|&o| o < cut.get(p)) as u64)
                .sum()
        })
    }

    /// The first `k` words by count descending, then word ascending.
    pub fn top(&self, k: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> =
            self.counts.iter().map(|(w, c)| (w.clone(), *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }
}

/// Queries a few words continuously in the background (frequent ones and
/// unique ones spread over the stream), recording every answer.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<tokio::task::JoinHandle<Vec<Sample>>>,
}

/// A scenario that fails before [`Sampler::finish`] must still stop the
/// sampling thread: the test's runtime waits for it before the failure is
/// reported (a failed scenario hung until nextest's 300 s timeout).
impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One answer: word, count, `as_of`, batch view version.
pub type Sample = (String, u64, Cut, u64);

impl Sampler {
    /// Samples the serving layer of `stack` for a stream of `events` events.
    pub fn start(stack: &Stack, events: usize) -> Sampler {
        Self::start_on(stack, Role::Serve, events)
    }

    /// Samples serving replica `role`.
    pub fn start_on(stack: &Stack, role: Role, events: usize) -> Sampler {
        let serve = stack.addr(role);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let words: Vec<String> = (0..8)
                .map(|i| format!("w{i}"))
                .chain(
                    (0..events)
                        .step_by((events / 8).max(1))
                        .map(|i| format!("u{i}")),
                )
                .collect();
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for w in &words {
                    // Unanswered while the serving layer is down: skipped.
                    if let Some(a) = json(serve, &format!("/v1/words/{w}")) {
                        samples.push((
                            w.clone(),
                            a["count"].as_u64().expect("count"),
                            cut_of(&a["as_of"]),
                            a["batch"]["version"].as_u64().unwrap_or(0),
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling and checks every sample against the truth at its own
    /// `as_of`, and that no word's count ever went down (a restarted serving
    /// layer answers only once it has restored its replica). Returns the
    /// samples.
    pub async fn finish(mut self, truth: &Truth) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let handle = self.handle.take().expect("finished once");
        let samples = handle.await.expect("sampler");
        assert!(!samples.is_empty(), "the sampler got no answer at all");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (word, count, as_of, version) in &samples {
            let want = truth.at(word, as_of);
            assert_eq!(
                *count, want,
                "{word} answered {count} at as_of {as_of} (view v{version}); the truth there is {want}"
            );
            let prev = last.insert(word, *count).unwrap_or(0);
            assert!(*count >= prev, "{word} went down from {prev} to {count}");
        }
        eprintln!(
            "{} samples: each equals the truth at its as_of, none decreased",
            samples.len()
        );
        samples
    }
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
pub async fn until<T: Send + 'static>(
    what: &'static str,
    timeout: Duration,
    check: impl FnMut() -> Option<T> + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || wait_for(what, timeout, check))
        .await
        .expect(what)
}
