//! Where objects live inside a store, as datajoint-python 2.3.5 lays them out, and the one check
//! every key passes: it is relative and stays inside the store.

use md5::{Digest, Md5};
use serde_json::{json, Value as Json};

use super::spec::Spec;
use super::StoreError;

/// datajoint-python's content hash: MD5, base32, lowercase, no padding (26 characters).
pub fn content_hash(data: &[u8]) -> String {
    let digest = Md5::digest(data);
    base32_lower(&digest)
}

/// An incremental content hash, for content that arrives in chunks.
#[derive(Default, Clone)]
pub struct Hasher(Md5);

impl Hasher {
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }
    pub fn finish(self) -> String {
        base32_lower(&self.0.finalize())
    }
}

/// A content hash computed on a thread of its own (every signal blocked), so hashing overlaps
/// the reads and writes of a streamed transfer: chunks are handed over without copying.
pub struct BackgroundHasher {
    chunks: Option<std::sync::mpsc::SyncSender<bytes::Bytes>>,
    thread: Option<std::thread::JoinHandle<String>>,
    /// Used when the thread could not be started.
    inline: Option<Hasher>,
}

impl BackgroundHasher {
    pub fn start() -> BackgroundHasher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(2);
        match crate::threads::spawn_signal_free("dj-hash", move || {
            let mut h = Hasher::default();
            for chunk in rx {
                h.update(&chunk);
            }
            h.finish()
        }) {
            Ok(thread) => BackgroundHasher { chunks: Some(tx), thread: Some(thread), inline: None },
            Err(_) => BackgroundHasher { chunks: None, thread: None, inline: Some(Hasher::default()) },
        }
    }

    pub fn update(&mut self, chunk: &bytes::Bytes) {
        if let Some(h) = &mut self.inline {
            h.update(chunk);
        } else if let Some(tx) = &self.chunks {
            // The thread only ends when the sender is dropped.
            let _ = tx.send(chunk.clone());
        }
    }

    pub fn finish(mut self) -> String {
        if let Some(h) = self.inline.take() {
            return h.finish();
        }
        self.chunks = None;
        self.thread.take().expect("a hashing thread").join().expect("the hashing thread does not panic")
    }
}

