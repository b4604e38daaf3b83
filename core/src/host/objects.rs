//! Objects as a make function reaches them: the rules, whatever store and database are behind.
//!
//! A guest reads only objects whose references were in the store attributes of table rows it
//! fetched this call (the target's ancestors, restricted by its key, as the role that asked) or
//! that it uploaded itself: a reference it makes up (or computes in a relation expression) is
//! refused, so a make cannot read around its scope by naming a path.
//! Reads are ranges of at most [`MAX_READ`] bytes, each charged to the guest's memory. Uploads go
//! to the target and its parts only, for rows of the current key; their chunks are kept in
//! memory up to [`SPOOL_MEMORY`], then in a spool file the backend names, so a large object never
//! sits whole in the host's memory either; the backend stores the whole upload on `finish`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::error::{HostError, Kind};
use super::{Backend, MakeHost};
use crate::dependencies::Table;
use crate::make::{Field, ObjectInfo, Row, Value};
use crate::store::address::{check_relative, ObjectRef};
use crate::store::schema_path::KeyValue;

/// Bytes a guest may read in one call.
pub const MAX_READ: u32 = 16 << 20;

/// Bytes of uploads kept in memory (all of a call's together) before the rest goes to spool
/// files.
pub const SPOOL_MEMORY: usize = 8 << 20;

/// Uploads a call may have open at once.
pub const MAX_UPLOADS: usize = 64;

/// Manifests of folder objects larger than this are refused (a manifest lists file names).
const MAX_MANIFEST: u64 = 16 << 20;

/// A store (None: the reference names none, the default) and a key in it.
type Located = (Option<String>, String);

/// What one make call may read, and its uploads in progress.
#[derive(Default)]
pub struct Objects {
    readable: HashSet<Located>,
    sizes: HashMap<Located, Option<u64>>,
    uploads: HashMap<u32, Upload>,
    next: u32,
    /// Bytes of uploads held in memory, and written to spool files.
    in_memory: usize,
    spooled: u64,
}

/// An object a guest is writing.
pub struct Upload {
    pub table: Table,
    pub attribute: String,
    /// The row's primary key: the guest's values, the current key's where the guest gave none.
    pub key: Row,
    pub filename: Option<String>,
    spool: Spool,
}

/// What a finished upload holds: its bytes, or the spool file they went to (removed when this
/// is dropped).
pub enum Content {
    Bytes(Vec<u8>),
    File(SpoolFile),
}

