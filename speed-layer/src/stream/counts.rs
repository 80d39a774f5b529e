//! The speed layer's realtime counts and the partitions they cover: where
//! an assigned partition starts, what a revocation changes, what a new
//! batch cut changes (expiry below it, partitions it overtook).

use super::*;
use lambda_core::window::Key;
use lambda_core::BucketKey;
use rustc_hash::FxHashSet;

/// The live counts in memory, per bucket, then per key. A bucket covers
/// `--bucket-size` offsets, so its map stays small: a new key never makes
/// the map of every count held grow and rehash (with one new word per event
/// that was half the speed layer's time), and a new cut drops whole buckets.
#[derive(Default)]
pub(super) struct Mirror {
    buckets: FxHashMap<BucketKey, FxHashMap<Box<str>, u64>>,
    /// The buckets loaded with words' all-time counts, counted before each
    /// word was counted under its window only (see `lambda_core::window`):
    /// those go on being counted there. No other bucket gets one.
    all_time: FxHashSet<BucketKey>,
}

impl Mirror {
    /// The counts the store loaded.
    pub(super) fn from_counts(counts: FxHashMap<CountKey, u64>) -> Self {
        let mut mirror = Self::default();
        for (CountKey { bucket, word }, count) in counts {
            if Key::is_word(&word) {
                mirror.all_time.insert(bucket);
            }
            mirror.bucket(bucket).insert(word, count);
        }
        mirror
    }

    /// Whether `bucket` may hold words' all-time counts.
    pub(super) fn holds_all_time(&self, bucket: BucketKey) -> bool {
        self.all_time.contains(&bucket)
    }

    /// The counts of one bucket, to update in place.
    pub(super) fn bucket(&mut self, bucket: BucketKey) -> &mut FxHashMap<Box<str>, u64> {
        self.buckets.entry(bucket).or_default()
    }

    /// How many counts are held.
    pub(super) fn len(&self) -> usize {
        self.buckets.values().map(FxHashMap::len).sum()
    }

    /// Every count held.
    pub(super) fn iter(&self) -> impl Iterator<Item = (CountKey, u64)> + '_ {
        self.buckets.iter().flat_map(|(&bucket, counts)| {
            counts.iter().map(move |(word, &count)| {
                (
                    CountKey {
                        bucket,
                        word: word.clone(),
                    },
                    count,
                )
            })
        })
    }

    /// Keeps the buckets `keep` accepts; returns how many counts went. They
    /// are freed on a thread of their own: after a cut under load that is
    /// millions of keys, and the stream loop would wait for it.
    pub(super) fn retain_buckets(&mut self, keep: impl Fn(BucketKey) -> bool) -> usize {
        let (mut removed, mut gone) = (0, Vec::new());
        let all_time = &mut self.all_time;
        self.buckets.retain(|&bucket, counts| {
            let kept = keep(bucket);
            if !kept {
                all_time.remove(&bucket);
                removed += counts.len();
                gone.push(std::mem::take(counts));
            }
            kept
        });
        if !gone.is_empty() {
            // Should no thread start, they are freed here all the same.
            let _ = std::thread::Builder::new()
                .name("free-buckets".into())
                .spawn(move || drop(gone));
        }
        removed
    }
}

/// The speed layer's realtime counts: the durable store, its in-memory
/// mirror, the positions they are exact at and the batch cut they start at.
pub(super) struct RealtimeCounts {
    /// Shared with the micro-batch being checkpointed (see
    /// `checkpoint::InFlight`).
    pub(super) store: Arc<RealtimeStore>,
    pub(super) mirror: Mirror,
    pub(super) positions: Positions,
    /// Per partition, the newest timestamp that moved its event-time
    /// watermark, exact at `positions` (see `lambda_core::window`).
    pub(super) newest: BTreeMap<Partition, Millis>,
    pub(super) cut: Cut,
    /// Per partition, the event time at `cut` (the newest timestamp that
    /// moved the batch view's watermark below it): where a partition
    /// started at the cut begins its watermark.
    pub(super) cut_newest: BTreeMap<Partition, Millis>,
    /// Per partition started past its checkpoint (at the batch cut), where
    /// it started: every watermark says so (see
    /// [`lambda_core::realtime::Watermark::starts`]).
    pub(super) starts: Cut,
    /// The partitions the consumer group gives this instance now.
    pub(super) owned: BTreeSet<Partition>,
}

