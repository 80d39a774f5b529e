//! Speed-layer throughput against a plain consumer, side by side in one run.
//!
//! Pre-fills a topic on the embedded broker with events of 11 words (ten
//! from a vocabulary of 16, and one seen nowhere else: `#<event number>`,
//! the worst case of a high-cardinality stream), then
//! measures (1) a plain rdkafka consumer that only reads every record and
//! (2) the speed layer consuming, counting, checkpointing and publishing the
//! same records, and prints records/s for both (each over the middle 80 % of
//! the records: start-up and the ends are not throughput) and their ratio.
//! The machine is shared and noisy, so only the ratio of the two is
//! meaningful.
//!
//! Run: `cargo bench -p lambda-speed --bench throughput` (EVENTS=N to resize;
//! VOCABULARY_ONLY=1 leaves out the word of its own, to see what new keys
//! cost: each is a new live count, checkpointed, compacted and published;
//! SPEED_FLAGS="--flag value ..." gives the speed layer more flags, to try a
//! setting such as `--kafka-option key=value`).

use clap::Parser;
use common::broker::{BrokerStorage, EmbeddedBroker};
use common::kafka::{consumer_config, ensure_topic, producer_config, send_all};
use common::shutdown::CancellationToken;
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::time::{Duration, Instant};
use testkit::{get, metric_sum, unique};

/// The `lambda` binary's allocator (`cli/src/main.rs`), so the bench
/// measures what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct SpeedCli {
    #[command(flatten)]
    args: speed_layer::config::SpeedArgs,
}

const VOCAB: [&str; 16] = [
    "lambda", "kappa", "stream", "batch", "speed", "serving", "view", "merge", "kafka", "offset",
    "bucket", "cut", "word", "count", "event", "Exactly",
];

fn main() {
    // As `lambda` does first thing (see `common::memory`).
    common::memory::avoid_transparent_huge_pages().expect("prctl");
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let broker = EmbeddedBroker::start(BrokerStorage::Memory).await.expect("broker");
        let brokers = broker.bootstrap();
        let topic = unique("bench");
        ensure_topic(&::common::client::Connection::plaintext(&brokers), &topic, 4, Duration::from_secs(30)).await.expect("topic");

        let producer: rdkafka::producer::FutureProducer = producer_config(&::common::client::Connection::plaintext(&brokers)).create().expect("producer");
        let vocabulary_only = std::env::var("VOCABULARY_ONLY").is_ok_and(|v| v == "1");
        let mut state = 7u64;
        let records: Vec<(String, Vec<u8>)> = (0..events)
            .map(|i| {
                let words: Vec<&str> = (0..10)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        VOCAB[(state >> 60) as usize]
                    })
                    .collect();
                let text = if vocabulary_only {
                    words.join(" ")
                } else {
                    format!("{} #{i}", words.join(" "))
                };
                (i.to_string(), text.into_bytes())
            })
            .collect();
        let started = Instant::now();
        for chunk in records.chunks(20_000) {
            for r in send_all(&producer, &topic, chunk).await {
                r.expect("delivered");
            }
        }
        eprintln!("pre-filled {events} events in {:.1} s", started.elapsed().as_secs_f64());

        // 1. Plain consumer: read every record, nothing else.
        // A plain group consumer starts where a new group does: at the
        // earliest offset (our layers assign explicit positions and treat a
        // reset as an error instead).
        let consumer: StreamConsumer = consumer_config(&::common::client::Connection::plaintext(&brokers), &unique("plain"))
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let (from, to) = middle(events);
        let mut span = Span::default();
        // One stream for the whole run, as the speed layer's reader keeps
        // one per micro-batch: each `recv` makes a stream of its own, and
        // registering and dropping its waker took a lock per record, which
        // made the plain consumer slower than it need be.
        let mut stream = consumer.stream();
        for read in 1..=events {
            stream.next().await.expect("a stream never ends").expect("record");
            span.pass(read, from, to);
        }
        drop(stream);
        let (plain, plain_cores) = span.rate();
        drop(consumer);

        // 2. The speed layer over the same records.
        let dir = tempfile::tempdir().expect("tempdir");
        let dlq = format!("{topic}.dlq");
        let rtopic = format!("{topic}.rt");
        let argv = [
            "x", "--brokers", &brokers, "--topic", &topic, "--dead-letter-topic", &dlq, "--realtime-topic", &rtopic,
            "--data-dir", dir.path().to_str().expect("utf-8"), "--http-addr", "127.0.0.1:0", "--partitions", "4",
        ];
        // SPEED_FLAGS: more flags for the speed layer, to try a setting.
        let extra = std::env::var("SPEED_FLAGS").unwrap_or_default();
        let argv = argv.into_iter().chain(extra.split_whitespace());
        let args = SpeedCli::try_parse_from(argv).expect("flags").args;
        let token = CancellationToken::new();
        let running = speed_layer::start(args, token.clone()).await.expect("speed starts");
        let addr = running.http_addr;
        // Like the plain consumer, over the middle of the run: start-up
        // (topic checks, assignment) and the first and last micro-batches
        // (read, or counted, with nothing beside them) are not throughput.
        let position = move || {
            get(addr, "/metrics")
                .map(|r| metric_sum(&r.text(), "lambda_speed_position") as usize)
                .unwrap_or(0)
        };
        let (speed, speed_cores) = tokio::task::spawn_blocking(move || {
            let mut span = Span::default();
            loop {
                let at = position();
                span.pass(at, from, to);
                if at >= events {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            span.rate()
        })
        .await
        .expect("join");
        // Where the speed layer's time went: its micro-batches and the mean
        // of each stage (a ratio far below 1 shows here first).
        let metrics = get(addr, "/metrics").expect("metrics").text();
        let batches = metric_sum(&metrics, "lambda_speed_micro_batches_total");
        let live = metric_sum(&metrics, "lambda_speed_live_counts");
        let mut stages = String::new();
        for stage in ["consume", "checkpoint", "publish"] {
            let of = |part: &str| {
                let prefix = format!("lambda_stage_seconds_{part}{{stage=\"{stage}\"}} ");
                metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse::<f64>().ok()).unwrap_or(0.0)
            };
            let mean_ms = of("sum") / of("count").max(1.0) * 1000.0;
            stages.push_str(&format!(" {stage} {mean_ms:.1} ms"));
        }
        token.cancel();
        running.wait().await.expect("the speed layer stops cleanly");
        broker.stop().await;

        let words = if vocabulary_only { "10 words of a vocabulary of 16" } else { "11 words, one of them new" };
        println!("\nspeed layer vs plain consumer, {events} events of {words}, 4 partitions, embedded broker");
        println!("{:<28} {:>12}", "consumer", "records/s");
        println!("{:<28} {:>12.0}", "plain rdkafka (read only)", plain);
        println!("{:<28} {:>12.0}", "speed layer (count+commit)", speed);
        println!("ratio speed/plain: {:.2}", speed / plain);
        // The process (broker included) on the machine's cores: how far
        // each side was from using them all.
        println!("cores busy: plain {plain_cores:.2}, speed layer {speed_cores:.2}");
        println!(
            "speed layer: {batches} micro-batches ({:.0} records each), {live} live counts; stage means:{stages}",
            events as f64 / batches.max(1.0)
        );
    });
}

