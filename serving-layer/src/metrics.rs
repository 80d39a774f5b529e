//! The serving layer's Prometheus metrics: requests per route and status
//! class with a latency histogram, replica and freshness gauges, and
//! dead-letter counts.

use crate::health::Snapshot;
use crate::reconcile::ReconciliationStatus;
use common::metrics::{render_stages, Counter, Histogram, TextWriter, LATENCY_BOUNDS};
use lambda_core::Cut;

/// The routes requests are counted under (their templates, so the label set
/// stays bounded whatever paths clients send).
pub const ROUTES: &[&str] = &[
    "/",
    "/v1/words/{word}",
    "/v1/top",
    "/v1/status",
    "/v1/admin/recompute",
    "/metrics",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "unmatched",
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug)]
struct RouteMetrics {
    by_class: [Counter; 5],
    latency: Histogram,
}

#[derive(Debug)]
pub struct ServingMetrics {
    routes: Vec<RouteMetrics>,
    /// Requests received (counted as they arrive; `routes` as answered).
    pub arrivals: Counter,
    pub shed: Counter,
    pub timeouts: Counter,
    pub upserts_applied: Counter,
    /// Slices applied of releases applied in slices (`follow`).
    pub release_slices: Counter,
    pub malformed_realtime: Counter,
    pub follower_errors: Counter,
    pub unreadable_batches: Counter,
    pub store_failures: Counter,
    /// Storing a release durably and applying it to the replica.
    pub apply_stage: Histogram,
    /// From an event's record timestamp to its count in answers (the oldest
    /// event of each release: an upper bound for the rest).
    pub visible: Histogram,
}

impl Default for ServingMetrics {
    fn default() -> Self {
        Self {
            routes: ROUTES
                .iter()
                .map(|_| RouteMetrics {
                    by_class: Default::default(),
                    latency: Histogram::new(LATENCY_BOUNDS),
                })
                .collect(),
            arrivals: Counter::default(),
            shed: Counter::default(),
            timeouts: Counter::default(),
            upserts_applied: Counter::default(),
            release_slices: Counter::default(),
            malformed_realtime: Counter::default(),
            follower_errors: Counter::default(),
            unreadable_batches: Counter::default(),
            store_failures: Counter::default(),
            apply_stage: Histogram::default(),
            visible: Histogram::default(),
        }
    }
}

/// The replica's facts the metrics report.
#[derive(Debug, Clone, Default)]
pub struct ReplicaFacts {
    pub batch_version: Option<u64>,
    pub batch_computed_at_ms: Option<i64>,
    pub as_of: Cut,
    pub realtime_entries: usize,
    /// View swaps checked against the realtime counts.
    pub reconciliation: ReconciliationStatus,
}

impl ServingMetrics {
    /// Records one answered request under its route template.
    pub fn observe(&self, route: &str, status: u16, elapsed: std::time::Duration) {
        let i = ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(ROUTES.len() - 1);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.routes[i].by_class[class].inc();
        self.routes[i].latency.observe(elapsed);
    }

    pub fn requests(&self, route: &str) -> u64 {
        ROUTES
            .iter()
            .position(|r| *r == route)
            .map_or(0, |i| self.routes[i].latency.count())
    }