/// Where a partition the group assigns resumes: its checkpoint, or the batch
/// cut when that is ahead (or there is no checkpoint) — never the beginning
/// or the end.
pub(super) fn resume_point(checkpointed: &Positions, cut: &Cut, p: Partition) -> Offset {
    checkpointed.get(p).max(cut.get(p))
}

/// The positions of the partitions owned — every one, one never
/// checkpointed at 0 too: a serving layer's `as_of` names only the
/// partitions watermarks name.
pub(super) fn owned_positions(owned: &BTreeSet<Partition>, positions: &Positions) -> Positions {
    owned.iter().map(|&p| (p, positions.get(p))).collect()
}

impl RealtimeCounts {
    /// The checkpointed positions of the partitions owned.
    pub(super) fn owned_positions(&self) -> Positions {
        owned_positions(&self.owned, &self.positions)
    }

    /// Applies a change the group made: an assigned partition starts where
    /// [`resume_point`] placed it — past its checkpoint when the batch cut
    /// is ahead, which is recorded durably in `starts` before any count
    /// past it; a revoked one is no longer named in watermarks (its counts
    /// stay, exact at its checkpoint, until a cut expires them).
    pub(super) async fn change_ownership(&mut self, change: Assignment) -> Result<(), StoreError> {
        match change {
            Assignment::Assigned(placed) => {
                self.owned.extend(placed.iter().map(|&(p, _)| p));
                self.start_partitions(placed).await?;
            }
            Assignment::Revoked(partitions) => {
                for p in partitions {
                    self.owned.remove(&p);
                    tracing::info!(
                        partition = p,
                        offset = self.positions.get(p),
                        "Partition handed back to the group after its last checkpoint."
                    );
                }
            }
        }
        Ok(())
    }

    /// Takes a new batch cut (`cut_of` the batch layer's answer): expires
    /// the buckets below it, adopts its event time, and moves every owned
    /// partition it overtook on to it.
    ///
    /// A cut overtakes a partition when the batch layer reads faster than
    /// this one (a burst of dead letters, each sent and acknowledged before
    /// the next record, is enough). The records up to the cut are then
    /// skipped — a view reaching the cut has them — which is a start past
    /// the checkpoint like an assignment behind the cut: recorded durably in
    /// `starts` before any count past it, so that a serving layer whose
    /// view is older waits for one reaching it instead of claiming the
    /// skipped events at its `as_of` (and its reconciliation of that swap
    /// sees their counts missing).
    pub(super) async fn take_cut(
        &mut self,
        cut: &BatchCut,
        size: BucketSize,
        metrics: &SpeedMetrics,
    ) -> Result<(), StoreError> {
        expire(self, &cut.cut, size, metrics).await?;
        self.adopt_event_time(cut);
        let overtaken: Vec<(Partition, Offset)> = self
            .owned
            .iter()
            .map(|&p| (p, self.cut.get(p)))
            .filter(|&(p, at)| self.positions.get(p) < at)
            .collect();
        self.start_partitions(overtaken).await
    }

    /// Moves each partition to its start ([`Self::start_partition`]), then
    /// records `starts` durably if any moved past its checkpoint.
    async fn start_partitions(
        &mut self,
        placed: Vec<(Partition, Offset)>,
    ) -> Result<(), StoreError> {
        let before = self.starts.clone();
        for (p, start) in placed {
            self.start_partition(p, start);
        }
        if self.starts != before {
            self.store.set_starts(&self.starts).await?;
        }
        Ok(())
    }

