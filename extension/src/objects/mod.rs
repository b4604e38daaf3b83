//! Object stores as the extension hosts them: the catalog of stores (`dj._stores`, read as the
//! extension's owner because it holds secrets), who may use which, the store a column's codec
//! names, and writes tied to the writing transaction ([`locks`]). The layout and the I/O are
//! `datajoint_core::store`'s.

pub mod gc;
pub mod locks;
pub mod put;
pub mod refs;
pub mod schema;

use datajoint_core::dependencies::Table;
use datajoint_core::describe::split_type_comment;
use datajoint_core::store::address::{self, HashRef};
use datajoint_core::store::{Home, Secrets, Spec, Store};
use datajoint_core::types::{AttributeType, Codec};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{DjError, DjResult};
use crate::{catalog, gucs, security};

/// A store's catalog row.
pub struct StoreRow {
    pub name: String,
    pub spec: Spec,
    pub secrets: Secrets,
    pub owner: String,
}

/// Where file stores with a relative location live: under the data directory, a folder per database.
pub fn home() -> Home {
    // SAFETY: DataDir is set at startup and never changes; the database's name exists while connected.
    let (data_directory, database) = unsafe {
        (
            std::ffi::CStr::from_ptr(pg_sys::DataDir).to_string_lossy().into_owned(),
            std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId))
                .to_string_lossy()
                .into_owned(),
        )
    };
    Home { data_directory, database }
}

fn unknown_store(name: &str) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("store {name:?} does not exist"),
        "SELECT name FROM dj.stores lists the stores; dj.add_store adds one.",
    )
}

/// The store's row, read as the extension's owner (it holds the secrets), or None.
pub fn row(name: &str) -> DjResult<Option<StoreRow>> {
    security::as_extension_owner(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT spec, secrets, owner::pg_catalog.text FROM dj._stores WHERE name OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[name.into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            let r = rows.first();
            let spec: JsonB = r.get(1)?.expect("spec is NOT NULL");
            let secrets: Option<JsonB> = r.get(2)?;
            let owner: String = r.get(3)?.unwrap_or_default();
            let (spec, mut from_spec) = Spec::parse(&spec.0)?;
            if let Some(JsonB(s)) = secrets {
                from_spec.access_key = s.get("access_key").and_then(|v| v.as_str()).map(String::from);
                from_spec.secret_key = s.get("secret_key").and_then(|v| v.as_str()).map(String::from);
            }
            Ok(Some(StoreRow { name: name.to_string(), spec, secrets: from_spec, owner }))
        })
    })
}

/// Whether the current role may use the store: its owner (or a member), or a role it is granted to.
pub fn may_use(name: &str) -> DjResult<bool> {
    // SAFETY: the current user id, read before switching identity.
    let user = unsafe { pg_sys::GetUserId() };
    security::as_extension_owner(|| {
        Ok(catalog::read_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM dj._stores s WHERE s.name OPERATOR(pg_catalog.=) $1 AND ( \
               pg_catalog.pg_has_role($2, s.owner, 'MEMBER') OR EXISTS (SELECT 1 FROM dj._store_grants g \
               WHERE g.store OPERATOR(pg_catalog.=) s.name AND (g.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid \
                 OR pg_catalog.pg_has_role($2, g.grantee, 'MEMBER')))))",
            &[name.into(), user.into()],
        )?
        .unwrap_or(false))
    })
}

/// Whether the current role may change the store (add, drop, grant, collect): a superuser or a
/// member of its owner.
pub fn may_admin(row: &StoreRow) -> DjResult<bool> {
    Ok(catalog::read_one::<bool>(
        "SELECT pg_catalog.pg_has_role($1::pg_catalog.name, 'MEMBER')",
        &[row.owner.as_str().into()],
    )?
    .unwrap_or(false))
}

/// Opens a store the current role may use.
pub fn open(name: &str) -> DjResult<Store> {
    let row = row(name)?.ok_or_else(|| unknown_store(name))?;
    if !may_use(name)? {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for store {name}"),
            format!(
                "The store's owner ({}) may grant it: SELECT dj.grant_store('{name}', '<role>').",
                row.owner
            ),
        ));
    }
    Ok(Store::open(name, &row.spec, &row.secrets, &home())?)
}

/// The store named by a codec (`<blob@>` names the default store).
pub fn store_name(declared: Option<&str>) -> String {
    match declared {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => gucs::default_store(),
    }
}

/// A store attribute of some table of this database.
pub struct StoreColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    /// The store it names, as declared ("" for the default store).
    pub store: String,
}

/// Every store attribute of this database's tables, read as the extension's owner (whatever the
/// caller may see). The declared type is parsed as declare parses it (`< blob @ s >` too), not
/// matched as text.
pub fn store_columns() -> DjResult<Vec<StoreColumn>> {
    let found = security::as_extension_owner(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, a.attname::pg_catalog.text, d.description                    FROM pg_catalog.pg_attribute a                    JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid                    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace                    JOIN pg_catalog.pg_description d ON d.objoid OPERATOR(pg_catalog.=) c.oid                         AND d.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass                         AND d.objsubid OPERATOR(pg_catalog.=) a.attnum                   WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog.\"char\"[]) AND a.attnum OPERATOR(pg_catalog.>) 0                     AND NOT a.attisdropped AND a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.jsonb'::pg_catalog.regtype                     AND pg_catalog.left(d.description, 1) OPERATOR(pg_catalog.=) ':'",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for r in rows {
                out.push((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<String>(4)?.unwrap_or_default(),
                ));
            }
            Ok(out)
        })
    })?;
    Ok(found
        .into_iter()
        .filter_map(|(schema, table, column, comment)| {
            let (declared, _) = split_type_comment(&comment)?;
            match AttributeType::parse(declared) {
                Ok(AttributeType::Codec { store: Some(store), .. }) => {
                    Some(StoreColumn { schema, table, column, store })
                }
                _ => None,
            }
        })
        .collect())
}

