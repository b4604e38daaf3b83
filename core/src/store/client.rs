//! Reading and writing a store's objects through `object_store`.
//!
//! File stores run their I/O on the calling thread: `object_store`'s local file system only moves
//! blocking calls to threads when a tokio runtime is current, and none is here, so a backend
//! starts no thread for them (and its signal handling stays as PostgreSQL expects).

use std::ops::Range;
use std::sync::Arc;

use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::spec::{Home, Protocol, Secrets, Spec};
use super::{address, StoreError, StoreErrorKind};

/// An object's size and age.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub key: String,
    pub size: u64,
    /// Last modification, microseconds since the Unix epoch.
    pub modified_us: i64,
}

/// An open store.
pub struct Store {
    pub name: String,
    pub spec: Spec,
    inner: Arc<dyn ObjectStore>,
}

fn io(what: &str, key: &str, e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::new(
            StoreErrorKind::NotFound,
            format!("object {key:?} is not in the store"),
            "The object was removed from the store, or the reference names the wrong store.",
        ),
        other => StoreError::new(
            StoreErrorKind::Io,
            format!("could not {what} {key:?}: {other}"),
            "Check that the store is reachable and the server may read and write it.",
        ),
    }
}

fn path(key: &str) -> Result<Path, StoreError> {
    address::check_relative(key)?;
    Path::parse(key).map_err(|e| StoreError::key(key, &e.to_string()))
}

impl Store {
    /// Opens a store; a file store's directory is created if missing (a relative one under
    /// `home`).
    pub fn open(name: &str, spec: &Spec, _secrets: &Secrets, home: &Home) -> Result<Store, StoreError> {
        let inner: Arc<dyn ObjectStore> = match &spec.protocol {
            Protocol::File { location } => {
                let root = spec.file_root(location, home);
                std::fs::create_dir_all(&root).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Io,
                        format!("store {name}: cannot create {root}: {e}"),
                        "The server's OS user must be able to create and write the store's location.",
                    )
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(&root).map_err(|e| io("open", &root, e))?)
            }
            Protocol::S3 { .. } => {
                return Err(StoreError::new(
                    StoreErrorKind::Unsupported,
                    format!("store {name} is an s3 store, which this build cannot open yet"),
                    "Use a file store.",
                ));
            }
        };
        Ok(Store { name: name.to_string(), spec: spec.clone(), inner })
    }

    /// The object's size and age, or None when it is absent.
    pub fn head(&self, key: &str) -> Result<Option<Meta>, StoreError> {
        let p = path(key)?;
        match futures::executor::block_on(self.inner.head(&p)) {
            Ok(m) => Ok(Some(Meta {
                key: key.to_string(),
                size: m.size,
                modified_us: m.last_modified.timestamp_micros(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io("inspect", key, e)),
        }
    }

    /// Writes the whole object (atomically: readers see the old object or the new one).
    pub fn put(&self, key: &str, content: Vec<u8>) -> Result<(), StoreError> {
        let p = path(key)?;
        futures::executor::block_on(self.inner.put(&p, PutPayload::from(content)))
            .map(|_| ())
            .map_err(|e| io("write", key, e))
    }

    /// The whole object, refused when it is larger than `max`.
    pub fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let p = path(key)?;
        futures::executor::block_on(async {
            let got = self.inner.get(&p).await.map_err(|e| io("read", key, e))?;
            if got.meta.size > max {
                return Err(StoreError::new(
                    StoreErrorKind::Io,
                    format!(
                        "object {key:?} is {} bytes, more than the {max} a value may hold",
                        got.meta.size
                    ),
                    "Read it in ranges with dj.object_read(ref, offset, length).",
                ));
            }
            got.bytes().await.map(|b| b.to_vec()).map_err(|e| io("read", key, e))
        })
    }

    /// Bytes `range` of the object (cut at its end).
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let p = path(key)?;
        futures::executor::block_on(self.inner.get_range(&p, range))
            .map(|b| b.to_vec())
            .map_err(|e| io("read", key, e))
    }

    /// Removes the object; an absent object is not an error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let p = path(key)?;
        match futures::executor::block_on(self.inner.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io("delete", key, e)),
        }
    }

    /// Moves an object to another key (a copy and a delete where the service cannot rename).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (a, b) = (path(from)?, path(to)?);
        futures::executor::block_on(self.inner.rename(&a, &b)).map_err(|e| io("move", from, e))
    }

    /// Every object under `prefix` (a key prefix ending at a `/`), in no particular order.
    pub fn list(
        &self,
        prefix: &str,
        mut each: impl FnMut(Meta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let p = path(prefix.trim_end_matches('/'))?;
        futures::executor::block_on(async {
            let mut stream = self.inner.list(Some(&p));
            while let Some(item) = stream.next().await {
                let m = match item {
                    Ok(m) => m,
                    // A prefix that does not exist (yet) holds nothing.
                    Err(object_store::Error::NotFound { .. }) => return Ok(()),
                    Err(e) => return Err(io("list", prefix, e)),
                };
                each(Meta {
                    key: m.location.to_string(),
                    size: m.size,
                    modified_us: m.last_modified.timestamp_micros(),
                })?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_store_round_trip() {
        let dir = std::env::temp_dir().join(format!("dj-store-test-{}", std::process::id()));
        let (spec, secrets) =
            Spec::parse(&json!({"protocol": "file", "location": dir.to_str().unwrap()})).unwrap();
        let home = Home { data_directory: "/nonexistent".into(), database: "d".into() };
        let store = Store::open("t", &spec, &secrets, &home).unwrap();
        assert_eq!(store.head("_hash/lab/x").unwrap(), None);
        store.put("_hash/lab/x", b"hello".to_vec()).unwrap();
        let meta = store.head("_hash/lab/x").unwrap().unwrap();
        assert_eq!(meta.size, 5);
        assert_eq!(store.get("_hash/lab/x", 100).unwrap(), b"hello");
        assert!(store.get("_hash/lab/x", 3).is_err());
        assert_eq!(store.get_range("_hash/lab/x", 1..3).unwrap(), b"el");
        let mut seen = vec![];
        store
            .list("_hash/lab/", |m| {
                seen.push(m.key);
                Ok(())
            })
            .unwrap();
        store.list("_nothing/", |_| panic!("nothing listed")).unwrap();
        store.rename("_hash/lab/x", "_dj_trash/1/_hash/lab/x").unwrap();
        store.rename("_dj_trash/1/_hash/lab/x", "_hash/lab/x").unwrap();
        assert_eq!(seen, vec!["_hash/lab/x".to_string()]);
        assert_eq!(store.get("_hash/lab/y", 10).unwrap_err().kind, StoreErrorKind::NotFound);
        assert!(store.put("../escape", vec![]).is_err());
        store.delete("_hash/lab/x").unwrap();
        store.delete("_hash/lab/x").unwrap();
        assert_eq!(store.head("_hash/lab/x").unwrap(), None);
        assert!(dir.join("_hash/lab").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
