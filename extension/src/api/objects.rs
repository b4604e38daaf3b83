//! Objects in stores from SQL: `dj.object_put` and `dj.object_put_file` (what an INSERT puts in
//! a store attribute), `dj.object_read`, `dj.object_get_file`, `dj.object_info`,
//! `dj.object_verify`, `dj.object_url`, and `dj.gc`.

use datajoint_core::store::address::{self, ObjectRef};
use datajoint_core::store::{Store, StoreError, StoreErrorKind};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

use crate::error::{DjError, DjResult, OrRaise};
use crate::objects::put::{self, Content};
use crate::objects::{self, gc};
use crate::security;

/// The most a value may hold.
const MAX_VALUE: u64 = (1 << 30) - 1;

/// `dj.object_put(table, attribute, content, filename, key)`: stores `content` for the table's
/// store attribute and returns the reference to insert: `<blob@s>` takes a blob (dj.blob_encode),
/// `<attach@s>` a file's bytes and its name, `<hash@s>` any bytes (these are content-addressed
/// under the table's schema, shared by equal contents); `<npy@s>` a .npy file's bytes and
/// `<object@s>` any bytes (its extension from `filename`), both at a new path under the row's
/// primary `key`, as datajoint-python stores them. An object whose transaction rolls back is left
/// to dj.gc, never referenced.
#[pg_extern(volatile, parallel_unsafe)]
fn object_put(
    table: &str,
    attribute: &str,
    content: Option<&[u8]>,
    filename: default!(Option<&str>, "NULL"),
    key: default!(Option<JsonB>, "NULL"),
) -> Option<JsonB> {
    let _pin = security::pin();
    // No content, no object: the attribute is NULL.
    Some(
        put::put(table, attribute, Content::Bytes(content?), filename, key.as_ref())
            .or_raise("dj.object_put"),
    )
}

/// `dj.object_put_file(table, attribute, path, filename)`: as dj.object_put, with the content
/// read from a file on the server (roles with pg_read_server_files), streamed in 8 MiB parts: a
/// large object never sits whole in the backend's memory. An attachment keeps `filename`, by
/// default the file's own name; an `<object@s>` attribute also takes a folder (its files and a
/// manifest).
#[pg_extern(volatile, parallel_unsafe)]
fn object_put_file(
    table: &str,
    attribute: &str,
    path: Option<&str>,
    filename: default!(Option<&str>, "NULL"),
    key: default!(Option<JsonB>, "NULL"),
) -> Option<JsonB> {
    let _pin = security::pin();
    let out = put::server_path(path?, "pg_read_server_files", "read")
        .and_then(|p| put::put(table, attribute, Content::File(p), filename, key.as_ref()));
    Some(out.or_raise("dj.object_put_file"))
}

/// `dj.filepath_ref(table, attribute, path)`: the reference a `<filepath@store>` attribute keeps
/// for a file (or folder) already in the store at `path` (relative to the store, outside the
/// sections DataJoint manages, under the store's filepath_prefix if it has one). DataJoint never
/// deletes such files.
#[pg_extern(volatile, parallel_unsafe)]
fn filepath_ref(table: &str, attribute: &str, path: Option<&str>) -> Option<JsonB> {
    let _pin = security::pin();
    Some(put::filepath_ref(table, attribute, path?).or_raise("dj.filepath_ref"))
}

/// `dj.object_refs(table)`: the objects the table's rows reference, as plain columns (for BI
/// tools that read no JSON): attribute, the row's primary key, store, path, size, hash (of
/// hash-addressed objects), whether it is a folder, and the reference itself (for
/// dj.object_url, dj.object_read). Read as the caller.
#[pg_extern(volatile, parallel_unsafe)]
fn object_refs(
    table: &str,
) -> TableIterator<
    'static,
    (
        name!(attribute, String),
        name!(key, JsonB),
        name!(store, Option<String>),
        name!(path, Option<String>),
        name!(size, Option<i64>),
        name!(hash, Option<String>),
        name!(is_dir, bool),
        name!(reference, JsonB),
    ),
> {
    let _pin = security::pin();
    let rows = objects::refs::list(table).or_raise("dj.object_refs");
    TableIterator::new(
        rows.into_iter()
            .map(|r| (r.attribute, r.key, r.store, r.path, r.size, r.hash, r.is_dir, r.reference)),
    )
}

/// `dj.object_get_file(ref, path)`: writes a stored object to a file on the server (roles with
/// pg_write_server_files; an existing file is replaced, as COPY does), streamed, its hash checked
/// on the way; returns the bytes written. The stored bytes are written as they are: an
/// attachment's start with its name (dj.attach_decode splits them).
#[pg_extern(volatile, parallel_unsafe)]
fn object_get_file(reference: Option<JsonB>, path: &str) -> Option<i64> {
    let _pin = security::pin();
    let out = parse(&reference?).and_then(|r| put::get_file(&r, path, open_for));
    Some(out.or_raise("dj.object_get_file"))
}