    /// Moves partition `p` to `start`, recording in `starts` when that is
    /// past its checkpoint.
    ///
    /// Never back: the group asks where to resume when it assigns, which can
    /// be while a micro-batch read before the rebalance is still to be
    /// checkpointed (a partition revoked and assigned again in one
    /// rebalance). Its counts are in the mirror by now, so the position
    /// stays at the checkpoint and the records below it that the reader
    /// delivers again are skipped as redelivered, not counted twice.
    pub(super) fn start_partition(&mut self, p: Partition, start: Offset) {
        let checkpointed = self.positions.get(p);
        if start > checkpointed {
            self.positions.set(p, start);
            self.starts.set(p, start);
            // Its events from the cut on are late or not by the watermark
            // a reader from offset 0 would have there, as in the batch
            // layer (the one kept here is from its checkpoint, behind).
            if let Some(&t) = self.cut_newest.get(&p) {
                let n = self.newest.entry(p).or_insert(t);
                *n = (*n).max(t);
            }
            tracing::info!(
                partition = p,
                offset = start,
                checkpoint = checkpointed,
                "Starting at the batch cut, past the checkpoint; serving layers holding an older view wait for one that reaches it."
            );
        } else {
            tracing::info!(
                partition = p,
                offset = checkpointed,
                asked = start,
                "Resuming from the checkpoint."
            );
        }
    }

    /// Takes the batch view's event time where its cut is ahead of this
    /// layer's position, so a partition resumed at the cut starts its
    /// watermark where a reader from offset 0 would have it.
    pub(super) fn adopt_event_time(&mut self, cut: &BatchCut) {
        for (&p, &t) in &cut.newest {
            let at_cut = self.cut_newest.entry(p).or_insert(t);
            *at_cut = (*at_cut).max(t);
            if self.positions.get(p) <= cut.cut.get(p) {
                let n = self.newest.entry(p).or_insert(t);
                *n = (*n).max(t);
            }
        }
    }
}

