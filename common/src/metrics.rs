//! A small Prometheus text-format writer over atomic counters.
//!
//! Each layer keeps its metrics as plain atomics in one struct and renders them
//! with these helpers; there is no global registry to hide where a number
//! comes from.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram with fixed bucket bounds in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed on render).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// Bounds suited to request latencies: 100 µs to 10 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name` (whose
    /// family line the caller wrote).
    pub fn render(&self, w: &mut TextWriter, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let le = bound.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            w.sample(&bucket, &l, cumulative);
        }
        let count = self.count();
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        w.sample(&bucket, &l, count);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        w.sample(&format!("{name}_sum"), labels, sum);
        w.sample(&format!("{name}_count"), labels, count);
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BOUNDS)
    }
}

/// The family every layer reports its pipeline stages under, one histogram
/// per `stage` label, so one query shows where an event's time goes on its
/// way to answers (the README's latency budget).
pub const STAGE_SECONDS: &str = "lambda_stage_seconds";

/// Writes [`STAGE_SECONDS`] with one histogram per `(stage, histogram)`.
pub fn render_stages(w: &mut TextWriter, stages: &[(&str, &Histogram)]) {
    w.family(
        STAGE_SECONDS,
        "histogram",
        "Time an event spends in each stage of its way to answers (see the README's latency budget).",
    );
    for (stage, h) in stages {
        h.render(w, STAGE_SECONDS, &[("stage", stage)]);
    }
}

/// Milliseconds from a Kafka record timestamp (ms since the epoch) to now;
/// zero for a timestamp in the future (another machine's clock).
pub fn since_timestamp(timestamp_ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis(crate::now_ms().saturating_sub(timestamp_ms).max(0) as u64)
}

/// Renders Prometheus text exposition format.
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the `# HELP` and `# TYPE` lines of a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// Writes one sample with optional labels.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl std::fmt::Display,
    ) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A gauge family with one sample per partition (label `partition`).
    pub fn per_partition(
        &mut self,
        name: &str,
        help: &str,
        offsets: impl IntoIterator<Item = (lambda_core::Partition, lambda_core::Offset)>,
    ) -> &mut Self {
        self.family(name, "gauge", help);
        for (p, o) in offsets {
            self.sample(name, &[("partition", &p.to_string())], o);
        }
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let c = Counter::default();
        c.add(3);
        let mut w = TextWriter::new();
        w.single("lambda_events_total", "counter", "Events seen.", c.get());
        w.family("lambda_dead_letters_total", "counter", "Dead letters.")
            .sample(
                "lambda_dead_letters_total",
                &[("reason", "invalid-utf8")],
                2,
            )
            .sample("lambda_dead_letters_total", &[("reason", "a\"b")], 0);
        let text = w.finish();
        assert!(text.contains("# TYPE lambda_events_total counter\nlambda_events_total 3\n"));
        assert!(text.contains("lambda_dead_letters_total{reason=\"invalid-utf8\"} 2\n"));
        assert!(text.contains("{reason=\"a\\\"b\"} 0"));
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        use std::time::Duration;
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut w = TextWriter::new();
        h.render(&mut w, "lat", &[("route", "/x")]);
        let text = w.finish();
        assert!(
            text.contains("lat_bucket{route=\"/x\",le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_bucket{route=\"/x\",le=\"0.01\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_bucket{route=\"/x\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lat_count{route=\"/x\"} 3\n"), "{text}");
        assert!(text.contains("lat_sum{route=\"/x\"} 1.0055"), "{text}");
    }
}