/// The store of a reference, opened for the caller.
fn open_for(reference: &ObjectRef) -> DjResult<Store> {
    objects::open(&objects::store_name(reference.store.as_deref()))
}

fn parse(reference: &JsonB) -> DjResult<ObjectRef> {
    Ok(ObjectRef::parse(&reference.0)?)
}

/// `dj.object_read(ref, offset, length)`: the object's bytes, all of them (a hash-addressed
/// object's hash checked) or `length` bytes from `offset`.
#[pg_extern(volatile, parallel_unsafe)]
fn object_read(
    reference: Option<JsonB>,
    offset: default!(i64, 0),
    length: default!(Option<i64>, "NULL"),
) -> Option<Vec<u8>> {
    let _pin = security::pin();
    Some(read(&reference?, offset, length).or_raise("dj.object_read"))
}

fn read(reference: &JsonB, offset: i64, length: Option<i64>) -> DjResult<Vec<u8>> {
    let r = parse(reference)?;
    if offset < 0 || length.is_some_and(|l| l < 0) {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "offset and length cannot be negative",
            "",
        ));
    }
    let store = open_for(&r)?;
    if offset == 0 && length.is_none() {
        let bytes = store.get(&r.path, MAX_VALUE)?;
        if let Some(h) = &r.hash {
            let actual = address::content_hash(&bytes);
            if &actual != h {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    format!("object {} does not match its hash: expected {h}, got {actual}", r.path),
                    "The object was changed or damaged in the store; restore it from a backup.",
                )
                .into());
            }
        }
        return Ok(bytes);
    }
    let size = store.head(&r.path)?.map(|m| m.size).ok_or_else(|| {
        DjError::from(StoreError::new(
            StoreErrorKind::NotFound,
            format!("object {:?} is not in the store", r.path),
            "",
        ))
    })?;
    let start = (offset as u64).min(size);
    let end = length.map(|l| start.saturating_add(l as u64).min(size)).unwrap_or(size);
    if end - start > MAX_VALUE {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "a read returns at most 1 GiB",
            "Read in ranges: dj.object_read(ref, offset, length).",
        ));
    }
    if start == end {
        return Ok(vec![]);
    }
    Ok(store.get_range(&r.path, start..end)?)
}

/// `dj.object_info(ref)`: where the object is and what the store says of it.
#[pg_extern(volatile, parallel_unsafe)]
fn object_info(reference: Option<JsonB>) -> Option<JsonB> {
    let _pin = security::pin();
    Some(info(&reference?).or_raise("dj.object_info"))
}

fn info(reference: &JsonB) -> DjResult<JsonB> {
    let r = parse(reference)?;
    let store = open_for(&r)?;
    let meta = store.head(&r.path)?;
    Ok(JsonB(json!({
        "store": store.name,
        "path": r.path,
        "hash": r.hash,
        "exists": meta.is_some(),
        "size": meta.as_ref().map(|m| m.size),
        "modified": meta.as_ref().map(|m| m.modified_us as f64 / 1e6),
    })))
}

/// `dj.object_verify(ref)`: true when the object is there with the size (and, when
/// hash-addressed, the content hash) its reference records.
#[pg_extern(volatile, parallel_unsafe)]
fn object_verify(reference: Option<JsonB>) -> Option<bool> {
    let _pin = security::pin();
    Some(verify(&reference?).or_raise("dj.object_verify"))
}

fn verify(reference: &JsonB) -> DjResult<bool> {
    let r = parse(reference)?;
    let store = open_for(&r)?;
    let Some(meta) = store.head(&r.path)? else { return Ok(false) };
    if r.size.is_some_and(|s| s != meta.size) {
        return Ok(false);
    }
    let Some(expected) = &r.hash else { return Ok(true) };
    // Streamed: a large object never sits whole in memory.
    let mut hasher = address::BackgroundHasher::start();
    let read = store.get_into(&r.path, &mut |chunk| {
        objects::stop_if_interrupted()?;
        hasher.update(chunk);
        Ok(())
    });
    pgrx::check_for_interrupts!();
    read?;
    Ok(&hasher.finish() == expected)
}

/// `dj.object_url(ref, expires)`: a presigned URL that lets anyone holding it download the
/// object until it expires (S3 stores); NULL for file stores.
#[pg_extern(volatile, parallel_unsafe)]
fn object_url(
    reference: Option<JsonB>,
    expires: default!(pgrx::datum::Interval, "'1 hour'"),
) -> Option<String> {
    let _pin = security::pin();
    let out: DjResult<Option<String>> = (|| {
        let Some(reference) = reference else { return Ok(None) };
        let r = parse(&reference)?;
        let micros = expires.as_micros();
        if micros <= 0 || micros > 7 * 24 * 3_600_000_000 {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "expires must be positive and at most 7 days",
                "S3 presigned URLs live at most a week.",
            ));
        }
        let store = open_for(&r)?;
        Ok(store.presigned_url(&r.path, std::time::Duration::from_micros(micros as u64))?)
    })();
    out.or_raise("dj.object_url")
}