impl Drop for BackgroundHasher {
    fn drop(&mut self) {
        // Abandoned (an error): the thread ends once the channel closes; it is not waited for.
        self.chunks = None;
    }
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// True for a 26-character lowercase base32 hash.
pub fn is_hash(h: &str) -> bool {
    h.len() == 26 && h.bytes().all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
}

/// `{hash_prefix}/{schema}/[{folds}/]{hash}` (`build_hash_path`).
pub fn hash_path(spec: &Spec, schema: &str, hash: &str) -> Result<String, StoreError> {
    check_segment(schema)?;
    let prefix = spec.hash_prefix.trim_matches('/');
    let mut path = format!("{prefix}/{schema}/");
    if let Some(folds) = &spec.subfolding {
        let mut at = 0;
        for &f in folds {
            path.push_str(&hash[at..at + f]);
            path.push('/');
            at += f;
        }
    }
    path.push_str(hash);
    Ok(path)
}

/// A key relative to the store's root that cannot leave it: no leading `/`, no empty, `.` or `..`
/// segment, no backslash, no control character, at most 1 024 bytes.
pub fn check_relative(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > 1024 {
        return Err(StoreError::key(key, "a key is 1 to 1 024 bytes long"));
    }
    if key.starts_with('/') {
        return Err(StoreError::key(key, "a key is relative to the store's root, not absolute"));
    }
    key.split('/').try_for_each(check_segment)
}

/// Where garbage collection keeps quarantined objects (and streamed uploads wait), relative to a
/// store's root: a section no reference may name and no prefix may be.
pub const TRASH: &str = "_dj_trash";

/// A `<filepath@store>` reference's path: inside the store, outside the sections DataJoint
/// manages (`hash_prefix`, `schema_prefix`), and under `filepath_prefix` when the store sets one
/// (datajoint-python's rules).
pub fn check_filepath(spec: &Spec, path: &str) -> Result<(), StoreError> {
    check_relative(path)?;
    let trash = TRASH.to_string();
    for (what, prefix) in
        [("hash_prefix", &spec.hash_prefix), ("schema_prefix", &spec.schema_prefix), ("quarantine", &trash)]
    {
        let section = format!("{}/", prefix.trim_matches('/'));
        if section != "/" && path.starts_with(&section) {
            return Err(StoreError::new(
                super::StoreErrorKind::Key,
                format!("{path:?} is in the section {section} ({what}) DataJoint manages"),
                "A <filepath@store> references a file placed in the store by other means, outside DataJoint's sections.",
            ));
        }
    }
    if let Some(prefix) = &spec.filepath_prefix {
        let section = format!("{}/", prefix.trim_matches('/'));
        if section != "/" && !path.starts_with(&section) {
            return Err(StoreError::new(
                super::StoreErrorKind::Key,
                format!("{path:?} is not under the store's filepath_prefix {section}"),
                "The store keeps referenced files under its filepath_prefix.",
            ));
        }
    }
    Ok(())
}

/// One segment of a key (a file name, a schema name, a PK value).
pub fn check_segment(segment: &str) -> Result<(), StoreError> {
    segment_problem(segment).map_or(Ok(()), |why| Err(StoreError::key(segment, &why)))
}

fn segment_problem(segment: &str) -> Option<String> {
    if segment.is_empty() || segment == "." || segment == ".." {
        return Some("empty, \".\" and \"..\" segments would leave the store's layout".into());
    }
    segment
        .chars()
        .find(|c| c.is_control() || *c == '\\' || *c == '/')
        .map(|c| format!("the character {c:?} is not allowed in a key"))
}

/// `<attach>`'s content: the file name, a NUL, the bytes.
pub fn attachment(filename: &str, content: &[u8]) -> Result<Vec<u8>, StoreError> {
    if let Some(why) = segment_problem(filename) {
        let shown: String = filename.chars().take(80).collect();
        return Err(StoreError::new(
            super::StoreErrorKind::Key,
            format!("{shown:?} is not a file name: {why}"),
            "An attachment keeps the file's name only, without folders.",
        ));
    }
    let mut out = Vec::with_capacity(filename.len() + 1 + content.len());
    out.extend_from_slice(filename.as_bytes());
    out.push(0);
    out.extend_from_slice(content);
    Ok(out)
}

/// An attachment's file name and bytes.
pub fn split_attachment(stored: &[u8]) -> Result<(String, &[u8]), StoreError> {
    let nul = stored
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| StoreError::reference("the attachment has no file name"))?;
    let name = std::str::from_utf8(&stored[..nul])
        .map_err(|_| StoreError::reference("the attachment's file name is not UTF-8"))?;
    Ok((name.to_string(), &stored[nul + 1..]))
}

/// What a hash-addressed column holds: `{hash, path, schema, store, size}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HashRef {
    pub hash: String,
    pub path: String,
    pub schema: String,
    pub store: Option<String>,
    pub size: u64,
}

impl HashRef {
    pub fn to_json(&self) -> Json {
        json!({"hash": self.hash, "path": self.path, "schema": self.schema, "store": self.store, "size": self.size})
    }
}

/// Any object reference a column holds: at least a path and a store; a hash when hash-addressed.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRef {
    pub path: String,
    pub store: Option<String>,
    pub hash: Option<String>,
    pub size: Option<u64>,
}

