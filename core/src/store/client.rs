//! Reading and writing a store's objects through `object_store`.
//!
//! File stores run their I/O on the calling thread: `object_store`'s local file system only moves
//! blocking calls to threads when a tokio runtime is current (a make call enters WASI's); every
//! call runs with every signal blocked, so any thread started meanwhile blocks them too and a
//! backend's signal handling stays as PostgreSQL expects. S3 stores run on a tokio runtime of the
//! process with one worker thread (started with signals blocked), driven by the calling thread
//! with every signal blocked while it waits; the worker sends upload parts while the caller
//! reads the next one.

use std::future::Future;
use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload};

use super::spec::{Home, Protocol, Secrets, Spec};
use super::{address, StoreError, StoreErrorKind};
use crate::threads;

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
    /// Whether its I/O needs the tokio runtime (network stores).
    networked: bool,
    /// An S3 store's client and location, for presigned URLs.
    signer: Option<(Arc<object_store::aws::AmazonS3>, String)>,
    /// A file store's folder.
    root: Option<std::path::PathBuf>,
}

/// The runtime of networked stores: one worker thread (started with every signal blocked, as
/// its blocking threads), which uploads parts while the calling thread reads the next one.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        threads::with_signals_blocked(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .thread_name("dj-store")
                .max_blocking_threads(2)
                .build()
                .expect("a one-worker tokio runtime")
        })
    })
}

/// Parts of a networked upload in flight at once (each holds its [`PART`] bytes until sent).
const PARTS_IN_FLIGHT: usize = 3;

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

/// The part size of streamed writes: S3 wants parts of 5 MiB or more; a backend holds one (a
/// file store) or up to [`PARTS_IN_FLIGHT`] + 1 (S3) at a time.
pub const PART: usize = 8 << 20;

/// Bytes a file store's object is read by in [`Store::get_into`]: small enough that a chunk is
/// still in the CPU's cache when it is hashed and written (8 MiB chunks made a hash-checked read
/// of 1 GiB a third slower: core/examples/store_speed).
pub const READ_CHUNK: usize = 1 << 20;

/// Appends up to `limit` bytes from the reader to `buf` (without zeroing it first).
fn read_up_to(reader: &mut dyn Read, buf: &mut Vec<u8>, limit: usize) -> std::io::Result<usize> {
    reader.take(limit as u64).read_to_end(buf)
}

fn path(key: &str) -> Result<Path, StoreError> {
    address::check_relative(key)?;
    Path::parse(key).map_err(|e| StoreError::key(key, &e.to_string()))
}

