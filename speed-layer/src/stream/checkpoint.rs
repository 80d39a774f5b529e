//! The checkpoint: a micro-batch made durable, then handed to the publisher.

use super::*;

/// Where micro-batches are made durable: the realtime store (tests use
/// one that fails).
pub(crate) trait Durable {
    fn commit(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Durable for RealtimeStore {
    fn commit(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        RealtimeStore::commit(self, checkpoint)
    }
}

/// Where a checkpointed micro-batch goes, and what reports on its checkpoint.
#[derive(Clone, Copy)]
pub(super) struct Outlets<'a> {
    pub(super) publish: &'a mpsc::Sender<Publication>,
    pub(super) metrics: &'a SpeedMetrics,
    pub(super) stalls: &'a Stalls,
    /// Where partitions started past their checkpoint, for the watermarks.
    pub(super) starts: &'a Cut,
    /// The partitions owned: a watermark names only these.
    pub(super) owned: &'a BTreeSet<Partition>,
}

/// Writes a micro-batch's changed counts and next offsets atomically,
/// retrying until they are durable (consumption waits meanwhile:
/// backpressure, not loss), then moves `positions` and hands the counts to
/// the publisher — never the other way round. False when the role stopped
/// before the checkpoint was durable: then nothing of the micro-batch is
/// published and the positions stay, so a restart recounts it.
pub(super) async fn checkpoint_then_publish(
    store: &impl Durable,
    (positions, newest): (&mut Positions, &mut BTreeMap<Partition, Millis>),
    checkpoint: Checkpoint,
    oldest_event_ms: Option<i64>,
    outlets: &Outlets<'_>,
    token: &CancellationToken,
) -> bool {
    let Outlets {
        publish,
        metrics,
        stalls,
        starts,
        owned,
    } = *outlets;
    let started = Instant::now();
    let write = DurableWrite {
        what: "the checkpoint",
        failures: &metrics.checkpoint_failures,
        stalls,
    };
    let durable = until_durable(token, write, || store.commit(&checkpoint)).await;
    if durable.is_none() {
        return false;
    }
    for (p, o) in &checkpoint.next_offsets {
        positions.set(*p, *o);
    }
    newest.extend(checkpoint.event_times.iter().copied());
    metrics.micro_batches.inc();
    metrics.checkpoint_stage.observe(started.elapsed());
    metrics
        .last_checkpoint_us
        .set(started.elapsed().as_micros() as i64);
    let publication = Publication {
        upserts: checkpoint.counts,
        // Every owned partition, one never checkpointed at 0 too: a serving
        // layer's `as_of` names only the partitions watermarks name.
        positions: owned.iter().map(|&p| (p, positions.get(p))).collect(),
        newest: newest.clone(),
        starts: starts.iter().filter(|(p, _)| owned.contains(p)).collect(),
        oldest_event_ms,
        checkpointed_at: Instant::now(),
    };
    if publish.send(publication).await.is_err() {
        tracing::error!("The publisher stopped; upserts will be re-published on restart.");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc::error::TryRecvError;

    /// A store whose first `failures` commits fail.
    struct Flaky {
        failures: usize,
        attempts: AtomicUsize,
    }

    impl Durable for Flaky {
        async fn commit(&self, _: &Checkpoint) -> Result<(), StoreError> {
            if self.attempts.fetch_add(1, Ordering::Relaxed) < self.failures {
                Err(StoreError::Malformed {
                    path: "flaky".into(),
                    what: "an injected failure".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            counts: vec![(CountKey::new(0, 3, "lambda"), 7)],
            next_offsets: vec![(0, 25)],
            as_of: None,
            event_times: vec![(0, 1_000)],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_that_keeps_failing_and_is_cancelled_publishes_nothing() {
        let store = Flaky {
            failures: usize::MAX,
            attempts: AtomicUsize::new(0),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let (metrics, token) = (SpeedMetrics::default(), CancellationToken::new());
        let mut positions: Positions = [(0, 20)].into_iter().collect();
        let stop = async {
            while metrics.checkpoint_failures.get() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            token.cancel();
        };
        let stalls = Stalls::default();
        let outlets = Outlets {
            publish: &tx,
            metrics: &metrics,
            stalls: &stalls,
            starts: &Cut::new(),
            owned: &[0].into_iter().collect(),
        };
        let mut newest = BTreeMap::new();
        let progress = (&mut positions, &mut newest);
        let attempt =
            checkpoint_then_publish(&store, progress, checkpoint(), None, &outlets, &token);
        let (durable, ()) = tokio::join!(attempt, stop);
        assert!(!durable, "reported as not durable");
        assert_eq!(
            rx.try_recv().err(),
            Some(TryRecvError::Empty),
            "nothing published"
        );
        assert_eq!(positions.get(0), 20, "the positions did not move");
        assert!(newest.is_empty(), "nor did the event time");
        assert_eq!(metrics.micro_batches.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_that_succeeds_after_failures_is_published_once_durable() {
        let store = Flaky {
            failures: 2,
            attempts: AtomicUsize::new(0),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let (metrics, token) = (SpeedMetrics::default(), CancellationToken::new());
        let mut positions: Positions = [(0, 20)].into_iter().collect();
        let stalls = Stalls::default();
        let outlets = Outlets {
            publish: &tx,
            metrics: &metrics,
            stalls: &stalls,
            starts: &Cut::new(),
            owned: &[0, 1].into_iter().collect(),
        };
        let mut newest = BTreeMap::new();
        let progress = (&mut positions, &mut newest);
        let durable =
            checkpoint_then_publish(&store, progress, checkpoint(), None, &outlets, &token).await;
        assert!(durable);
        assert_eq!(store.attempts.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.checkpoint_failures.get(), 2);
        let published = rx.try_recv().expect("published after the checkpoint");
        assert_eq!(published.upserts, checkpoint().counts);
        assert_eq!(
            published.positions,
            [(0, 25), (1, 0)].into_iter().collect(),
            "every owned partition, one never checkpointed at 0"
        );
        assert_eq!(positions.get(0), 25);
        assert_eq!(published.newest, [(0, 1_000)].into_iter().collect());
    }
}
