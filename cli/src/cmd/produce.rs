//! `lambda produce`: one event per line of a file (or standard input) to
//! Kafka, at an optional rate, with progress and a delivery report.
//!
//! Delivery guarantee: at least once per line, and the exit code says whether
//! every record was acknowledged by the broker (`acks=all`); a failed record
//! is reported, never silently dropped.

use anyhow::Context;
use clap::Args;
use common::config::{env, parse_duration};
use common::kafka::{producer_config, send_all};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// The input, one event per line; `-` or nothing reads standard input.
    /// Blank lines are skipped.
    pub input: Option<PathBuf>,
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = env::BROKERS, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The topic to produce to.
    #[arg(long, env = env::TOPIC, default_value = "events")]
    pub topic: String,
    /// Events per second (default: as fast as the broker acknowledges them).
    #[arg(long, env = env::RATE)]
    pub rate: Option<u32>,
    /// Key each record by its line number (deterministic partitioning);
    /// by default records carry no key and the client spreads them.
    #[arg(long, env = env::KEY_BY_LINE)]
    pub key_by_line: bool,
    /// Stamp the events with event times spread evenly over the last
    /// DURATION (the first line DURATION ago, the last one now) instead of
    /// the moment each is sent: history for the event-time windows. Needs a
    /// file (its lines are counted first).
    #[arg(long, env = env::BACKDATE, value_parser = parse_duration)]
    pub backdate: Option<Duration>,
    /// How long the client may try to deliver a record before it counts as
    /// failed.
    #[arg(long, env = env::DELIVERY_TIMEOUT, default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
    /// TLS, SASL, compression and pass-through client settings.
    #[command(flatten)]
    pub client: common::client::ClientArgs,
}

/// Paces sends to `rate` events per second from the first send.
pub struct Pacer {
    rate: Option<u32>,
    started: tokio::time::Instant,
    sent: u64,
}

impl Pacer {
    pub fn new(rate: Option<u32>) -> Self {
        Self {
            rate,
            started: tokio::time::Instant::now(),
            sent: 0,
        }
    }

    /// How many events to send at once: about 100 sends a second when paced.
    pub fn chunk(&self) -> usize {
        self.rate
            .map_or(5_000, |r| (r as usize).div_ceil(100))
            .clamp(1, 5_000)
    }

    /// Waits until `n` more events are due.
    pub async fn wait(&mut self, n: usize) {
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / f64::from(rate));
            tokio::time::sleep_until(self.started + due).await;
        }
        self.sent += n as u64;
    }
}

/// Event times spread evenly over `span` back from `now`, one per line.
#[derive(Debug, Clone, Copy)]
pub struct Backdate {
    first_ms: i64,
    step_ms: f64,
}

impl Backdate {
    /// For `lines` lines ending at `now_ms`.
    pub fn new(span: Duration, lines: u64, now_ms: i64) -> Self {
        let span_ms = span.as_millis().min(i64::MAX as u128) as i64;
        Self {
            first_ms: now_ms.saturating_sub(span_ms).max(0),
            step_ms: span_ms as f64 / lines.saturating_sub(1).max(1) as f64,
        }
    }

    /// The event time of the `n`th line (from 0).
    pub fn at(&self, n: u64) -> i64 {
        self.first_ms + (n as f64 * self.step_ms) as i64
    }
}

/// One line to send: its key, payload and event time, if backdated.
struct Line {
    key: Option<String>,
    payload: Vec<u8>,
    timestamp_ms: Option<i64>,
}

impl common::kafka::OutgoingRecord for Line {
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }
}

/// The number of events (non-blank lines) of a file.
fn count_events(path: &std::path::Path) -> anyhow::Result<u64> {
    let mut reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let (mut n, mut line) = (0, Vec::new());
    while reader
        .read_until(b'\n', &mut line)
        .context("cannot read the input")?
        > 0
    {
        if !line.iter().all(u8::is_ascii_whitespace) {
            n += 1;
        }
        line.clear();
    }
    Ok(n)
}

/// Delivery outcomes, with each distinct error counted.
#[derive(Debug, Default)]
pub struct Report {
    pub delivered: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    pub fn record(&mut self, result: Result<(), rdkafka::error::KafkaError>) {
        match result {
            Ok(()) => self.delivered += 1,
            Err(error) => {
                self.failed += 1;
                let message = error.to_string();
                if !self.errors.contains_key(&message) {
                    tracing::warn!(%error, "A record was not delivered.");
                }
                *self.errors.entry(message).or_insert(0) += 1;
            }
        }
    }
}

