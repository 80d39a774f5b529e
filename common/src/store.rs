//! The shared store (`--store-url`): where the state that instances of a
//! layer share lives — the master dataset's sealed chunks — on any
//! `object_store` backend:
//!
//! - `file:///path`: a directory (one box, or a shared filesystem);
//! - `s3://bucket/prefix`: S3 or any S3-compatible store, configured by the
//!   usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_REGION`, `AWS_ENDPOINT_URL` for a store that is not AWS,
//!   `AWS_ALLOW_HTTP=true` for one without TLS).
//!
//! Every object is written once and never changed: [`Store::put_new`] writes
//! only where nothing is yet (a conditional put), so two writers of one key —
//! a partition's new owner and a zombie that has not noticed it lost it —
//! cannot overwrite each other; what they write for one key is the same
//! anyway (see `lambda_core::chunk`'s users).

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("store {url}: cannot {op} `{key}`: {source}")]
    Object {
        url: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
}

/// A store of immutable objects under a URL's prefix.
#[derive(Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens the store at `url` (`file:///…` or `s3://bucket/prefix`); a
    /// `file://` directory is created if missing.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let bad = |reason: String| StoreError::Url {
            url: url.to_owned(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (objects, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute file path".to_owned()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
                (Arc::new(fs), ObjectPath::default())
            }
            "s3" => {
                let s3 = AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                let prefix = ObjectPath::parse(parsed.path().trim_matches('/'))
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(s3), prefix)
            }
            other => {
                return Err(bad(format!(
                    "scheme `{other}` is not supported (file:// or s3://)"
                )))
            }
        };
        Ok(Store {
            objects,
            prefix,
            url: url.to_owned(),
        })
    }

    /// The `file://` URL of a local directory (absolute or not; any
    /// character escaped as a URL needs).
    pub fn file_url(dir: &std::path::Path) -> Result<String, StoreError> {
        let bad = |reason: String| StoreError::Url {
            url: dir.display().to_string(),
            reason,
        };
        let absolute = std::path::absolute(dir).map_err(|e| bad(e.to_string()))?;
        url::Url::from_directory_path(&absolute)
            .map(String::from)
            .map_err(|()| bad("not a directory path".to_owned()))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> ObjectPath {
        key.split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    fn err(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> StoreError {
        let (url, key) = (self.url.clone(), key.to_owned());
        move |source| StoreError::Object {
            url,
            op,
            key,
            source: Box::new(source),
        }
    }

    /// Writes `bytes` at `key` unless an object is there already; true if
    /// this call wrote it.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        let payload = PutPayload::from(bytes);
        match self
            .objects
            .put_opts(&self.path(key), payload, PutMode::Create.into())
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err("write", key)(e)),
        }
    }

    /// Writes `bytes` at `key`, replacing what is there.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.objects
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(self.err("write", key))
    }

    /// Deletes the object at `key`; one that is not there is no error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.objects.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key)(e)),
        }
    }

    /// The object at `key`, if there is one.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.objects.get(&self.path(key)).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(self.err("read", key))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", key)(e)),
        }
    }

    /// The keys under `dir` (relative to the store, `/`-separated), sorted.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        use futures_util::TryStreamExt;
        let under = self.path(dir);
        let objects: Vec<_> = self
            .objects
            .list(Some(&under))
            .try_collect()
            .await
            .map_err(self.err("list", dir))?;
        let skip = self.prefix.parts().count();
        let mut keys: Vec<String> = objects
            .into_iter()
            .map(|meta| {
                meta.location
                    .parts()
                    .skip(skip)
                    .map(|part| part.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_store_keeps_objects_once_under_an_escaped_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Store::file_url(&dir.path().join("a dir").join("store")).expect("url");
        assert!(
            url.starts_with("file:///") && url.contains("a%20dir"),
            "{url}"
        );
        let store = Store::open(&url).expect("open");
        assert!(store
            .put_new("master/p-0/x.chunk", b"one".to_vec())
            .await
            .expect("put"));
        assert!(!store
            .put_new("master/p-0/x.chunk", b"two".to_vec())
            .await
            .expect("put"));
        assert_eq!(
            store.get("master/p-0/x.chunk").await.expect("get"),
            Some(b"one".to_vec())
        );
        assert_eq!(store.get("master/p-1/y.chunk").await.expect("get"), None);
        assert_eq!(
            store.list("master").await.expect("list"),
            ["master/p-0/x.chunk"]
        );
        assert!(dir.path().join("a dir/store/master/p-0/x.chunk").is_file());
        let err = Store::open("ftp://example.invalid/x").expect_err("unsupported");
        assert!(err.to_string().contains("file:// or s3://"), "{err}");
    }
}
