//! The checkpoint: a micro-batch made durable, then handed to the publisher.

use super::*;
use consume::MicroBatch;
use counts::Mirror;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// Where a checkpointed micro-batch goes, and what reports on its
/// checkpoint. Owned, so a checkpoint can run beside the counting of the
/// next micro-batch (see [`InFlight`]).
#[derive(Clone)]
pub(super) struct Outlets {
    pub(super) publish: mpsc::Sender<Publication>,
    pub(super) metrics: Arc<SpeedMetrics>,
    pub(super) stalls: Stalls,
    /// Told the positions once they are durable.
    pub(super) status: Arc<Mutex<SpeedStatus>>,
    pub(super) token: CancellationToken,
}

/// Where a micro-batch leaves the partitions, once it is durable: what its
/// watermark and the status report.
pub(super) struct Progress {
    /// The next offset of every partition ever read, this batch's included.
    pub(super) positions: Positions,
    /// Per partition, the newest timestamp that moved its watermark.
    pub(super) newest: BTreeMap<Partition, Millis>,
    /// Where partitions started past their checkpoint, for the watermarks.
    pub(super) starts: Cut,
    /// The partitions owned: a watermark names only these.
    pub(super) owned: BTreeSet<Partition>,
}

/// Writes a micro-batch's changed counts and next offsets atomically,
/// retrying until they are durable (the next micro-batch waits for it before
/// its own checkpoint: backpressure, not loss), then reports the positions
/// and hands the counts to the publisher — never the other way round. False
/// when the role stopped before the checkpoint was durable: then nothing of
/// the micro-batch is published or reported, so a restart recounts it.
pub(super) async fn checkpoint_then_publish(
    store: &impl Durable,
    checkpoint: Checkpoint,
    progress: Progress,
    oldest_event_ms: Option<i64>,
    outlets: &Outlets,
) -> bool {
    let Outlets {
        publish,
        metrics,
        stalls,
        status,
        token,
    } = outlets;
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
    metrics.micro_batches.inc();
    metrics.checkpoint_stage.observe(started.elapsed());
    metrics
        .last_checkpoint_us
        .set(started.elapsed().as_micros() as i64);
    let positions = counts::owned_positions(&progress.owned, &progress.positions);
    {
        let mut s = status.lock_or_stop("the speed status");
        s.positions = positions.clone();
        s.checkpointed = progress.positions;
    }
    let publication = Publication {
        upserts: checkpoint.counts,
        positions,
        newest: progress.newest,
        starts: progress
            .starts
            .iter()
            .filter(|(p, _)| progress.owned.contains(p))
            .collect(),
        oldest_event_ms,
        checkpointed_at: Instant::now(),
    };
    if publish.send(publication).await.is_err() {
        tracing::error!("The publisher stopped; upserts will be re-published on restart.");
    }
    true
}

/// A micro-batch being counted into the live counts, checkpointed and
/// handed to the publisher on a thread of its own while the stream loop
/// reads the next one: the two take turns on the critical path otherwise
/// (reading about half of it; splitting into words, counting and
/// checkpointing the rest). One at a time: the loop lands it before the
/// next one starts and before anything else touches the live counts or the
/// partitions (a rebalance, a new batch cut, a held partition, the end).
///
/// A thread from the runtime's blocking pool, not a task: a task spawned
/// by the stream loop waits in its worker's next-task slot, which no other
/// worker takes from, until the loop yields — and under load it hardly
/// does, since librdkafka's `recv` is ready at once while records are
/// buffered (it takes no part in tokio's cooperative budget). The two then
/// took turns after all: in the throughput bench the loop spent a quarter
/// of its time waiting for the micro-batch before to land.
pub(super) struct InFlight {
    task: JoinHandle<(Mirror, bool)>,
    /// Says true once the task is done.
    done: watch::Receiver<bool>,
}