/// `dj.gc(store, dry_run, grace)`: quarantines the store's objects no row of this database's
/// schemas references (older than `grace`), and deletes quarantined objects still unreferenced
/// after `grace` (restoring any referenced again). With `dry_run` (the default), only says what
/// it would do.
#[pg_extern(volatile, parallel_unsafe)]
fn gc(
    store: &str,
    dry_run: default!(bool, true),
    grace: default!(pgrx::datum::Interval, "'1 day'"),
) -> TableIterator<
    'static,
    (
        name!(key, String),
        name!(size, i64),
        name!(modified, pgrx::datum::TimestampWithTimeZone),
        name!(action, String),
    ),
> {
    let _pin = security::pin();
    let out: DjResult<Vec<gc::Outcome>> = (|| {
        let row = objects::row(store)?.ok_or_else(|| {
            DjError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("store {store:?} does not exist"),
                "SELECT name FROM dj.stores lists the stores.",
            )
        })?;
        if !objects::may_admin(&row)? {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied to collect store {store}"),
                format!("Only its owner ({}) or a superuser may.", row.owner),
            ));
        }
        let opened = Store::open(&row.name, &row.spec, &row.secrets, &objects::home())?;
        let grace_us = grace.as_micros().clamp(0, i64::MAX as i128) as i64;
        gc::collect(&row, &opened, dry_run, grace_us)
    })();
    let outcomes = out.or_raise("dj.gc");
    // Unix microseconds to PostgreSQL's epoch (2000-01-01).
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    TableIterator::new(outcomes.into_iter().map(|o| {
        let at =
            pgrx::datum::TimestampWithTimeZone::try_from(o.modified_us - PG_EPOCH_US).expect("a finite time");
        (o.key, o.size, at, o.action)
    }))
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.object_put(text, text, bytea, text, jsonb) IS 'Stores content for a store attribute of a table the caller may write and returns the reference to insert, as datajoint-python stores it: <blob@store> (a blob: dj.blob_encode), <attach@store> (a file''s bytes, with filename) and <hash@store> content-addressed; <npy@store> (a .npy file''s bytes) and <object@store> (any bytes, the extension from filename) under the row''s primary key. An object of a transaction that rolls back is never referenced and is removed by dj.gc.';
COMMENT ON FUNCTION dj.object_put_file(text, text, text, text, jsonb) IS 'As dj.object_put, the content read from a file on the server (roles with pg_read_server_files), streamed in 8 MiB parts; an attachment keeps filename, by default the file''s own name; an <object@store> attribute also takes a folder (its files and a manifest).';
COMMENT ON FUNCTION dj.filepath_ref(text, text, text) IS 'The reference a <filepath@store> attribute keeps for a file (or folder) already in the store at path (relative, outside DataJoint''s hash and schema sections, under the store''s filepath_prefix if set); such files are never deleted by DataJoint.';
COMMENT ON FUNCTION dj.object_refs(text) IS 'The objects a table''s rows reference, as plain columns for clients and BI tools: attribute, key (the row''s primary key), store, path, size, hash, is_dir, and the reference itself (for dj.object_url, dj.object_read). Read as the caller.';
COMMENT ON FUNCTION dj.object_get_file(jsonb, text) IS 'Writes a stored object to a file on the server (roles with pg_write_server_files; an existing file is replaced), streamed, its hash checked on the way; returns the bytes written.';
COMMENT ON FUNCTION dj.object_read(jsonb, bigint, bigint) IS 'The bytes of a stored object: all of them (a hash-addressed object''s hash checked), or length bytes from offset.';
COMMENT ON FUNCTION dj.object_info(jsonb) IS 'Where a stored object is and what its store says of it: store, path, hash, exists, size, modified (Unix seconds).';
COMMENT ON FUNCTION dj.object_verify(jsonb) IS 'Whether a stored object is there with the size and content hash its reference records.';
COMMENT ON FUNCTION dj.object_url(jsonb, interval) IS 'A presigned URL that lets anyone holding it download a stored object until it expires (S3 stores; at most 7 days); NULL for file stores.';
COMMENT ON FUNCTION dj.gc(text, boolean, interval) IS 'Garbage collection of a store (its owner or a superuser): objects under this database''s schemas that no row references and older than grace are quarantined; quarantined objects still unreferenced a grace later are deleted, referenced ones restored; objects a transaction under way wrote or found are never touched. dry_run (the default) only reports. One row per object considered.';
"#,
    name = "objects_comments",
    requires = [
        object_put,
        object_put_file,
        object_get_file,
        object_read,
        object_info,
        object_verify,
        object_url,
        gc
    ],
);