impl Store {
    /// Opens a store; a file store's directory is created if missing (a relative one under
    /// `home`).
    pub fn open(name: &str, spec: &Spec, secrets: &Secrets, home: &Home) -> Result<Store, StoreError> {
        let mut signer = None;
        let mut root_folder = None;
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
                root_folder = Some(std::path::PathBuf::from(&root));
                Arc::new(LocalFileSystem::new_with_prefix(&root).map_err(|e| io("open", &root, e))?)
            }
            Protocol::S3 { endpoint, bucket, location, secure, region } => {
                let url = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
                    endpoint.clone()
                } else {
                    format!("{}://{endpoint}", if *secure { "https" } else { "http" })
                };
                let mut builder = AmazonS3Builder::new()
                    .with_endpoint(&url)
                    .with_allow_http(url.starts_with("http://"))
                    .with_virtual_hosted_style_request(false)
                    .with_bucket_name(bucket)
                    .with_region(region.as_deref().unwrap_or("us-east-1"));
                match (&secrets.access_key, &secrets.secret_key) {
                    (Some(a), Some(s)) => builder = builder.with_access_key_id(a).with_secret_access_key(s),
                    // A public bucket: unsigned requests.
                    _ => builder = builder.with_skip_signature(true),
                }
                let s3 = builder.build().map_err(|e| {
                    StoreError::spec(format!("store {name}: {e}"), "Check the endpoint, bucket and region.")
                })?;
                let location = location.trim_matches('/').to_string();
                let s3 = Arc::new(s3);
                signer = Some((s3.clone(), location.clone()));
                if location.is_empty() {
                    s3
                } else {
                    Arc::new(PrefixStore::new(s3, location.as_str()))
                }
            }
        };
        let networked = matches!(spec.protocol, Protocol::S3 { .. });
        Ok(Store { name: name.to_string(), spec: spec.clone(), inner, networked, signer, root: root_folder })
    }

    /// Runs one I/O future to completion on the calling thread, with every signal blocked: a
    /// file store's I/O goes to the blocking pool of whatever tokio runtime is entered (a make
    /// call enters WASI's), and a thread that pool starts inherits the caller's signal mask.
    fn run<F: Future>(&self, f: F) -> F::Output {
        if self.networked {
            threads::with_signals_blocked(|| runtime().block_on(f))
        } else {
            threads::with_signals_blocked(|| futures::executor::block_on(f))
        }
    }

    /// The object's size and age, or None when it is absent.
    pub fn head(&self, key: &str) -> Result<Option<Meta>, StoreError> {
        let p = path(key)?;
        match self.run(self.inner.head(&p)) {
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
        self.run(self.inner.put(&p, PutPayload::from(content))).map(|_| ()).map_err(|e| io("write", key, e))
    }

    /// Writes an object from `reader` in parts of [`PART`] bytes (a multipart upload; S3 parts
    /// are sent while the next is read), showing each part to `seen` first; returns the bytes written. Readers
    /// see the object only once it is whole; a failed upload leaves nothing at `key`. The reader
    /// runs between parts, outside the store's I/O (signals are not blocked there): a reader
    /// that fails stops the upload.
    pub fn put_from(
        &self,
        key: &str,
        reader: &mut dyn Read,
        seen: &mut dyn FnMut(&bytes::Bytes),
    ) -> Result<u64, StoreError> {
        let p = path(key)?;
        let mut upload = self.run(self.inner.put_multipart(&p)).map_err(|e| io("write", key, e))?;
        let mut total = 0u64;
        // Networked parts are sent by the runtime's worker while the next one is read.
        let mut in_flight = std::collections::VecDeque::new();
        let mut upload_parts = || -> Result<(), StoreError> {
            let mut count = 0usize;
            loop {
                // S3 takes at most 10 000 parts: they grow by 8 MiB every 1 000 (to 80 MiB; 430 GiB in all).
                let want = PART * (1 + count / 1000);
                count += 1;
                let mut part = Vec::with_capacity(want);
                let n = read_up_to(reader, &mut part, want).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Io,
                        format!("could not read the content for {key:?}: {e}"),
                        "",
                    )
                })?;
                // An empty object still needs its one (empty) part.
                if n == 0 && total > 0 {
                    return Ok(());
                }
                let part = bytes::Bytes::from(part);
                seen(&part);
                total += n as u64;
                let sending = upload.put_part(PutPayload::from(part));
                if self.networked {
                    in_flight.push_back(threads::with_signals_blocked(|| runtime().spawn(sending)));
                    while in_flight.len() >= PARTS_IN_FLIGHT {
                        self.sent(in_flight.pop_front().expect("a part"), key)?;
                    }
                } else {
                    self.run(sending).map_err(|e| io("write", key, e))?;
                }
                if n < want {
                    return Ok(());
                }
            }
        };
        let mut outcome = upload_parts();
        while let Some(part) = in_flight.pop_front() {
            if outcome.is_err() {
                // Stopped and waited for, so no part lands after the upload is aborted.
                part.abort();
                let _ = self.run(part);
            } else {
                outcome = self.sent(part, key);
            }
        }
        match outcome {
            Ok(()) => self.run(upload.complete()).map(|_| total).map_err(|e| io("write", key, e)),
            Err(e) => {
                let _ = self.run(upload.abort());
                Err(e)
            }
        }
    }

    /// Waits for a part sent by the runtime.
    fn sent(
        &self,
        part: tokio::task::JoinHandle<object_store::Result<()>>,
        key: &str,
    ) -> Result<(), StoreError> {
        match self.run(part) {
            Ok(sent) => sent.map_err(|e| io("write", key, e)),
            Err(e) => Err(StoreError::new(StoreErrorKind::Io, format!("could not write {key:?}: {e}"), "")),
        }
    }

    /// Reads the whole object in chunks ([`READ_CHUNK`] bytes from a file store), handing each to
    /// `each` (never the whole object at once; `each` runs outside the store's I/O and may stop
    /// the read with an error); returns its size.
    pub fn get_into(
        &self,
        key: &str,
        each: &mut dyn FnMut(&bytes::Bytes) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let p = path(key)?;
        let got = self.run(self.inner.get(&p)).map_err(|e| io("read", key, e))?;
        let mut total = 0u64;
        match got.payload {
            GetResultPayload::File(mut file, _) => loop {
                let mut buf = Vec::with_capacity(READ_CHUNK);
                let n = read_up_to(&mut file, &mut buf, READ_CHUNK).map_err(|e| {
                    StoreError::new(StoreErrorKind::Io, format!("could not read {key:?}: {e}"), "")
                })?;
                if n == 0 {
                    break;
                }
                each(&bytes::Bytes::from(buf))?;
                total += n as u64;
            },
            GetResultPayload::Stream(mut stream) => {
                while let Some(chunk) = self.run(stream.next()) {
                    let chunk = chunk.map_err(|e| io("read", key, e))?;
                    each(&chunk)?;
                    total += chunk.len() as u64;
                }
            }
        }
        Ok(total)
    }

    /// Copies the whole object into `out`: a file store's object by the kernel (no copy through
    /// the process), 64 MiB at a time; others in chunks. `stop` is asked between steps and ends
    /// the copy with its error. Returns the bytes copied.
    pub fn copy_into_file(
        &self,
        key: &str,
        out: &mut std::fs::File,
        stop: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        use std::io::Write;
        let p = path(key)?;
        let got = self.run(self.inner.get(&p)).map_err(|e| io("read", key, e))?;
        let failed = |e: std::io::Error| {
            StoreError::new(StoreErrorKind::Io, format!("could not copy {key:?}: {e}"), "")
        };
        let mut total = 0u64;
        match got.payload {
            GetResultPayload::File(mut file, _) => loop {
                stop()?;
                let n = std::io::copy(&mut (&mut file).take(64 << 20), out).map_err(failed)?;
                if n == 0 {
                    break;
                }
                total += n;
            },
            GetResultPayload::Stream(mut stream) => {
                while let Some(chunk) = self.run(stream.next()) {
                    stop()?;
                    let chunk = chunk.map_err(|e| io("read", key, e))?;
                    out.write_all(&chunk).map_err(failed)?;
                    total += chunk.len() as u64;
                }
            }
        }
        Ok(total)
    }

    /// The whole object, refused when it is larger than `max`.
    pub fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let p = path(key)?;
        self.run(async {
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
        self.run(self.inner.get_range(&p, range)).map(|b| b.to_vec()).map_err(|e| io("read", key, e))
    }

    /// Removes the object; an absent object is not an error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let p = path(key)?;
        match self.run(self.inner.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io("delete", key, e)),
        }
    }

    /// Moves an object to another key (a copy and a delete where the service cannot rename).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (a, b) = (path(from)?, path(to)?);
        self.run(self.inner.rename(&a, &b)).map_err(|e| io("move", from, e))
    }

    /// Removes a file store's folder `prefix` if it is empty (object stores have no folders).
    pub fn remove_empty_folder(&self, prefix: &str) -> Result<(), StoreError> {
        path(prefix)?;
        if let Some(root) = &self.root {
            let _ = std::fs::remove_dir(root.join(prefix));
        }
        Ok(())
    }

    /// A URL that lets anyone holding it GET the object until it expires; None for stores
    /// without URLs (file stores).
    pub fn presigned_url(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        use object_store::signer::{Method, Signer};
        let Some((s3, location)) = &self.signer else { return Ok(None) };
        path(key)?;
        let full = if location.is_empty() { key.to_string() } else { format!("{location}/{key}") };
        let p = Path::parse(&full).map_err(|e| StoreError::key(key, &e.to_string()))?;
        self.run(s3.signed_url(Method::GET, &p, expires))
            .map(|u| Some(u.to_string()))
            .map_err(|e| io("sign", key, e))
    }

    /// Whether any object is under `prefix` (a folder, to an object store): stops at the first.
    pub fn any_under(&self, prefix: &str) -> Result<bool, StoreError> {
        let p = path(prefix.trim_end_matches('/'))?;
        self.run(async {
            match self.inner.list(Some(&p)).next().await {
                None | Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
                Some(Ok(_)) => Ok(true),
                Some(Err(e)) => Err(io("list", prefix, e)),
            }
        })
    }

    /// Every object under `prefix` (a key prefix ending at a `/`), in no particular order.
    pub fn list(
        &self,
        prefix: &str,
        mut each: impl FnMut(Meta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let p = path(prefix.trim_end_matches('/'))?;
        self.run(async {
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
        // Streamed: three parts, the last one short; read back in chunks.
        let big: Vec<u8> = (0..2 * PART + 123).map(|i| (i % 251) as u8).collect();
        let mut hasher = address::Hasher::default();
        let n = store.put_from("_hash/lab/big", &mut &big[..], &mut |c| hasher.update(c)).unwrap();
        assert_eq!(n, big.len() as u64);
        assert_eq!(hasher.finish(), address::content_hash(&big));
        let mut back = Vec::new();
        let mut chunks = 0;
        store
            .get_into("_hash/lab/big", &mut |c| {
                chunks += 1;
                back.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
        assert!(back == big && chunks >= 3);
        assert_eq!(store.put_from("_hash/lab/empty", &mut &b""[..], &mut |_| {}).unwrap(), 0);
        assert_eq!(store.head("_hash/lab/empty").unwrap().unwrap().size, 0);
        assert!(dir.join("_hash/lab").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
