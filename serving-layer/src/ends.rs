//! Watching where the topics end: the events topic (how far behind the
//! replica is), the realtime topic (how far behind the follower is) and the
//! dead-letter topic (how many records were rejected).

use crate::health::{Ends, Health};
use crate::replica::Replica;
use common::kafka::client_config;
use common::shutdown::CancellationToken;
use common::sync::FairRwLock;
use lambda_core::Positions;
use rdkafka::consumer::BaseConsumer;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct EndsWatcher {
    pub kafka: common::client::Connection,
    pub events_topic: String,
    pub realtime_topic: String,
    pub dead_letter_topic: String,
    pub replica: Arc<FairRwLock<Replica>>,
    pub health: Arc<Health>,
    pub interval: Duration,
}

const TIMEOUT: Duration = Duration::from_secs(2);

fn topic_ends(consumer: &BaseConsumer, topic: &str) -> Result<Positions, String> {
    common::kafka::topic_ends(consumer, topic, TIMEOUT)
}

impl EndsWatcher {
    fn fetch(&self, consumer: &BaseConsumer) -> Result<Ends, String> {
        Ok(Ends {
            events: topic_ends(consumer, &self.events_topic)?,
            realtime: topic_ends(consumer, &self.realtime_topic)?,
            dead_letters: topic_ends(consumer, &self.dead_letter_topic)?.total_offsets(),
        })
    }

    /// Runs on a blocking thread (librdkafka's metadata calls block) until
    /// cancelled.
    pub fn run_blocking(self, token: CancellationToken) {
        let consumer: BaseConsumer = match client_config(&self.kafka)
            .set("group.id", "lambda-serving-ends")
            .create()
        {
            Ok(c) => c,
            Err(error) => {
                self.health.kafka_failed(error.to_string());
                tracing::error!(%error, "Cannot create a Kafka client to watch topic ends.");
                return;
            }
        };
        while !token.is_cancelled() {
            let asked_at = Instant::now();
            match self.fetch(&consumer) {
                Ok(ends) => {
                    let as_of = self.replica.read_or_stop("the replica").as_of();
                    self.health.kafka_ends(asked_at, ends, &as_of);
                }
                Err(error) => {
                    tracing::debug!(%error, "Cannot fetch topic ends.");
                    self.health.kafka_failed(error);
                }
            }
            std::thread::sleep(self.interval);
        }
    }
}