impl ObjectRef {
    /// Reads a reference, refusing a path that would leave its store.
    pub fn parse(j: &Json) -> Result<ObjectRef, StoreError> {
        let m = j.as_object().ok_or_else(|| {
            StoreError::reference("an object reference is a JSON object with path and store")
        })?;
        let path = m
            .get("path")
            .and_then(Json::as_str)
            .ok_or_else(|| StoreError::reference("the reference has no path"))?;
        check_relative(path)?;
        let store = match m.get("store") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(StoreError::reference("the reference's store is not a string")),
        };
        let hash = match m.get("hash") {
            None | Some(Json::Null) => None,
            Some(Json::String(h)) if is_hash(h) => Some(h.clone()),
            Some(_) => {
                return Err(StoreError::reference("the reference's hash is not a DataJoint content hash"))
            }
        };
        Ok(ObjectRef { path: path.to_string(), store, hash, size: m.get("size").and_then(Json::as_u64) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_hash_equals_the_content_hash() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut h = BackgroundHasher::start();
        for chunk in data.chunks(1 << 20) {
            h.update(&bytes::Bytes::copy_from_slice(chunk));
        }
        assert_eq!(h.finish(), content_hash(&data));
        drop(BackgroundHasher::start());
    }

    #[test]
    fn filepaths_stay_outside_managed_sections() {
        let spec =
            Spec::parse(&json!({"protocol": "file", "location": "/x", "filepath_prefix": "raw"})).unwrap().0;
        assert!(check_filepath(&spec, "raw/session1/movie.avi").is_ok());
        for bad in [
            "_hash/lab/x",
            "_schema/lab/t/f",
            "other/file",
            "raw/../_hash/x",
            "/raw/x",
            "raw",
            "_dj_trash/1/x",
        ] {
            assert!(check_filepath(&spec, bad).is_err(), "{bad}");
        }
        let open = Spec::parse(&json!({"protocol": "file", "location": "/x"})).unwrap().0;
        assert!(check_filepath(&open, "anything/here.dat").is_ok());
        assert!(check_filepath(&open, "_hash/lab/x").is_err());
        assert!(check_filepath(&open, "_dj_trash/1/raw/x").is_err());
    }

    #[test]
    fn hashes_and_paths_match_datajoint_python() {
        // python: datajoint.hash_registry.compute_hash(b"hello") and build_hash_path(...)
        assert_eq!(content_hash(b"hello"), "lvauakv4jmvhnolrtwiraf6fsi");
        assert_eq!(content_hash(b""), "2qoyzwmpaczaj2mabgmoz6ccpy");
        let mut h = Hasher::default();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), content_hash(b"hello"));
        let (flat, _) = Spec::parse(&json!({"protocol": "file", "location": "/x"})).unwrap();
        assert_eq!(
            hash_path(&flat, "lab", "lvauakv4jmvhnolrtwiraf6fsi").unwrap(),
            "_hash/lab/lvauakv4jmvhnolrtwiraf6fsi"
        );
        let (folded, _) = Spec::parse(
            &json!({"protocol": "file", "location": "/x", "subfolding": [2, 3], "hash_prefix": "h/"}),
        )
        .unwrap();
        assert_eq!(
            hash_path(&folded, "lab", "lvauakv4jmvhnolrtwiraf6fsi").unwrap(),
            "h/lab/lv/aua/lvauakv4jmvhnolrtwiraf6fsi"
        );
        assert!(is_hash("lvauakv4jmvhnolrtwiraf6fsi") && !is_hash("lvauakv4jmvhnolrtwiraf6fs1"));
    }

    #[test]
    fn keys_cannot_leave_the_store() {
        for bad in
            ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\\..\\b", "a\u{0}b", "a\nb", "a/"]
        {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative(&"a/".repeat(600)).is_err());
        for good in
            ["_hash/lab/xx", "_schema/lab/__t/id=1/arr_CUUdQoJF.npy", "raw/2024-01-01 session.dat", "a..b/c"]
        {
            assert!(check_relative(good).is_ok(), "{good:?}");
        }
        assert!(attachment("../x", b"").is_err() && attachment("a/b", b"").is_err());
        let stored = attachment("notes.txt", b"hi").unwrap();
        assert_eq!(stored, b"notes.txt\0hi");
        assert_eq!(split_attachment(&stored).unwrap(), ("notes.txt".to_string(), &b"hi"[..]));
    }

    #[test]
    fn references_are_checked() {
        let ok = ObjectRef::parse(&json!({"hash": "lvauakv4jmvhnolrtwiraf6fsi", "path": "_hash/lab/lvauakv4jmvhnolrtwiraf6fsi", "schema": "lab", "store": "main", "size": 5})).unwrap();
        assert_eq!(ok.store.as_deref(), Some("main"));
        assert_eq!(ok.size, Some(5));
        assert!(ObjectRef::parse(&json!({"path": "../../etc/passwd", "store": "main"})).is_err());
        assert!(ObjectRef::parse(&json!({"path": "/etc/passwd"})).is_err());
        assert!(ObjectRef::parse(&json!({"path": "a", "hash": "nope"})).is_err());
        assert!(ObjectRef::parse(&json!([1])).is_err());
    }
}