fn open_input(input: &Option<PathBuf>) -> anyhow::Result<Box<dyn Read + Send>> {
    Ok(match input {
        None => Box::new(std::io::stdin()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin()),
        Some(p) => Box::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        ),
    })
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.rate == Some(0) {
        anyhow::bail!("invalid --rate: must be at least 1 event per second");
    }
    common::config::validate_topic_name(&args.topic)
        .map_err(|m| anyhow::anyhow!("invalid --topic: {m}"))?;
    args.client.validate()?;
    let backdate = match (&args.backdate, &args.input) {
        (None, _) => None,
        (Some(span), Some(path)) if path.as_os_str() != "-" => {
            Some(Backdate::new(*span, count_events(path)?, common::now_ms()))
        }
        (Some(_), _) => {
            anyhow::bail!("--backdate needs a file as input (its lines are counted first)")
        }
    };
    let kafka = args.client.connection(&args.brokers);
    tracing::debug!(connection = %kafka.describe(), "Producing.");
    let mut reader = BufReader::with_capacity(1 << 20, open_input(&args.input)?);
    // Fail fast on a missing topic instead of timing out on every record
    // (brokers that auto-create topics create it here).
    if common::kafka::topic_partitions(&kafka, &args.topic, Duration::from_secs(10)).is_none() {
        anyhow::bail!(
            "topic `{}` does not exist on {} (or the broker is unreachable); \
             the layers and `lambda demo` create their topics when they start",
            args.topic,
            args.brokers
        );
    }
    let producer: rdkafka::producer::FutureProducer = producer_config(&kafka)
        .set(
            "message.timeout.ms",
            args.delivery_timeout.as_millis().max(1).to_string(),
        )
        .create()
        .with_context(|| format!("cannot create a Kafka producer for {}", args.brokers))?;

    let progress = Progress::new();
    let started = Instant::now();
    let mut report = Report::default();
    let mut skipped = 0u64;
    super::runtime()?.block_on(async {
        let mut pacer = Pacer::new(args.rate);
        let mut line_no = 0u64;
        let mut events = 0u64;
        let mut line = Vec::new();
        let mut eof = false;
        while !eof {
            let mut chunk: Vec<Line> = Vec::with_capacity(pacer.chunk());
            while chunk.len() < pacer.chunk() {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .context("cannot read the input")?;
                if n == 0 {
                    eof = true;
                    break;
                }
                line_no += 1;
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    skipped += 1;
                    continue;
                }
                chunk.push(Line {
                    key: args.key_by_line.then(|| line_no.to_string()),
                    payload: line.clone(),
                    timestamp_ms: backdate.map(|b| b.at(events)),
                });
                events += 1;
            }
            if chunk.is_empty() {
                continue;
            }
            pacer.wait(chunk.len()).await;
            for result in send_all(&producer, &args.topic, &chunk).await {
                report.record(result);
            }
            progress.update(&report, started);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {} events to `{}` in {seconds:.1} s ({:.0}/s); {} failed; {skipped} blank lines skipped",
        report.delivered,
        args.topic,
        report.delivered as f64 / seconds.max(1e-9),
        report.failed,
    );
    if report.failed > 0 {
        let reasons: Vec<String> = report
            .errors
            .iter()
            .map(|(e, n)| format!("{n}× {e}"))
            .collect();
        anyhow::bail!(
            "{} of {} events were not delivered to {}: {}",
            report.failed,
            report.failed + report.delivered,
            args.brokers,
            reasons.join("; ")
        );
    }
    Ok(())
}

/// A spinner with throughput on a terminal; a plain line every 5 s otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {human_pos} events sent  {per_sec}  {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn update(&self, report: &Report, started: Instant) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(report.delivered);
                if report.failed > 0 {
                    bar.set_message(format!("{} failed", report.failed));
                }
            }
            None if self.last_line.get().elapsed() >= Duration::from_secs(5) => {
                self.last_line.set(Instant::now());
                eprintln!(
                    "produced {} events ({:.0}/s), {} failed",
                    report.delivered,
                    report.delivered as f64 / started.elapsed().as_secs_f64(),
                    report.failed
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