impl InFlight {
    /// Starts `batch` on its way. The live counts go with it and come back
    /// when it lands; `progress` is where it leaves the partitions.
    pub(super) fn start(
        store: Arc<RealtimeStore>,
        mut mirror: Mirror,
        mut batch: MicroBatch,
        progress: Progress,
        outlets: Outlets,
    ) -> Self {
        let (tell, done) = watch::channel(false);
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            let checkpoint = Checkpoint {
                counts: batch.apply(&mut mirror),
                next_offsets: batch.next_offsets(),
                as_of: None,
                event_times: batch.event_times(),
            };
            let oldest = batch.oldest_event_ms;
            let durable = runtime.block_on(checkpoint_then_publish(
                &*store, checkpoint, progress, oldest, &outlets,
            ));
            outlets.metrics.live_counts.set(mirror.len() as i64);
            let _ = tell.send(true);
            (mirror, durable)
        });
        Self { task, done }
    }

    /// Completes once it is ready to land (or its task is gone), without
    /// landing it.
    pub(super) fn landed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            let _ = done.wait_for(|&d| d).await;
        }
    }

    /// Waits until it is durable and handed to the publisher (or the role
    /// stopped first: false); the live counts return to `mirror`.
    pub(super) async fn land(self, mirror: &mut Mirror) -> bool {
        match self.task.await {
            Ok((counts, durable)) => {
                *mirror = counts;
                durable
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => false,
        }
    }
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

    fn outlets(tx: mpsc::Sender<Publication>) -> Outlets {
        Outlets {
            publish: tx,
            metrics: Arc::default(),
            stalls: Stalls::default(),
            status: Arc::default(),
            token: CancellationToken::new(),
        }
    }

    fn progress(owned: &[Partition]) -> Progress {
        Progress {
            positions: [(0, 25)].into_iter().collect(),
            newest: [(0, 1_000)].into_iter().collect(),
            starts: Cut::new(),
            owned: owned.iter().copied().collect(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_that_keeps_failing_and_is_cancelled_publishes_nothing() {
        let store = Flaky {
            failures: usize::MAX,
            attempts: AtomicUsize::new(0),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let out = outlets(tx);
        out.status.lock_or_stop("the status").checkpointed = [(0, 20)].into_iter().collect();
        let stop = async {
            while out.metrics.checkpoint_failures.get() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out.token.cancel();
        };
        let attempt = checkpoint_then_publish(&store, checkpoint(), progress(&[0]), None, &out);
        let (durable, ()) = tokio::join!(attempt, stop);
        assert!(!durable, "reported as not durable");
        assert_eq!(
            rx.try_recv().err(),
            Some(TryRecvError::Empty),
            "nothing published"
        );
        let status = out.status.lock_or_stop("the status").clone();
        assert_eq!(status.checkpointed.get(0), 20, "the positions did not move");
        assert!(status.positions.is_empty());
        assert_eq!(out.metrics.micro_batches.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_that_succeeds_after_failures_is_published_once_durable() {
        let store = Flaky {
            failures: 2,
            attempts: AtomicUsize::new(0),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let out = outlets(tx);
        let durable =
            checkpoint_then_publish(&store, checkpoint(), progress(&[0, 1]), None, &out).await;
        assert!(durable);
        assert_eq!(store.attempts.load(Ordering::Relaxed), 3);
        assert_eq!(out.metrics.checkpoint_failures.get(), 2);
        let published = rx.try_recv().expect("published after the checkpoint");
        assert_eq!(published.upserts, checkpoint().counts);
        let owned: Positions = [(0, 25), (1, 0)].into_iter().collect();
        assert_eq!(
            published.positions, owned,
            "every owned partition, one never checkpointed at 0"
        );
        assert_eq!(published.newest, [(0, 1_000)].into_iter().collect());
        let status = out.status.lock_or_stop("the status").clone();
        assert_eq!(status.positions, owned, "reported once durable");
        assert_eq!(status.checkpointed.get(0), 25);
    }
}
