//! The mid-batch resume guard: some brokers answer a fetch at offset `o`
//! with the record batch that contains `o`, others (the embedded broker)
//! skip the rest of that batch; this finds out which and seeks back.

/// Where to resume each partition, robust to brokers that answer a fetch at
/// an offset inside a record batch with the *next* batch (tansu does; Kafka
/// returns the containing batch and the client drops the records before the
/// offset).
///
/// A layer wants to resume at its checkpoint `p → want`. It seeks a margin
/// earlier instead, skips records below `want`, and checks the first record
/// it gets at or above `want`: if that is beyond `want` while records before
/// it were never seen, the batch holding `want` was skipped, so it seeks
/// further back (doubling the margin) rather than lose those records.
///
/// Offsets legitimately missing from the log (transaction markers, an
/// aborted transaction's records, compaction) are recognised without going
/// further back when the record just before `want` was seen: a checkpoint's
/// `want` is always its last record's offset + 1, and a fetch that delivered
/// `want - 1` delivers whatever the log holds after it. Otherwise the search
/// ends once the seek reaches the log's start (offset 0 unless told otherwise).
#[derive(Debug, Clone)]
pub struct Resume {
    want: std::collections::BTreeMap<i32, i64>,
    margin: std::collections::BTreeMap<i32, i64>,
    verified: std::collections::BTreeSet<i32>,
    /// Partitions whose record `want - 1` has arrived.
    saw_previous: std::collections::BTreeSet<i32>,
    /// The first offset each partition's log still holds, where known: no
    /// seek goes below it (a real Kafka answers such a fetch with an error).
    log_start: std::collections::BTreeMap<i32, i64>,
}

/// What to do with a received record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeCheck {
    /// Below the checkpoint: already processed.
    Skip,
    /// Process it.
    Accept,
    /// Records were skipped by the broker: seek this partition to the offset
    /// and drop the record.
    SeekBack(i64),
}

impl Resume {
    /// The first margin: librdkafka's producers put at most 10,000 records
    /// in a batch (`batch.num.messages`).
    pub const INITIAL_MARGIN: i64 = 10_000;

    pub fn new(want: impl IntoIterator<Item = (i32, i64)>) -> Self {
        Self::with_margin(want, Self::INITIAL_MARGIN)
    }

    /// With a chosen first margin (tests use a small one).
    pub fn with_margin(want: impl IntoIterator<Item = (i32, i64)>, margin: i64) -> Self {
        let want: std::collections::BTreeMap<i32, i64> = want.into_iter().collect();
        let margin = want.keys().map(|&p| (p, margin.max(1))).collect();
        Self {
            want,
            margin,
            verified: Default::default(),
            saw_previous: Default::default(),
            log_start: Default::default(),
        }
    }

    /// Records that `partition`'s log starts at `offset` (its low watermark).
    pub fn set_log_start(&mut self, partition: i32, offset: i64) {
        self.log_start.insert(partition, offset.max(0));
    }

    /// Starts guarding `partition`, newly assigned: it resumes at `want`,
    /// and its log starts at `log_start`.
    pub fn add(&mut self, partition: i32, want: i64, log_start: i64) {
        self.remove(partition);
        self.want.insert(partition, want);
        self.margin.insert(partition, Self::INITIAL_MARGIN);
        self.set_log_start(partition, log_start);
    }

    /// Forgets `partition`, no longer read.
    pub fn remove(&mut self, partition: i32) {
        self.want.remove(&partition);
        self.margin.remove(&partition);
        self.verified.remove(&partition);
        self.saw_previous.remove(&partition);
        self.log_start.remove(&partition);
    }

    fn log_start(&self, partition: i32) -> i64 {
        self.log_start.get(&partition).copied().unwrap_or(0)
    }

    /// The offset to seek `partition` to: a margin before where it resumes,
    /// never before its log's start.
    pub fn seek_offset(&self, partition: i32) -> i64 {
        let want = self.want.get(&partition).copied().unwrap_or(0);
        (want - self.margin.get(&partition).copied().unwrap_or(0)).max(self.log_start(partition))
    }

    /// Whether no seek back can come in `partition` any more: a record at
    /// or past the resume position was accepted, the record just before it
    /// was seen, or there is nothing earlier to seek to.
    pub fn settled(&self, partition: i32) -> bool {
        self.verified.contains(&partition)
            || self.saw_previous.contains(&partition)
            || self.seek_offset(partition) <= self.log_start(partition)
    }

