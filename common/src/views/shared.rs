//! Batch views in the shared store, where every batch instance publishes
//! and any of them serves them.
//!
//! ```text
//! views/parts/p-<partition>/<cut, 20 digits>-<version, 10 digits>-<writer>.tsv
//! views/composed/<version, 10 digits>-<writer>.tsv
//! views/sets/<version, 10 digits>.json
//! ```
//!
//! A recompute writes one **part** per partition it recomputed (the view
//! format of `lambda_core::view`, covering that partition only). It then
//! **composes** the view of the whole topic (`lambda_core::compose`): the
//! newest set's parts, its own replacing those they are newer than, summed
//! into one file, and claims the next version by creating
//! `sets/<version>.json` — a manifest of the composed file that lists the
//! part behind each partition. Creation is conditional, so two instances
//! publishing at once never share a version: the loser composes again on
//! top of the winner's set and claims the next one. Versions are therefore
//! dense and in publication order, and every instance serves the same
//! view for the same version.
//!
//! Objects are never changed once written. Old versions are pruned beyond
//! `keep`; a part is deleted once no kept set lists it and it is older
//! than any publication that may still be in flight.

use crate::store::Store;
use lambda_core::compose::{compose, newer, PartRef, Settings};
use lambda_core::view::{verify_and_decode, BatchView, Manifest, ViewError};
use lambda_core::Partition;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::runtime::Handle;

const SETS: &str = "views/sets";
const COMPOSED: &str = "views/composed";
const PARTS: &str = "views/parts";

/// How many versions beyond `keep` an unlisted part survives: a
/// publication that started that many versions ago and has not claimed its
/// version yet loses its parts (and fails loudly, see [`SharedViews::publish`]).
const PART_GRACE_VERSIONS: u64 = 16;

fn store_error(e: crate::store::StoreError) -> ViewError {
    ViewError::Store(e.to_string())
}

fn set_key(version: u64) -> String {
    format!("{SETS}/{version:010}.json")
}

