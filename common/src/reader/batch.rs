//! Reading a batch: records up to a bound, or as soon as nothing more is
//! buffered, with the changes in ownership and the positions passed that
//! came with them.

use super::*;
use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::MessageStream;

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At this many records …
    pub max_records: usize,
    /// … or this many payload bytes …
    pub max_bytes: usize,
    /// … or when nothing more is buffered, after waiting this long from the
    /// batch's first record for more (zero: what is at hand).
    pub linger: Duration,
    /// When the batch's first record is older than `.0`, the reader is
    /// catching up: it lingers at least `.1`, so the fixed cost of a batch
    /// (a checkpoint, a publication) is shared by many records.
    pub catch_up: Option<(Duration, Duration)>,
    /// With no record at all for this long, an empty batch (so the user can
    /// do periodic work); `None` waits for a record or cancellation.
    pub idle: Option<Duration>,
}

/// One batch of records, in the order each partition holds them.
pub struct ReadBatch<'a> {
    /// Changes in the partitions the reader owns, in order, that took
    /// effect before `records` (always empty for [`PartitionReader::open`]).
    /// Every record comes from a partition owned for the whole batch.
    pub changes: Vec<Assignment>,
    pub records: Vec<BorrowedMessage<'a>>,
    /// Payload bytes of `records`.
    pub bytes: usize,
    /// Redelivered records below a resume position, dropped.
    pub skipped: usize,
    /// Consumer errors a retry fixes (librdkafka retries them itself).
    pub transient_errors: usize,
    /// Set when the consumer returned records it cannot read: the batch
    /// ends before them, and the layer holds their partition or stops.
    pub unreadable: Option<ConsumeFailure>,
    /// Partitions whose position moved past offsets that hold no record for
    /// a read-committed reader — a transaction's marker, an aborted
    /// transaction's records — each with the offset it continues at (past
    /// its records in `records`). The layer takes it as its position, as if
    /// it had read records there: without it a partition that ends with a
    /// marker would never be read to its end.
    pub passed: Vec<(Partition, Offset)>,
}