/// Deletes the buckets below a new batch cut (only ever moving forward).
pub(super) async fn expire(
    view: &mut RealtimeCounts,
    cut: &Cut,
    size: BucketSize,
    metrics: &SpeedMetrics,
) -> Result<(), StoreError> {
    let merged: Cut = cut
        .iter()
        .map(|(p, o)| (p, o.max(view.cut.get(p))))
        .chain(
            view.cut
                .iter()
                .filter(|(p, _)| cut.iter().all(|(q, _)| q != *p)),
        )
        .collect();
    if merged == view.cut {
        return Ok(());
    }
    let started = Instant::now();
    view.store.expire_below(&merged, size).await?;
    let removed = view
        .mirror
        .retain_buckets(|b| merged.is_realtime_bucket(size, b.partition, b.bucket));
    metrics.buckets_expired.add(removed as u64);
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(cut = %merged, removed, ms, "Expired realtime buckets below the batch cut.");
    view.cut = merged;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_holds_every_count_once_and_a_cut_drops_whole_buckets() {
        let counts: FxHashMap<CountKey, u64> = [
            (CountKey::new(0, 1, "a"), 1),
            (CountKey::new(0, 1, "b"), 2),
            (CountKey::new(0, 2, "a"), 3),
            (CountKey::new(1, 1, "a"), 4),
        ]
        .into_iter()
        .collect();
        let mut mirror = Mirror::from_counts(counts.clone());
        assert_eq!(mirror.len(), 4);
        let back: FxHashMap<CountKey, u64> = mirror.iter().collect();
        assert_eq!(back, counts);
        *mirror
            .bucket(BucketKey {
                partition: 0,
                bucket: 2,
            })
            .get_mut("a")
            .expect("held") += 5;
        // Partition 0 below bucket 2 goes: two counts.
        let removed = mirror.retain_buckets(|b| b.partition != 0 || b.bucket >= 2);
        assert_eq!(removed, 2);
        let left: FxHashMap<CountKey, u64> = mirror.iter().collect();
        let want: FxHashMap<CountKey, u64> =
            [(CountKey::new(0, 2, "a"), 8), (CountKey::new(1, 1, "a"), 4)]
                .into_iter()
                .collect();
        assert_eq!(left, want);
    }

    #[tokio::test]
    async fn an_assigned_partition_behind_the_batch_cut_starts_at_it_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut view = RealtimeCounts {
            store: Arc::new(RealtimeStore::open(dir.path()).expect("store")),
            mirror: Mirror::default(),
            positions: [(0, 40), (1, 10)].into_iter().collect(),
            newest: [(1, 1_000)].into_iter().collect(),
            cut: [(0, 32), (1, 16), (2, 16)].into_iter().collect(),
            cut_newest: [(0, 9_000), (1, 5_000), (2, 7_000)].into_iter().collect(),
            starts: [(0, 8)].into_iter().collect(),
            owned: BTreeSet::new(),
        };
        // 0 resumes at its checkpoint (ahead of the cut), 1 is behind the
        // cut, 2 has no checkpoint, 3 has neither checkpoint nor cut.
        let placed: Vec<_> = (0..4)
            .map(|p| (p, resume_point(&view.positions, &view.cut, p)))
            .collect();
        assert_eq!(placed, vec![(0, 40), (1, 16), (2, 16), (3, 0)]);
        view.change_ownership(Assignment::Assigned(placed))
            .await
            .expect("assigned");
        assert_eq!(
            view.owned_positions(),
            [(0, 40), (1, 16), (2, 16), (3, 0)].into_iter().collect()
        );
        let starts: Cut = [(0, 8), (1, 16), (2, 16)].into_iter().collect();
        assert_eq!(
            view.starts, starts,
            "0's earlier start kept; 1 and 2 start past their checkpoint"
        );
        assert_eq!(view.store.starts().expect("starts"), starts, "durably");
        assert_eq!(
            view.newest,
            [(1, 5_000), (2, 7_000)].into_iter().collect(),
            "a partition started at the cut takes the event time there; 0 resumed keeps its own"
        );
        view.change_ownership(Assignment::Revoked(vec![1]))
            .await
            .expect("revoked");
        assert_eq!(
            view.owned_positions(),
            [(0, 40), (2, 16), (3, 0)].into_iter().collect()
        );
        // Revoked and assigned again in one rebalance, with a resume point
        // taken before the last micro-batch (to 60) was checkpointed: the
        // position stays at the checkpoint, so nothing is counted twice.
        view.positions.set(0, 60);
        view.change_ownership(Assignment::Revoked(vec![0]))
            .await
            .expect("revoked");
        view.change_ownership(Assignment::Assigned(vec![(0, 40)]))
            .await
            .expect("assigned");
        assert_eq!(view.positions.get(0), 60, "never back below the checkpoint");
    }

    #[tokio::test]
    async fn a_cut_overtaking_an_owned_partition_moves_it_there_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = BucketSize::new(8).expect("8");
        let mut view = RealtimeCounts {
            store: Arc::new(RealtimeStore::open(dir.path()).expect("store")),
            mirror: Mirror::from_counts(
                [
                    (CountKey::new(0, 1, "#@a"), 2),
                    (CountKey::new(1, 5, "#@b"), 1),
                ]
                .into_iter()
                .collect(),
            ),
            positions: [(0, 12), (1, 44), (2, 3)].into_iter().collect(),
            newest: BTreeMap::new(),
            cut: Cut::new(),
            cut_newest: BTreeMap::new(),
            starts: Cut::new(),
            // 2 was handed to another instance.
            owned: [0, 1].into_iter().collect(),
        };
        let cut = BatchCut {
            cut: [(0, 24), (1, 40), (2, 16)].into_iter().collect(),
            newest: [(0, 7_000)].into_iter().collect(),
        };
        view.take_cut(&cut, size, &SpeedMetrics::default())
            .await
            .expect("cut taken");
        // 0 was behind the cut: it goes on from there, and says so durably
        // before any count past it. 1 was ahead; 2 is not owned.
        assert_eq!(
            view.positions,
            [(0, 24), (1, 44), (2, 3)].into_iter().collect()
        );
        let starts: Cut = [(0, 24)].into_iter().collect();
        assert_eq!(view.starts, starts);
        assert_eq!(view.store.starts().expect("starts"), starts, "durably");
        assert_eq!(
            view.newest.get(&0),
            Some(&7_000),
            "its watermark starts at the cut's"
        );
        assert_eq!(view.mirror.len(), 1, "the buckets below the cut expired");
    }
}