/// The version a `sets/` or `parts/` key names.
fn version_of_set(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

fn version_of_part(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').nth(1)?.parse().ok()
}

fn version_of_composed(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').next()?.parse().ok()
}

/// The views of a shared store, as one batch instance reads and writes
/// them. Blocking: call from blocking threads.
#[derive(Debug)]
pub struct SharedViews {
    store: Store,
    runtime: Handle,
    /// Names this instance's objects, so two writers never write one key.
    writer: String,
    keep: u64,
    /// Parts other instances wrote, as last loaded (by key).
    loaded: Mutex<HashMap<String, Arc<BatchView>>>,
}

impl SharedViews {
    /// `keep` is how many versions stay in the store (at least 1).
    pub fn open(store: Store, runtime: Handle, keep: usize) -> Self {
        Self {
            store,
            runtime,
            writer: format!("{:016x}", crate::random_id()),
            keep: keep.max(1) as u64,
            loaded: Mutex::default(),
        }
    }

    /// The views of a store in directory `dir` (tests, benchmarks).
    pub fn in_directory(
        dir: &std::path::Path,
        runtime: Handle,
        keep: usize,
    ) -> Result<Self, ViewError> {
        let url = Store::file_url(dir).map_err(store_error)?;
        Ok(Self::open(
            Store::open(&url).map_err(store_error)?,
            runtime,
            keep,
        ))
    }

    /// The id naming this instance's objects.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs a store call to completion (blocking).
    pub fn block_on_store<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
    ) -> Result<T, crate::store::StoreError> {
        self.runtime.block_on(f)
    }

    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
    ) -> Result<T, ViewError> {
        self.runtime.block_on(f).map_err(store_error)
    }

    fn sets(&self) -> Result<Vec<u64>, ViewError> {
        let keys = self.block_on(self.store.list(SETS))?;
        Ok(keys.iter().filter_map(|k| version_of_set(k)).collect())
    }

    /// The newest view's manifest, if any view was published.
    pub fn latest(&self) -> Result<Option<Manifest>, ViewError> {
        // A set listed and then pruned by another instance (several newer
        // ones were published meanwhile) is looked for again.
        for _ in 0..3 {
            let Some(&version) = self.sets()?.last() else {
                return Ok(None);
            };
            if let Some(manifest) = self.manifest(version)? {
                return Ok(Some(manifest));
            }
        }
        Err(ViewError::Store(
            "the newest view keeps being pruned while read (is --keep-views 1?)".into(),
        ))
    }

    fn manifest(&self, version: u64) -> Result<Option<Manifest>, ViewError> {
        let key = set_key(version);
        let Some(bytes) = self.block_on(self.store.get(&key))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ViewError::Malformed {
                what: key,
                reason: e.to_string(),
            })
    }

    /// The composed file of a version, `None` if it is not (or no longer)
    /// kept.
    pub fn read(&self, version: u64) -> Result<Option<Vec<u8>>, ViewError> {
        let Some(manifest) = self.manifest(version)? else {
            return Ok(None);
        };
        self.block_on(self.store.get(&manifest.file))
    }

    /// The composed view `manifest` describes, verified against it.
    pub fn load(&self, manifest: &Manifest) -> Result<BatchView, ViewError> {
        let bytes = self
            .block_on(self.store.get(&manifest.file))?
            .ok_or_else(|| missing(&manifest.file))?;
        verify_and_decode(manifest, &bytes)
    }

    /// The newest view, verified.
    pub fn load_latest(&self) -> Result<Option<(Manifest, BatchView)>, ViewError> {
        let Some(manifest) = self.latest()? else {
            return Ok(None);
        };
        let view = self.load(&manifest)?;
        Ok(Some((manifest, view)))
    }

    /// A part, verified against its reference (kept in memory for the
    /// next composition).
    pub fn load_part(&self, part: &PartRef) -> Result<Arc<BatchView>, ViewError> {
        if let Some(view) = self.loaded().get(&part.key) {
            return Ok(Arc::clone(view));
        }
        let bytes = self
            .block_on(self.store.get(&part.key))?
            .ok_or_else(|| missing(&part.key))?;
        let actual = crc32c::crc32c(&bytes);
        if actual != part.checksum {
            return Err(ViewError::Checksum {
                version: part.version,
                expected: part.checksum,
                actual,
            });
        }
        let view = Arc::new(BatchView::decode(&bytes)?);
        self.loaded().insert(part.key.clone(), Arc::clone(&view));
        Ok(view)
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<BatchView>>> {
        crate::sync::LockOrStop::lock_or_stop(&self.loaded, "the loaded view parts")
    }

    /// Writes `parts` (one per partition, each covering its partition
    /// only), then publishes the view that sums the newest part of every
    /// partition, under the next free version. A part that is not newer
    /// than its partition's current one (see [`newer`]) is left out; if
    /// none is newer, nothing is published and the newest manifest is
    /// returned as it is. The first publication may have no parts (nothing
    /// ingested yet): the empty view.
    pub fn publish(
        &self,
        settings: Settings,
        parts: Vec<BatchView>,
    ) -> Result<Manifest, ViewError> {
        let mut mine: BTreeMap<Partition, (PartRef, Arc<BatchView>)> = BTreeMap::new();
        for part in parts {
            let Some((partition, cut)) = part.header.cut.iter().next() else {
                continue;
            };
            let bytes = part.encode();
            let key = format!(
                "{PARTS}/p-{partition}/{cut:020}-{:010}-{}.tsv",
                part.header.version, self.writer
            );
            let reference = PartRef {
                key: key.clone(),
                checksum: crc32c::crc32c(&bytes),
                bytes: bytes.len() as u64,
                cut,
                version: part.header.version,
                last_full_ms: part.header.lineage.last_full_ms,
            };
            self.block_on(self.store.put(&key, bytes))?;
            mine.insert(partition, (reference, Arc::new(part)));
        }
        loop {
            let latest = self.latest()?;
            let version = latest.as_ref().map_or(1, |m| m.version + 1);
            let mut chosen = latest.as_ref().map(|m| m.parts.clone()).unwrap_or_default();
            let mut views: BTreeMap<Partition, Arc<BatchView>> = BTreeMap::new();
            for (&p, (reference, view)) in &mine {
                if newer(reference, chosen.get(&p)) {
                    chosen.insert(p, reference.clone());
                    views.insert(p, Arc::clone(view));
                }
            }
            if let (true, Some(latest)) = (views.is_empty(), &latest) {
                tracing::info!(
                    version = latest.version,
                    "No part newer than the published ones; nothing to publish."
                );
                return Ok(latest.clone());
            }
            let fresh: BTreeSet<Partition> = views.keys().copied().collect();
            for (&p, reference) in &chosen {
                if let std::collections::btree_map::Entry::Vacant(slot) = views.entry(p) {
                    slot.insert(self.load_part(reference)?);
                }
            }
            let all: Vec<&BatchView> = views.values().map(|v| &**v).collect();
            let base = latest.as_ref().map(|m| m.version);
            let mut composed = compose(version, settings, base, &all, &fresh)?;
            if all.is_empty() {
                // The empty view (nothing ingested yet) is a full view of
                // nothing, computed now: the schedule of full recomputes
                // starts from it.
                let now = crate::now_ms();
                composed.header.computed_at_ms = now;
                composed.header.lineage.last_full_ms = now;
            }
            let bytes = composed.encode();
            let file = format!("{COMPOSED}/{version:010}-{}.tsv", self.writer);
            let manifest = Manifest {
                file: file.clone(),
                parts: chosen,
                ..composed.manifest(&bytes)
            };
            // Our own parts may have been pruned if this publication was
            // paused for longer than the grace: a set must never list a
            // part that is gone.
            for (reference, _) in mine.values() {
                if self.block_on(self.store.get(&reference.key))?.is_none() {
                    return Err(missing(&reference.key));
                }
            }
            self.block_on(self.store.put(&file, bytes))?;
            let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
            if self.block_on(self.store.put_new(&set_key(version), json))? {
                self.keep_loaded(&manifest.parts, &views);
                self.prune(version);
                return Ok(manifest);
            }
            tracing::info!(
                version,
                "Another batch instance published this version first; composing on top of it."
            );
            let _ = self.block_on(self.store.delete(&file));
        }
    }

    /// Keeps the parts of the newest composition in memory, and only them:
    /// the next recompute builds on them.
    fn keep_loaded(
        &self,
        parts: &BTreeMap<Partition, PartRef>,
        views: &BTreeMap<Partition, Arc<BatchView>>,
    ) {
        let mut loaded = self.loaded();
        loaded.clear();
        for (p, reference) in parts {
            if let Some(view) = views.get(p) {
                loaded.insert(reference.key.clone(), Arc::clone(view));
            }
        }
    }

    /// Deletes sets and composed files more than `keep` versions old, and
    /// parts no kept set lists (after a grace for publications in flight).
    /// Best effort: a failure is logged and tried again next time.
    fn prune(&self, newest: u64) {
        let Some(oldest_kept) = (newest + 1).checked_sub(self.keep).filter(|&v| v > 1) else {
            return;
        };
        if let Err(error) = self.try_prune(oldest_kept) {
            tracing::warn!(%error, "Cannot prune old batch views; trying again after the next publication.");
        }
    }

    fn try_prune(&self, oldest_kept: u64) -> Result<(), ViewError> {
        let mut listed = std::collections::HashSet::new();
        for version in self.sets()? {
            if version < oldest_kept {
                self.block_on(self.store.delete(&set_key(version)))?;
            } else if let Some(m) = self.manifest(version)? {
                listed.extend(m.parts.into_values().map(|p| p.key));
            }
        }
        for key in self.block_on(self.store.list(COMPOSED))? {
            if version_of_composed(&key).is_some_and(|v| v < oldest_kept) {
                self.block_on(self.store.delete(&key))?;
            }
        }
        let grace = oldest_kept.saturating_sub(PART_GRACE_VERSIONS);
        for key in self.block_on(self.store.list(PARTS))? {
            if !listed.contains(&key) && version_of_part(&key).is_some_and(|v| v < grace) {
                self.block_on(self.store.delete(&key))?;
            }
        }
        Ok(())
    }
}