impl PartitionReader {
    /// Reads the next batch; `None` once `token` is cancelled.
    pub async fn next_batch(
        &mut self,
        limits: &Limits,
        token: &crate::shutdown::CancellationToken,
    ) -> Result<Option<ReadBatch<'_>>, ReaderError> {
        self.next_batch_while(limits, token, std::future::ready(()))
            .await
    }

    /// [`next_batch`](Self::next_batch), but a batch with records stays open
    /// past its linger until `busy` completes: records that arrive meanwhile
    /// join it instead of starting a batch of their own. For a reader whose
    /// previous batch is still on its way (being checkpointed): batches then
    /// grow with the load, and an idle one still closes at once.
    pub async fn next_batch_while(
        &mut self,
        limits: &Limits,
        token: &crate::shutdown::CancellationToken,
        busy: impl std::future::Future<Output = ()>,
    ) -> Result<Option<ReadBatch<'_>>, ReaderError> {
        tokio::pin!(busy);
        let mut busy_done = false;
        let mut batch = ReadBatch {
            changes: Vec::new(),
            records: Vec::new(),
            bytes: 0,
            skipped: 0,
            transient_errors: 0,
            unreadable: None,
            passed: Vec::new(),
        };
        let idle = tokio::time::sleep(limits.idle.unwrap_or(Duration::MAX / 4));
        tokio::pin!(idle);
        let mut markers = tokio::time::interval(PASSED_CHECK);
        markers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let first = loop {
            // Changes queued by a rebalance come first, in a batch of their
            // own: the layer learns of them before it is handed a record.
            for change in self.consumer.context().take()? {
                batch
                    .changes
                    .push(change.apply(&mut self.resume, &mut self.next));
            }
            if !batch.changes.is_empty() {
                return Ok(Some(batch));
            }
            let consumer = &self.consumer;
            let context = consumer.context();
            tokio::select! {
                _ = token.cancelled() => return Ok(None),
                _ = &mut idle, if limits.idle.is_some() => {
                    batch.passed = passed(&self.consumer, &self.topic, &self.resume, &mut self.next);
                    return Ok(Some(batch));
                }
                _ = markers.tick() => {
                    // No record, but the position may have moved past a
                    // marker (the last thing a transactional producer
                    // writes): a batch of its own.
                    batch.passed = passed(&self.consumer, &self.topic, &self.resume, &mut self.next);
                    if !batch.passed.is_empty() {
                        return Ok(Some(batch));
                    }
                    continue;
                }
                _ = context.wake.notified() => continue,
                m = consumer.recv() => {
                    if !context.has_queued() {
                        break m;
                    }
                    // A rebalance ran inside this `recv`: a record that came
                    // with it is read again after the change is reported.
                    self.read_again(&m)?;
                }
            }
        };
        let consumer = &self.consumer;
        let context = consumer.context();
        let started = Instant::now();
        // Judged once per batch, from its first record (it reads the clock).
        let mut until: Option<Instant> = None;
        let mut next = Some(first);
        // One stream for the whole batch: each `recv` makes a stream of its
        // own, and registering and dropping its waker took a lock per record.
        let mut stream = consumer.stream();
        loop {
            match next.take() {
                Some(Ok(m)) => {
                    let (p, offset) = (m.partition(), m.offset());
                    match self.resume.check(p, offset) {
                        ResumeCheck::Accept => {
                            self.next.insert(p, offset + 1);
                            batch.bytes += m.payload_len();
                            if until.is_none() {
                                until = Some(started + linger_for(limits, &m));
                            }
                            batch.records.push(m);
                        }
                        ResumeCheck::Skip => batch.skipped += 1,
                        ResumeCheck::SeekBack(to) => {
                            drop(m);
                            self.seek_back(p, to)?;
                        }
                    }
                }
                Some(Err(error)) => {
                    if let KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset) = error
                    {
                        // A position the topic no longer holds (retention
                        // overtook the reader): name it, then stop.
                        let positions: Vec<_> = self.next.iter().map(|(&p, &o)| (p, o)).collect();
                        check_positions(&self.kafka, &self.topic, &positions).await?;
                    }
                    if let Some(failure) = ConsumeFailure::classify(&error, &self.topic) {
                        batch.unreadable = Some(failure);
                        break;
                    }
                    batch.transient_errors += 1;
                    ConsumerErrorRetried {
                        topic: &self.topic,
                        error: &error,
                    }
                    .emit();
                }
                None => {}
            }
            if batch.records.len() >= limits.max_records || batch.bytes >= limits.max_bytes {
                break;
            }
            // A record already buffered is taken even past the deadline, so
            // a zero linger means "what the consumer has at hand"; under
            // load that is most records, taken without setting a timer.
            let deadline = until.unwrap_or(started);
            let at_hand = match next_of(&mut stream).now_or_never() {
                Some(m) => Ok(m),
                None => tokio::time::timeout_at(deadline, next_of(&mut stream)).await,
            };
            let received = match at_hand {
                Ok(m) => Some(m),
                Err(_) if !busy_done => tokio::select! {
                    // Done first: with nothing buffered, a batch closes as
                    // soon as nothing holds it open.
                    biased;
                    () = &mut busy => {
                        busy_done = true;
                        None
                    }
                    m = next_of(&mut stream) => Some(m),
                },
                Err(_) => None,
            };
            match received {
                Some(m) if context.has_queued() => {
                    // A rebalance: the batch ends before it (see above).
                    self.read_again(&m)?;
                    break;
                }
                Some(m) => next = Some(m),
                None => break,
            }
        }
        // Not when a rebalance ended the batch: the record received with it
        // moved the position of a partition that may be revoked, unread.
        if !self.consumer.context().has_queued() {
            batch.passed = passed(&self.consumer, &self.topic, &self.resume, &mut self.next);
        }
        Ok(Some(batch))
    }
}

/// The stream's next record, as `StreamConsumer::recv` returns it.
async fn next_of<'a>(
    stream: &mut MessageStream<'a, ReaderContext>,
) -> KafkaResult<BorrowedMessage<'a>> {
    stream.next().await.expect("a consumer's stream never ends")
}

/// How long a batch whose first record is `m` waits for more.
fn linger_for(limits: &Limits, m: &BorrowedMessage<'_>) -> Duration {
    let catching_up = limits.catch_up.and_then(|(lag, wait)| {
        let t = m.timestamp().to_millis()?;
        (crate::metrics::since_timestamp(t) > lag).then_some(wait)
    });
    limits.linger.max(catching_up.unwrap_or_default())
}