    pub fn render(&self, facts: &ReplicaFacts, health: &Snapshot, now_ms: i64) -> String {
        let mut w = TextWriter::new();
        w.family(
            "lambda_serving_requests_total",
            "counter",
            "HTTP requests answered, by route template and status class.",
        );
        for (route, m) in ROUTES.iter().zip(&self.routes) {
            for (class, c) in CLASSES.iter().zip(&m.by_class) {
                w.sample(
                    "lambda_serving_requests_total",
                    &[("route", route), ("status", class)],
                    c.get(),
                );
            }
        }
        w.family(
            "lambda_serving_request_duration_seconds",
            "histogram",
            "Time to answer an HTTP request.",
        );
        for (route, m) in ROUTES.iter().zip(&self.routes) {
            m.latency.render(
                &mut w,
                "lambda_serving_request_duration_seconds",
                &[("route", route)],
            );
        }
        w.single(
            "lambda_serving_shed_total",
            "counter",
            "Requests refused with 503 because the concurrency limit was reached.",
            self.shed.get(),
        )
        .single(
            "lambda_serving_timeouts_total",
            "counter",
            "Requests answered with 503 after the request timeout.",
            self.timeouts.get(),
        )
        .single(
            "lambda_serving_batch_version",
            "gauge",
            "Version of the batch view being served (0: none).",
            facts.batch_version.unwrap_or(0),
        )
        .single(
            "lambda_serving_batch_age_seconds",
            "gauge",
            "Age of the batch view being served.",
            facts
                .batch_computed_at_ms
                .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0),
        )
        .single(
            "lambda_serving_as_of_offsets",
            "gauge",
            "Events the answers are exact at (sum of as_of over partitions).",
            facts.as_of.total_offsets(),
        )
        .single(
            "lambda_serving_events_lag",
            "gauge",
            "Events in Kafka not yet covered by answers (sum over partitions).",
            facts.as_of.behind(&health.ends.events),
        )
        .single(
            "lambda_serving_realtime_topic_lag",
            "gauge",
            "Realtime-topic records not yet read by the follower.",
            health.follower_positions.behind(&health.ends.realtime),
        )
        .single(
            "lambda_serving_freshness_seconds",
            "gauge",
            "Time since answers last covered every event in Kafka.",
            health.freshness.as_secs_f64(),
        )
        .single(
            "lambda_serving_realtime_entries",
            "gauge",
            "Realtime (word, bucket) counts held.",
            facts.realtime_entries,
        )
        .single(
            "lambda_serving_realtime_upserts_applied_total",
            "counter",
            "Realtime upserts applied to the replica.",
            self.upserts_applied.get(),
        )
        .single(
            "lambda_serving_release_slices_total",
            "counter",
            "Slices applied of realtime releases applied in slices (large ones while requests come in).",
            self.release_slices.get(),
        )
        .single(
            "lambda_serving_realtime_malformed_total",
            "counter",
            "Malformed realtime-topic messages skipped.",
            self.malformed_realtime.get(),
        )
        .single(
            "lambda_serving_follower_errors_total",
            "counter",
            "Kafka consumer errors on the realtime topic.",
            self.follower_errors.get(),
        )
        .single(
            "lambda_serving_unreadable_batches_total",
            "counter",
            "Realtime-topic batches the consumer could not read (corrupt, or an unsupported format); the serving layer stops on the first.",
            self.unreadable_batches.get(),
        )
        .single(
            "lambda_serving_store_failures_total",
            "counter",
            "Failed writes to the realtime store (retried).",
            self.store_failures.get(),
        )
        .single(
            "lambda_dead_letter_records",
            "gauge",
            "Records in the dead-letter topic (rejected events, all layers).",
            health.ends.dead_letters,
        )
        .single(
            "lambda_serving_batch_stale",
            "gauge",
            "1 when the batch layer has not answered lately.",
            u8::from(health.batch_stale),
        )
        .single(
            "lambda_serving_realtime_stale",
            "gauge",
            "1 when answers lag Kafka by more than --stale-after.",
            u8::from(health.realtime_stale),
        )
        .single(
            "lambda_serving_reconciled_swaps_total",
            "counter",
            "Batch view swaps whose new − old counts were compared with the realtime counts between the cuts.",
            facts.reconciliation.checked_swaps,
        )
        .single(
            "lambda_serving_unreconciled_swaps_total",
            "counter",
            "Batch view swaps not compared: the realtime counts did not cover the new cut.",
            facts.reconciliation.skipped_swaps,
        )
        .single(
            "lambda_serving_reconciliation_mismatches_total",
            "counter",
            "Words on which the batch and speed layers disagreed at a swap (0 while they agree).",
            facts.reconciliation.mismatches,
        );
        render_stages(&mut w, &[("apply", &self.apply_stage)]);
        w.family(
            "lambda_serving_visible_seconds",
            "histogram",
            "From an event's record timestamp to its count in answers (per release, its oldest event).",
        );
        self.visible
            .render(&mut w, "lambda_serving_visible_seconds", &[]);
        w.finish()
    }
}