fn missing(key: &str) -> ViewError {
    ViewError::Malformed {
        what: key.to_owned(),
        reason: "the object is missing from the store".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_core::view::ViewOrigin;
    use lambda_core::BucketSize;

    const SETTINGS: Settings = Settings {
        bucket_size: BucketSize::DEFAULT,
        windows: None,
    };

    /// A part of `partition` at `cut` counting `word` `count` times.
    fn part(partition: Partition, cut: i64, version: u64, word: &str, count: u64) -> BatchView {
        let origin = ViewOrigin::new(
            version,
            [(partition, cut)].into_iter().collect(),
            BucketSize::DEFAULT,
        );
        BatchView::build(origin, vec![(word.into(), count)])
    }

    fn views(dir: &std::path::Path, runtime: &tokio::runtime::Runtime, keep: usize) -> SharedViews {
        SharedViews::in_directory(dir, runtime.handle().clone(), keep).expect("views")
    }

    #[test]
    fn each_partition_keeps_its_newest_part_whoever_wrote_it() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (
            views(dir.path(), &runtime, 10),
            views(dir.path(), &runtime, 10),
        );
        let v1 = a
            .publish(
                SETTINGS,
                vec![part(0, 16, 1, "x", 3), part(1, 16, 1, "x", 5)],
            )
            .expect("publish");
        assert_eq!((v1.version, v1.parts.len()), (1, 2));
        // B took partition 1 over and covers more of it.
        let v2 = b
            .publish(SETTINGS, vec![part(1, 32, 2, "x", 9)])
            .expect("publish");
        assert_eq!(v2.version, 2);
        assert_eq!(v2.header.cut, [(0, 16), (1, 32)].into_iter().collect());
        // A, a zombie that has not noticed, publishes its shorter part of
        // partition 1: not newer, so nothing is published.
        let same = a
            .publish(SETTINGS, vec![part(1, 16, 3, "x", 5)])
            .expect("publish");
        assert_eq!(same.version, 2, "a shorter part publishes nothing");
        let v3 = a
            .publish(SETTINGS, vec![part(0, 48, 3, "x", 4)])
            .expect("publish");
        assert_eq!(v3.header.cut, [(0, 48), (1, 32)].into_iter().collect());
        let (latest, view) = b.load_latest().expect("load").expect("some");
        assert_eq!(latest, v3);
        assert_eq!(view.get("x"), 4 + 9, "one part per partition, summed");
        assert_eq!(
            a.read(2)
                .expect("read")
                .map(|bytes| BatchView::decode(&bytes).expect("decodes").get("x")),
            Some(3 + 9)
        );
    }

    #[test]
    fn writers_publishing_at_once_get_dense_versions_and_lose_no_part() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let rounds = 12;
        std::thread::scope(|scope| {
            for partition in 0..2 {
                let w = views(dir.path(), &runtime, 100);
                scope.spawn(move || {
                    for round in 1..=rounds {
                        let cut = 16 * round as i64;
                        w.publish(SETTINGS, vec![part(partition, cut, round, "x", round)])
                            .expect("publish");
                    }
                });
            }
        });
        let reader = views(dir.path(), &runtime, 100);
        assert_eq!(
            reader.sets().expect("sets"),
            (1..=2 * rounds).collect::<Vec<_>>()
        );
        let (latest, view) = reader.load_latest().expect("load").expect("some");
        assert_eq!(
            latest.header.cut,
            [(0, 16 * rounds as i64), (1, 16 * rounds as i64)]
                .into_iter()
                .collect()
        );
        assert_eq!(view.get("x"), 2 * rounds);
    }

    #[test]
    fn old_versions_and_parts_no_kept_version_lists_are_pruned() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let w = views(dir.path(), &runtime, 2);
        // Partition 1's part is published once and stays listed.
        w.publish(SETTINGS, vec![part(1, 16, 1, "y", 1)])
            .expect("publish");
        let last = 2 + PART_GRACE_VERSIONS + 3;
        for version in 2..=last {
            w.publish(
                SETTINGS,
                vec![part(0, 16 * version as i64, version, "x", version)],
            )
            .expect("publish");
        }
        assert_eq!(w.sets().expect("sets"), vec![last - 1, last]);
        let composed = runtime.block_on(w.store().list(COMPOSED)).expect("list");
        assert_eq!(composed.len(), 2, "{composed:?}");
        let parts = runtime.block_on(w.store().list(PARTS)).expect("list");
        let listed: Vec<String> = w
            .latest()
            .expect("latest")
            .expect("some")
            .parts
            .into_values()
            .map(|p| p.key)
            .collect();
        for key in &listed {
            assert!(parts.contains(key), "listed part {key} kept");
        }
        assert!(
            parts.len() < last as usize,
            "old unlisted parts are deleted: {} left",
            parts.len()
        );
        assert_eq!(w.load_latest().expect("load").expect("some").1.get("y"), 1);
    }
}
