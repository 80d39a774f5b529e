//! Where batch views live: in the shared store, where batch instances
//! publish them ([`shared`]), and in a serving layer's local copy, a
//! directory of immutable, versioned view files and the manifest that
//! points at the newest ([`ViewStore`]; the format is `lambda_core::view`).
//!
//! ```text
//! <data-dir>/views/view-<version, 10 digits>.tsv
//! <data-dir>/views/MANIFEST.json
//! ```
//!
//! Files are written to a temporary name, fsynced and renamed, and the
//! manifest is replaced the same way after the view is durable, so a crash
//! leaves either the old or the new view.

pub mod shared;
pub mod source;

pub use shared::SharedViews;
pub use source::ViewSource;

use lambda_core::view::{verify_and_decode, BatchView, Manifest, ViewError};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const MANIFEST: &str = "MANIFEST.json";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ViewError + '_ {
    move |source| ViewError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The directory of views and their manifest.
#[derive(Debug)]
pub struct ViewStore {
    dir: PathBuf,
    keep: usize,
}

impl ViewStore {
    /// `keep` is how many versions stay on disk (at least 1).
    pub fn open(data_dir: &Path, keep: usize) -> Result<Self, ViewError> {
        let dir = data_dir.join("views");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Leftovers of a crash mid-write are never referenced: remove them.
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            keep: keep.max(1),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest view's manifest, if any view was written.
    pub fn latest(&self) -> Result<Option<Manifest>, ViewError> {
        let path = self.dir.join(MANIFEST);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ViewError::Malformed {
                        what: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The bytes of a stored version, `None` if it is not (or no longer) kept.
    pub fn read(&self, version: u64) -> Result<Option<Vec<u8>>, ViewError> {
        let path = self.dir.join(Manifest::file_name(version));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Writes `view` durably, points the manifest at it, and prunes old
    /// versions beyond `keep`.
    pub fn publish(&self, view: &BatchView) -> Result<Manifest, ViewError> {
        let bytes = view.encode();
        let manifest = view.manifest(&bytes);
        self.store_verified(&manifest, &bytes)?;
        Ok(manifest)
    }

    /// Stores a view's file bytes as they are (already verified against
    /// `manifest`, e.g. pulled by a serving layer), then the manifest.
    pub fn store_verified(&self, manifest: &Manifest, bytes: &[u8]) -> Result<(), ViewError> {
        let manifest = Manifest {
            file: Manifest::file_name(manifest.version),
            ..manifest.clone()
        };
        self.write_atomically(&manifest.file, bytes)?;
        let manifest_bytes =
            serde_json::to_vec_pretty(&manifest).expect("a manifest always serialises");
        self.write_atomically(MANIFEST, &manifest_bytes)?;
        self.prune(manifest.version);
        Ok(())
    }

    /// The newest stored view, verified against its manifest.
    pub fn load_latest(&self) -> Result<Option<(Manifest, BatchView)>, ViewError> {
        let Some(manifest) = self.latest()? else {
            return Ok(None);
        };
        let view = self.load(&manifest)?;
        Ok(Some((manifest, view)))
    }

    /// The view `manifest` describes, verified against it.
    pub fn load(&self, manifest: &Manifest) -> Result<BatchView, ViewError> {
        let bytes = self
            .read(manifest.version)?
            .ok_or_else(|| ViewError::Malformed {
                what: self.dir.join(&manifest.file).display().to_string(),
                reason: "the manifest points at a missing file".into(),
            })?;
        verify_and_decode(manifest, &bytes)
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), ViewError> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let target = self.dir.join(name);
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &target).map_err(io_err(&target))?;
        // The rename is durable only once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    fn prune(&self, newest: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(v) = name
                .to_str()
                .and_then(|n| n.strip_prefix("view-"))
                .and_then(|n| n.strip_suffix(".tsv"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if v + (self.keep as u64) <= newest {
                if let Err(error) = fs::remove_file(entry.path()) {
                    tracing::warn!(version = v, %error, "Cannot remove an old batch view.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_core::view::ViewOrigin;
    use lambda_core::BucketSize;

    fn view(version: u64, words: &[(&str, u64)]) -> BatchView {
        let words = words.iter().map(|(w, c)| ((*w).into(), *c)).collect();
        let cut = [(0, 1024)].into_iter().collect();
        BatchView::build(ViewOrigin::new(version, cut, BucketSize::DEFAULT), words)
    }

    #[test]
    fn publish_keeps_n_versions_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ViewStore::open(dir.path(), 2).expect("store");
        assert_eq!(store.latest().expect("read"), None);
        for version in 1..=3 {
            store
                .publish(&view(version, &[("a", version)]))
                .expect("publish");
        }
        let latest = store.latest().expect("read").expect("some");
        assert_eq!(latest.version, 3);
        assert!(store.read(1).expect("read").is_none(), "pruned");
        let bytes = store.read(2).expect("read").expect("kept");
        assert_eq!(BatchView::decode(&bytes).expect("decodes").get("a"), 2);

        let bytes = store.read(3).expect("read").expect("kept");
        assert_eq!(
            verify_and_decode(&latest, &bytes)
                .expect("verified")
                .get("a"),
            3
        );
        let mut tampered = bytes.clone();
        let last = tampered.len() - 2;
        tampered[last] = b'9';
        assert!(matches!(
            verify_and_decode(&latest, &tampered),
            Err(ViewError::Checksum { .. })
        ));
    }
}
