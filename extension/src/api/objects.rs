//! Objects in stores from SQL: `dj.object_put` (what an INSERT puts in a `<blob@store>`,
//! `<attach@store>` or `<hash@store>` attribute), `dj.object_read`, `dj.object_info`,
//! `dj.object_verify`, and `dj.gc`.

use datajoint_core::blob;
use datajoint_core::store::address::{self, ObjectRef};
use datajoint_core::store::{Store, StoreError, StoreErrorKind};
use datajoint_core::types::Codec;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

use crate::error::{DjError, DjResult, OrRaise};
use crate::objects::{self, gc};
use crate::{catalog, security};

/// The most a value may hold.
const MAX_VALUE: u64 = (1 << 30) - 1;

/// `dj.object_put(table, attribute, content, filename)`: stores `content` for the table's store
/// attribute and returns the reference to insert: `<blob@s>` takes a blob (dj.blob_encode),
/// `<attach@s>` a file's bytes and its name, `<hash@s>` any bytes. Objects are
/// content-addressed under the table's schema, as datajoint-python stores them, and shared by
/// equal contents. An object whose transaction rolls back is left to dj.gc, never referenced.
#[pg_extern(volatile, parallel_unsafe)]
fn object_put(
    table: &str,
    attribute: &str,
    content: Option<&[u8]>,
    filename: default!(Option<&str>, "NULL"),
) -> Option<JsonB> {
    let _pin = security::pin();
    // No content, no object: the attribute is NULL.
    Some(put(table, attribute, content?, filename).or_raise("dj.object_put"))
}

fn put(table: &str, attribute: &str, content: &[u8], filename: Option<&str>) -> DjResult<JsonB> {
    let table = catalog::resolve(table)?;
    let may = catalog::read_one::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, 'INSERT') OR pg_catalog.has_table_privilege($1, 'UPDATE')",
        &[table.qualified().into()],
    )?
    .unwrap_or(false);
    if !may {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table {}", table.qualified()),
            "Objects are stored for tables the role may insert into or update.",
        ));
    }
    let (codec, store_name) = objects::column_codec(&table, attribute)?;
    let stored = match (codec, filename) {
        (Codec::Blob, None) => {
            blob::unpack(content)?;
            content.to_vec()
        }
        (Codec::Attach, Some(name)) => address::attachment(name, content)?,
        (Codec::Hash, None) => content.to_vec(),
        (Codec::Attach, None) => {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("attribute {attribute} is an attachment and needs the file's name"),
                "Pass filename => 'name.ext'.",
            ))
        }
        (Codec::Blob | Codec::Hash, Some(_)) => {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("attribute {attribute} is not an attachment: it takes no file name"),
                "Leave filename out.",
            ))
        }
        (other, _) => {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("attribute {attribute} is {other:?}-coded; dj.object_put stores <blob@>, <attach@> and <hash@> objects"),
                "",
            ))
        }
    };
    let store = objects::open(&store_name)?;
    let reference = objects::put_hashed(&store, &table.schema, stored)?;
    Ok(JsonB(reference.to_json()))
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
    // Hashed in 8 MiB ranges: a large object never sits whole in memory.
    let mut hasher = address::Hasher::default();
    let mut at = 0u64;
    while at < meta.size {
        pgrx::check_for_interrupts!();
        let end = (at + (8 << 20)).min(meta.size);
        hasher.update(&store.get_range(&r.path, at..end)?);
        at = end;
    }
    Ok(&hasher.finish() == expected)
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
        (o.key, o.size, at, o.action.to_string())
    }))
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.object_put(text, text, bytea, text) IS 'Stores content for a <blob@store> (a blob: dj.blob_encode), <attach@store> (a file''s bytes, with filename) or <hash@store> attribute of a table the caller may write, content-addressed as datajoint-python does, and returns the reference to insert. An object of a transaction that rolls back is never referenced and is removed by dj.gc.';
COMMENT ON FUNCTION dj.object_read(jsonb, bigint, bigint) IS 'The bytes of a stored object: all of them (a hash-addressed object''s hash checked), or length bytes from offset.';
COMMENT ON FUNCTION dj.object_info(jsonb) IS 'Where a stored object is and what its store says of it: store, path, hash, exists, size, modified (Unix seconds).';
COMMENT ON FUNCTION dj.object_verify(jsonb) IS 'Whether a stored object is there with the size and content hash its reference records.';
COMMENT ON FUNCTION dj.gc(text, boolean, interval) IS 'Garbage collection of a store (its owner or a superuser): objects under this database''s schemas that no row references and older than grace are quarantined; quarantined objects still unreferenced a grace later are deleted, referenced ones restored; objects a transaction under way wrote or found are never touched. dry_run (the default) only reports. One row per object considered.';
"#,
    name = "objects_comments",
    requires = [object_put, object_read, object_info, object_verify, gc],
);
