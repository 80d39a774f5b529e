//! A transactional producer for the tests of transactions end to end.

use crate::Reach;
use std::time::Duration;

/// A transactional producer (librdkafka's `transactional.id`): every
/// [`Transactional::send`] produces its records in one transaction and
/// commits or aborts it, as a user's exactly-once pipeline would.
pub struct Transactional {
    producer: rdkafka::producer::FutureProducer,
}

impl Transactional {
    /// A producer with this transactional id, its transactions initialised.
    pub async fn new(kafka: impl Reach, id: &str) -> Transactional {
        use rdkafka::producer::Producer;
        let producer: rdkafka::producer::FutureProducer =
            common::kafka::producer_config(&kafka.connection())
                .set("transactional.id", id)
                .create()
                .expect("transactional producer");
        let init = producer.clone();
        // librdkafka's transaction calls block: off the runtime, whose
        // workers may be running the embedded broker that must answer them.
        tokio::task::spawn_blocking(move || init.init_transactions(Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("init_transactions");
        Transactional { producer }
    }

    /// Produces `records` (key, payload, partition) in one transaction,
    /// then commits it or, if `commit` is false, aborts it.
    pub async fn send(
        &self,
        topic: &str,
        records: &[(String, Vec<u8>, Option<i32>)],
        commit: bool,
    ) {
        self.begin_with(topic, records).await;
        self.end(commit).await;
    }

    /// Begins a transaction and produces `records` in it: acknowledged,
    /// not yet committed.
    pub async fn begin_with(&self, topic: &str, records: &[(String, Vec<u8>, Option<i32>)]) {
        use rdkafka::producer::Producer;
        self.producer
            .begin_transaction()
            .expect("begin_transaction");
        for result in common::kafka::send_all(&self.producer, topic, records).await {
            result.expect("delivered in the transaction");
        }
    }

    /// Commits the open transaction or, if `commit` is false, aborts it.
    pub async fn end(&self, commit: bool) {
        use rdkafka::producer::Producer;
        let end = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(30);
            if commit {
                end.commit_transaction(timeout)
            } else {
                end.abort_transaction(timeout)
            }
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("ending the transaction (commit: {commit}): {e}"));
    }
}