/// A spool file, removed when dropped.
pub struct SpoolFile(PathBuf);

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Spool {
    Memory(Vec<u8>),
    /// Opened for each chunk and closed after, so that open uploads hold no file descriptor (the
    /// backend's are PostgreSQL's to count).
    File(SpoolFile),
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> HostError {
    HostError::new(
        Kind::Io,
        format!("could not {what} the spool file {} of an upload: {e}", path.display()),
        "The make function's object is spooled in the server's temporary directory: check its space.",
    )
}

fn not_fetched(path: &str) -> HostError {
    HostError::new(
        Kind::Privilege,
        format!("the make function did not fetch a reference to object {path}"),
        "A make function reads the objects of references in rows it fetched this call (from the target's \
         ancestors) and objects it uploaded; pass the reference as fetched.",
    )
}

fn absent(path: &str) -> HostError {
    HostError::new(
        Kind::Value,
        format!("object {path} is not in its store"),
        "The reference names an object that was removed or never written; dj.object_verify checks references.",
    )
}

/// The store and path of a reference's JSON text, or why it is not one.
fn parse(reference: &str) -> Result<Located, HostError> {
    let bad = |why: String| {
        HostError::new(
            Kind::Value,
            format!("not an object reference: {why}"),
            "Pass the value of a store attribute (JSON with path and store) as fetched.",
        )
    };
    let json: Json = serde_json::from_str(reference).map_err(|e| bad(e.to_string()))?;
    let r = ObjectRef::parse(&json).map_err(|e| bad(e.to_string()))?;
    Ok((r.store, r.path))
}

/// A reference's store and path, if `text` is one (cheaply refused when it cannot be).
fn reference_in(text: &str) -> Option<Located> {
    if !text.trim_start().starts_with('{') || !text.contains("\"path\"") {
        return None;
    }
    parse(text).ok()
}

impl Objects {
    /// Records the references in rows the guest fetched, in the store attributes `references`
    /// (values of a table's store columns, never computed ones): their objects become readable.
    pub fn note_rows(&mut self, rows: &[Row], references: &[String]) {
        if references.is_empty() {
            return;
        }
        for field in rows.iter().flatten() {
            if let Value::Json(text) = &field.value {
                if references.contains(&field.name) {
                    if let Some(located) = reference_in(text) {
                        self.readable.insert(located);
                    }
                }
            }
        }
    }

    /// The store and key a guest may read: `reference` as fetched, or a member of it.
    fn locate(&self, reference: &str, member: Option<&str>) -> Result<Located, HostError> {
        let (store, path) = parse(reference)?;
        if !self.readable.contains(&(store.clone(), path.clone())) {
            return Err(not_fetched(&path));
        }
        match member {
            None => Ok((store, path)),
            Some(m) => {
                check_relative(m).map_err(|e| {
                    HostError::new(Kind::Value, format!("member {m:?}: {e}"), "Name a file of the folder object by its path relative to the folder, as its manifest lists it.")
                })?;
                Ok((store, format!("{path}/{m}")))
            }
        }
    }

    /// Takes an upload out, no longer counting the memory it holds (its spool file's bytes stay
    /// counted: the limit is on what the call wrote).
    fn forget(&mut self, n: u32) -> Option<Upload> {
        let upload = self.uploads.remove(&n)?;
        if let Spool::Memory(held) = &upload.spool {
            self.in_memory -= held.len();
        }
        Some(upload)
    }

    fn size<B: Backend>(&mut self, backend: &mut B, at: &Located) -> Result<Option<u64>, B::Error> {
        if let Some(size) = self.sizes.get(at) {
            return Ok(*size);
        }
        let size = backend.object_size(at.0.as_deref(), &at.1)?;
        self.sizes.insert(at.clone(), size);
        Ok(size)
    }
}

impl<B: Backend> MakeHost<B> {
    pub(super) fn info(
        &mut self,
        reference: &str,
        member: Option<&str>,
        budget: usize,
    ) -> Result<ObjectInfo, B::Error> {
        let at = self.objects.locate(reference, member)?;
        let store = self.backend.store_name(at.0.as_deref());
        if let Some(size) = self.objects.size(&mut self.backend, &at)? {
            return Ok(ObjectInfo { store, path: at.1, size, is_dir: false, members: vec![] });
        }
        // A folder object: its manifest sidecar lists the files.
        let manifest = (at.0.clone(), format!("{}.manifest.json", at.1));
        let size = match (member, self.objects.size(&mut self.backend, &manifest)?) {
            (None, Some(size)) => size,
            _ => return Err(absent(&at.1).into()),
        };
        // Parsed, a manifest takes several times its size: charged as eight.
        if size.saturating_mul(8) > budget as u64 {
            return Err(HostError::new(
                Kind::Memory,
                format!("the manifest of folder object {} ({size} bytes) exceeds the make function's memory limit", at.1),
                "Read the folder's files by member without listing them, or have a superuser raise dj.make_memory_limit.",
            )
            .into());
        }
        if size > MAX_MANIFEST {
            return Err(HostError::new(
                Kind::Memory,
                format!("the manifest of folder object {} has {size} bytes", at.1),
                "Read the folder's files by member without listing them.",
            )
            .into());
        }
        let text = self.backend.object_range(manifest.0.as_deref(), &manifest.1, 0..size)?;
        let bad = || {
            HostError::new(
                Kind::Value,
                format!("the manifest of folder object {} is not DataJoint's", at.1),
                "",
            )
        };
        let json: Json = serde_json::from_slice(&text).map_err(|_| bad())?;
        let files = json.get("files").and_then(Json::as_array).ok_or_else(bad)?;
        let members: Vec<String> =
            files.iter().filter_map(|f| f.get("path").and_then(Json::as_str).map(str::to_string)).collect();
        let total = json.get("total_size").and_then(Json::as_u64).unwrap_or_default();
        Ok(ObjectInfo { store, path: at.1, size: total, is_dir: true, members })
    }

    pub(super) fn read(
        &mut self,
        reference: &str,
        member: Option<&str>,
        offset: u64,
        length: u32,
        budget: usize,
    ) -> Result<Vec<u8>, B::Error> {
        if length > MAX_READ {
            return Err(HostError::new(
                Kind::Value,
                format!("a read of {length} bytes asks for more than {MAX_READ}"),
                "Read large objects in chunks of at most 16 MiB.",
            )
            .into());
        }
        let at = self.objects.locate(reference, member)?;
        let size = self.objects.size(&mut self.backend, &at)?.ok_or_else(|| absent(&at.1))?;
        let end = offset.saturating_add(length as u64).min(size);
        if offset >= end {
            return Ok(vec![]);
        }
        if (end - offset) as usize > budget {
            return Err(HostError::new(
                Kind::Memory,
                format!(
                    "a read of {} bytes of object {} exceeds the make function's memory limit",
                    end - offset,
                    at.1
                ),
                "Read in smaller chunks, or have a superuser raise dj.make_memory_limit.",
            )
            .into());
        }
        self.backend.object_range(at.0.as_deref(), &at.1, offset..end)
    }

    pub(super) fn upload_new(
        &mut self,
        table: &str,
        attribute: String,
        key: Row,
        filename: Option<String>,
    ) -> Result<u32, B::Error> {
        let info = self.session.table(&mut self.backend, table)?;
        self.session.scope.check_write(&info.table)?;
        if !info.columns.iter().any(|c| c.name == attribute) {
            return Err(HostError::new(
                Kind::UndefinedColumn,
                format!("{} has no attribute {attribute}", info.table.qualified()),
                "Upload objects for a store attribute of the target or one of its parts.",
            )
            .into());
        }
        let primary = info.key();
        if let Some(extra) = key.iter().find(|f| !primary.iter().any(|c| c.name == f.name)) {
            return Err(HostError::new(
                Kind::UndefinedColumn,
                format!("{} is not in the primary key of {}", extra.name, info.table.qualified()),
                "An upload's key names the row's primary-key attributes.",
            )
            .into());
        }
        let mut row = Row::with_capacity(primary.len());
        for c in primary {
            let given = key.iter().find(|f| f.name == c.name).map(|f| &f.value);
            let current = self.key.iter().find(|f| f.name == c.name).map(|f| &f.value);
            let value = match (given, current) {
                (Some(g), Some(k)) if g != k => {
                    return Err(HostError::new(
                        Kind::Privilege,
                        format!(
                            "the upload's key has {}={}, the current key another value",
                            c.name,
                            crate::make::display_value(g)
                        ),
                        "A make function writes the rows of its own key only.",
                    )
                    .into())
                }
                (Some(v), _) | (None, Some(v)) => v.clone(),
                (None, None) => {
                    return Err(HostError::new(
                        Kind::Value,
                        format!("the upload's key has no value for {}", c.name),
                        format!(
                            "Pass the primary key of the {} row the object belongs to.",
                            info.table.qualified()
                        ),
                    )
                    .into())
                }
            };
            row.push(Field { name: c.name.clone(), value });
        }
        if self.objects.uploads.len() >= MAX_UPLOADS {
            return Err(HostError::new(
                Kind::Limit,
                format!("the make function has {MAX_UPLOADS} uploads open"),
                "Finish an upload before starting the next.",
            )
            .into());
        }
        let n = self.objects.next;
        self.objects.next = n.wrapping_add(1);
        let upload =
            Upload { table: info.table.clone(), attribute, key: row, filename, spool: Spool::Memory(vec![]) };
        self.objects.uploads.insert(n, upload);
        Ok(n)
    }

    fn upload(&mut self, n: u32) -> Result<&mut Upload, HostError> {
        self.objects.uploads.get_mut(&n).ok_or_else(|| {
            HostError::new(
                Kind::Value,
                "the upload was finished already",
                "Start a new upload for another object.",
            )
        })
    }

    pub(super) fn upload_write(&mut self, n: u32, chunk: Vec<u8>) -> Result<(), B::Error> {
        let in_memory = self.objects.in_memory;
        let held = match &self.upload(n)?.spool {
            Spool::Memory(held) => Some(held.len()),
            Spool::File(..) => None,
        };
        let (spill, spooled) = match held {
            // Past the memory all of the call's uploads may hold: this one goes to a file.
            Some(held) if in_memory + chunk.len() > SPOOL_MEMORY => {
                (Some(self.backend.spool_path()?), held + chunk.len())
            }
            Some(_) => (None, 0),
            None => (None, chunk.len()),
        };
        if let Some(limit) = self.backend.spool_limit() {
            if self.objects.spooled + spooled as u64 > limit {
                return Err(HostError::new(
                    Kind::Limit,
                    format!("the make function's uploads exceed the spool limit ({limit} bytes)"),
                    "Uploads past 8 MiB are spooled to temporary files, which dj.make_upload_limit and \
                     temp_file_limit bound.",
                )
                .into());
            }
        }
        self.objects.spooled += spooled as u64;
        let objects = &mut self.objects;
        let upload = objects.uploads.get_mut(&n).expect("checked above");
        if let Some(path) = spill {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| io_error("create", &path, e))?;
            let guard = SpoolFile(path);
            if let Spool::Memory(held) = &upload.spool {
                file.write_all(held).map_err(|e| io_error("write", guard.path(), e))?;
                objects.in_memory -= held.len();
            }
            upload.spool = Spool::File(guard);
        }
        match &mut upload.spool {
            Spool::Memory(held) => {
                held.extend_from_slice(&chunk);
                objects.in_memory += chunk.len();
            }
            Spool::File(guard) => std::fs::OpenOptions::new()
                .append(true)
                .open(guard.path())
                .and_then(|mut file| file.write_all(&chunk))
                .map_err(|e| io_error("write", guard.path(), e))?,
        }
        Ok(())
    }

    pub(super) fn upload_finish(&mut self, n: u32) -> Result<String, B::Error> {
        self.upload(n)?;
        let Upload { table, attribute, key, filename, spool } =
            self.objects.forget(n).expect("checked above");
        let content = match spool {
            Spool::Memory(bytes) => Content::Bytes(bytes),
            Spool::File(guard) => Content::File(guard),
        };
        let reference = self.backend.object_put(&table, &attribute, &key, filename.as_deref(), content)?;
        if let Some(located) = reference_in(&reference) {
            self.objects.readable.insert(located);
        }
        Ok(reference)
    }

    pub(super) fn upload_drop(&mut self, n: u32) {
        self.objects.forget(n);
    }
}