    pub fn check(&mut self, partition: i32, offset: i64) -> ResumeCheck {
        if self.verified.contains(&partition) {
            return ResumeCheck::Accept;
        }
        let want = self.want.get(&partition).copied().unwrap_or(0);
        if offset < want {
            if offset == want - 1 {
                self.saw_previous.insert(partition);
            }
            return ResumeCheck::Skip;
        }
        let seeked = self.seek_offset(partition);
        if offset == want
            || seeked <= self.log_start(partition)
            || self.saw_previous.contains(&partition)
        {
            // Exactly where we wanted to be, or the broker's log really has
            // nothing between `want` and `offset` (a gap right after the
            // record we saw last, or nothing earlier to seek to).
            self.verified.insert(partition);
            return ResumeCheck::Accept;
        }
        let margin = self.margin.entry(partition).or_insert(Self::INITIAL_MARGIN);
        *margin = margin.saturating_mul(2);
        tracing::warn!(
            partition,
            want,
            got = offset,
            seek = self.seek_offset(partition),
            "The broker skipped records at the resume position; seeking further back."
        );
        ResumeCheck::SeekBack(self.seek_offset(partition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_below_the_checkpoint_and_seeks_back_over_a_skipped_batch() {
        let mut r = Resume::new([(0, 25_000), (1, 0)]);
        assert_eq!(r.seek_offset(0), 15_000);
        assert_eq!(r.seek_offset(1), 0);
        assert_eq!(r.check(0, 15_000), ResumeCheck::Skip);
        // The broker jumped from before 25,000 to 25,100: records were skipped.
        assert_eq!(r.check(0, 25_100), ResumeCheck::SeekBack(5_000));
        assert_eq!(r.check(0, 24_999), ResumeCheck::Skip);
        assert_eq!(r.check(0, 25_000), ResumeCheck::Accept);
        assert_eq!(r.check(0, 25_001), ResumeCheck::Accept);
        // Seeking from 0, a gap is genuine.
        assert_eq!(r.check(1, 3), ResumeCheck::Accept);
    }

    /// A partition assigned again starts unverified, at its new position.
    #[test]
    fn a_partition_added_again_is_checked_again_from_its_new_position() {
        let mut r = Resume::new([(0, 100)]);
        r.set_log_start(0, 0);
        assert_eq!(r.check(0, 100), ResumeCheck::Accept);
        r.remove(0);
        r.add(0, 30_000, 25_000);
        assert_eq!(r.seek_offset(0), 25_000, "never below the log's start");
        assert_eq!(r.check(0, 29_999), ResumeCheck::Skip);
        assert_eq!(r.check(0, 30_000), ResumeCheck::Accept);
        r.add(0, 50_000, 0);
        assert_eq!(r.check(0, 30_001), ResumeCheck::Skip, "verified no longer");
        assert_eq!(r.check(0, 50_100), ResumeCheck::SeekBack(30_000));
    }

    #[test]
    fn a_partition_is_settled_once_no_seek_back_can_come() {
        let mut resume = Resume::with_margin([(0, 100), (1, 5), (2, 40)], 10);
        // Nothing before partition 1's margin: it starts settled.
        assert!(!resume.settled(0) && resume.settled(1) && !resume.settled(2));
        // The record just before the resume position.
        assert_eq!(resume.check(0, 99), ResumeCheck::Skip);
        assert!(resume.settled(0));
        // A record past the position without the one before: a seek back
        // comes, so not settled until a record at the position is accepted.
        assert_eq!(resume.check(2, 45), ResumeCheck::SeekBack(20));
        assert!(!resume.settled(2));
        assert_eq!(resume.check(2, 39), ResumeCheck::Skip);
        assert_eq!(resume.check(2, 40), ResumeCheck::Accept);
        assert!(resume.settled(2));
    }

    /// A transactional producer's commit marker (or an aborted
    /// transaction) right at the checkpoint leaves a gap there: having seen
    /// the checkpoint's own last record, the next record is accepted at once
    /// instead of seeking back to the start of the partition.
    #[test]
    fn a_gap_right_after_the_last_checkpointed_record_is_accepted_at_once() {
        // Checkpoint at 25,000: record 24,999 was the last one processed;
        // 25,000 is a commit marker, 25,001..25,003 an aborted transaction
        // and its marker; 25,004 is the next committed record.
        let mut r = Resume::new([(0, 25_000)]);
        assert_eq!(r.check(0, 15_000), ResumeCheck::Skip);
        assert_eq!(r.check(0, 24_999), ResumeCheck::Skip);
        assert_eq!(r.check(0, 25_004), ResumeCheck::Accept);
        assert_eq!(r.check(0, 25_005), ResumeCheck::Accept);
        // Without record 24,999 the jump is still a skipped batch.
        let mut r = Resume::new([(0, 25_000)]);
        assert_eq!(r.check(0, 30_000), ResumeCheck::SeekBack(5_000));
        assert_eq!(r.check(0, 24_998), ResumeCheck::Skip);
        assert_eq!(r.check(0, 30_000), ResumeCheck::SeekBack(0));
    }
}