/// Where the timed middle of a run starts and ends, in records: a tenth in
/// from either end.
fn middle(events: usize) -> (usize, usize) {
    (events / 10, events - events / 10)
}

/// A rate measured between two positions of a consumer: the first seen at
/// or past `from`, and the first at or past `to`. The speed layer's
/// position moves a micro-batch at a time, so each end is a checkpoint and
/// the rate is that of the micro-batches in between (timed from the first
/// checkpoint, a run with large micro-batches had read much of the second
/// before its clock started, and looked faster than it was).
#[derive(Default)]
struct Span {
    start: Option<(usize, Instant, f64)>,
    end: Option<(usize, Instant, f64)>,
}

impl Span {
    fn pass(&mut self, at: usize, from: usize, to: usize) {
        let now = || (at, Instant::now(), process_cpu_seconds());
        if self.start.is_none() && at >= from {
            self.start = Some(now());
        }
        if self.end.is_none() && at >= to {
            self.end = Some(now());
        }
    }

    /// Records per second and cores busy between the two ends.
    fn rate(&self) -> (f64, f64) {
        let (Some((a, ta, ca)), Some((b, tb, cb))) = (self.start, self.end) else {
            return (0.0, 0.0);
        };
        if b <= a {
            // A few thousand events (CI's run of every bench): one
            // micro-batch took them all, there is no rate.
            eprintln!("too few EVENTS ({b}) to time a rate");
            return (0.0, 0.0);
        }
        let seconds = tb.duration_since(ta).as_secs_f64();
        ((b - a) as f64 / seconds, (cb - ca) / seconds)
    }
}

/// User and system CPU time of this process so far (Linux, in clock ticks
/// of 1/100 s as `/proc` reports them).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .expect("utime and stime")
    };
    (ticks(11) + ticks(12)) / 100.0
}