/// A key value as schema-addressed paths encode it (datajoint-python's `str()` / `isoformat()`
/// of the value); None for values a primary key cannot hold (NULL, bytes, JSON).
pub fn key_value(v: &Value) -> Option<KeyValue> {
    const DAY: i64 = 86_400_000_000;
    Some(match v {
        Value::Int(i) => KeyValue::Number(i.to_string()),
        Value::Decimal(d) => KeyValue::Number(d.clone()),
        Value::Float(f) => KeyValue::Number(format!("{f:?}")),
        Value::Boolean(b) => KeyValue::Bool(*b),
        Value::Text(s) => KeyValue::Text(s.clone()),
        Value::Uuid((hi, lo)) => {
            let h = format!("{hi:016x}{lo:016x}");
            KeyValue::Text(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        Value::Date(days) => KeyValue::Iso(civil_date(*days as i64)),
        Value::Time(us) => KeyValue::Iso(clock(*us)),
        Value::Timestamp(us) => {
            let (days, of_day) = (us.div_euclid(DAY), us.rem_euclid(DAY));
            KeyValue::DateTime(format!("{} {}", civil_date(days), clock(of_day)))
        }
        Value::Null | Value::Bytes(_) | Value::Json(_) => return None,
    })
}

/// `YYYY-MM-DD` of days since 1970-01-01 (proleptic Gregorian).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM:SS[.ffffff]` of microseconds since midnight, as Python's `time.isoformat()`.
fn clock(us: i64) -> String {
    let (s, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let hms = format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if frac == 0 {
        hms
    } else {
        format!("{hms}.{frac:06}")
    }
}
