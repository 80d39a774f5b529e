//! A compaction's writes, cut into batches short enough that none holds
//! sled's process-wide lock for long (see [`super::Prepared`]).

/// Roughly how many bytes a write batch of a compaction holds (small in
/// tests, so that they write many).
pub(super) const WRITE_BATCH_BYTES: usize = if cfg!(test) { 256 } else { 1 << 20 };

/// What removing one key costs a write batch, counted in bytes written: a
/// purge that removed 750-1,000 deltas in one batch took 20-66 ms (the
/// `write_ms` of its log line at 20,000 events/s), holding sled's lock
/// that long, and the slowest probes of `bench/freshness.py` fell there.
/// (In tests, a batch per removal, so that a cut falls between any two.)
const REMOVAL_COST: usize = if cfg!(test) {
    WRITE_BATCH_BYTES
} else {
    16 << 10
};

/// Write batches of about [`WRITE_BATCH_BYTES`], cut between buckets.
#[derive(Default)]
pub(super) struct Batches {
    done: Vec<sled::Batch>,
    current: sled::Batch,
    bytes: usize,
}

impl Batches {
    pub(super) fn insert(&mut self, key: &[u8], value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.current.insert(key, value);
    }

    pub(super) fn remove(&mut self, key: sled::IVec) {
        self.bytes += REMOVAL_COST;
        self.current.remove(key);
    }

    /// Starts a new batch if this one is full: only where the store is
    /// consistent between batches (see [`super::Prepared`]).
    pub(super) fn cut_if_full(&mut self) {
        if self.bytes >= WRITE_BATCH_BYTES {
            self.done.push(std::mem::take(&mut self.current));
            self.bytes = 0;
        }
    }

    pub(super) fn finish(mut self) -> Vec<sled::Batch> {
        if self.bytes > 0 {
            self.done.push(self.current);
        }
        self.done
    }
}