/// Whether a column with this comment is a store attribute (its declared type, as declare
/// parses it, names a store).
pub fn is_store_column(comment: Option<&str>) -> bool {
    let declared = comment.and_then(split_type_comment).map(|(t, _)| t);
    matches!(declared.map(AttributeType::parse), Some(Ok(AttributeType::Codec { store: Some(_), .. })))
}

/// The codec and store of a table's store column.
pub fn column_codec(table: &Table, attribute: &str) -> DjResult<(Codec, String)> {
    let columns = catalog::columns(table)?;
    let column = columns.iter().find(|c| c.name == attribute).ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("table {} has no attribute {attribute:?}", table.qualified()),
            format!("SELECT dj.describe('{}') shows its attributes.", table.qualified().replace('\'', "''")),
        )
    })?;
    let declared = column.comment.as_deref().and_then(split_type_comment).map(|(t, _)| t.to_string());
    match declared.as_deref().map(AttributeType::parse) {
        Some(Ok(AttributeType::Codec { codec, store: Some(store), .. })) => Ok((codec, store_name(Some(&store)))),
        _ => Err(DjError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("attribute {attribute} of {} is not a store attribute (it is {})", table.qualified(), declared.unwrap_or_else(|| column.sql_type.clone())),
            "Objects go into attributes declared <blob@store>, <attach@store>, <hash@store>, <object@store> or <npy@store>; in-table <blob> and <attach> columns take dj.blob_encode(...) and dj.attach_encode(...) directly.",
        )),
    }
}

/// Stores content hash-addressed for `schema`, deduplicated, held by this transaction until it
/// ends (so gc leaves it), and returns the reference a column keeps.
pub fn put_hashed(store: &Store, schema: &str, content: Vec<u8>) -> DjResult<HashRef> {
    let hash = address::content_hash(&content);
    let path = address::hash_path(&store.spec, schema, &hash)?;
    locks::hold(&store.name, &path);
    let size = content.len() as u64;
    match store.head(&path)? {
        Some(meta) if meta.size == size => {}
        // Absent, or a different size (an interrupted copy by another client): write it.
        _ => store.put(&path, content)?,
    }
    Ok(HashRef { hash, path, schema: schema.to_string(), store: Some(store.name.clone()), size })
}

/// Stores content read from `reader` (after `prefix`, an attachment's name) hash-addressed like
/// [`put_hashed`], streamed: it is uploaded once, hashed on the way, to a key of the store's
/// quarantine (which dj.gc empties should the backend die), then moved to its address, or dropped
/// when that object is there already. A cancel stops the upload between parts.
pub fn put_hashed_from(
    store: &Store,
    schema: &str,
    prefix: &[u8],
    reader: &mut dyn std::io::Read,
) -> DjResult<HashRef> {
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: a plain read of the backend's pid.
    let original = format!("_dj_upload-{}-{n}", unsafe { pg_sys::MyProcPid });
    let folder = format!("{}/{now}", gc::TRASH);
    let staging = format!("{folder}/{original}");
    // gc takes quarantined objects by the key they had: held, ours is left alone.
    locks::hold(&store.name, &original);
    let mut hasher = address::BackgroundHasher::start();
    let mut reader = Cancellable(std::io::Read::chain(prefix, reader));
    let written = store.put_from(&staging, &mut reader, &mut |part| hasher.update(part));
    if written.is_err() {
        let _ = store.remove_empty_folder(&folder);
    }
    pgrx::check_for_interrupts!();
    let size = written?;
    let hash = hasher.finish();
    let path = address::hash_path(&store.spec, schema, &hash)?;
    locks::hold(&store.name, &path);
    match store.head(&path)? {
        Some(meta) if meta.size == size => store.delete(&staging)?,
        _ => store.rename(&staging, &path)?,
    }
    store.remove_empty_folder(&folder)?;
    Ok(HashRef { hash, path, schema: schema.to_string(), store: Some(store.name.clone()), size })
}

/// An error once a cancel or termination is pending: what a streamed transfer's callback returns
/// to stop at the next chunk (the caller then lets PostgreSQL act on it).
pub fn stop_if_interrupted() -> Result<(), datajoint_core::store::StoreError> {
    if crate::interrupts::stop_requested() {
        return Err(datajoint_core::store::StoreError::new(
            datajoint_core::store::StoreErrorKind::Io,
            "canceled",
            "",
        ));
    }
    Ok(())
}

/// A reader that fails once a cancel or termination is pending, so a long transfer stops at the
/// next part (the caller then lets PostgreSQL act on it).
pub struct Cancellable<R>(pub R);

impl<R: std::io::Read> std::io::Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if crate::interrupts::stop_requested() {
            return Err(std::io::Error::other("canceled"));
        }
        self.0.read(buf)
    }
}
