//! Writing objects for a table's store attribute (`dj.object_put`, `dj.object_put_file`) and
//! reading them out to server files (`dj.object_get_file`), references to files already in a
//! store (`dj.filepath_ref`): which codec takes what, the
//! privileges (the table's, the store's, and for server files those of
//! pg_read_server_files / pg_write_server_files), hash- or schema-addressed paths.

use std::io::{Read, Seek};

use datajoint_core::blob;
use datajoint_core::dependencies::Table;
use datajoint_core::store::address::{self, ObjectRef};
use datajoint_core::store::{folder, npy, schema_path, Store, StoreError, StoreErrorKind};
use datajoint_core::types::Codec;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

use super::{schema, Cancellable};
use crate::catalog;
use crate::error::{DjError, DjResult};

/// What to store: bytes, or a file (or, for `<object@>`, a folder) on the server.
pub enum Content<'a> {
    Bytes(&'a [u8]),
    File(std::path::PathBuf),
}

/// Stores `content` for `attribute` of `table` and returns the reference to insert.
pub fn put(
    table: &str,
    attribute: &str,
    content: Content,
    filename: Option<&str>,
    key: Option<&JsonB>,
) -> DjResult<JsonB> {
    let table = writable(table)?;
    let source_name = match &content {
        Content::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
        Content::Bytes(_) => None,
    };
    put_into(&table, attribute, content, filename, source_name, &|| schema::key_of(&table, key), true)
}

/// Stores `content` for `attribute` of `table` (which the caller may write) and returns the
/// reference to insert. `source_name`: the name of the file the content comes from (an
/// attachment's name and an object's extension when `filename` gives none); `key`: the row's
/// primary key, asked for schema-addressed objects only. `decode_blob`: whether `<blob@>` bytes
/// are decoded to check them (a caller's own bytea) or only their header (a make function's: what
/// a compressed blob inflates to is bounded by no limit of the guest's).
pub fn put_into(
    table: &Table,
    attribute: &str,
    content: Content,
    filename: Option<&str>,
    source_name: Option<String>,
    key: &dyn Fn() -> DjResult<Vec<(String, schema_path::KeyValue)>>,
    decode_blob: bool,
) -> DjResult<JsonB> {
    let (codec, store_name) = super::column_codec(table, attribute)?;
    // An attachment from a file keeps the file's name unless told otherwise.
    let filename = match (codec, filename) {
        (Codec::Attach, None) => source_name.clone(),
        (_, f) => f.map(str::to_string),
    };
    check_codec(codec, attribute, filename.as_deref())?;
    // Checked before anything is opened or written.
    let key = match codec {
        Codec::Object | Codec::Npy => Some(key()?),
        _ => None,
    };
    let store = super::open(&store_name)?;
    match (codec, content) {
        (Codec::Npy, content) => {
            let key = key.expect("a key");
            let head = match &content {
                Content::Bytes(b) => b[..b.len().min(npy::MAX_HEADER)].to_vec(),
                Content::File(p) => {
                    let mut head = Vec::new();
                    open_file(p)?
                        .take(npy::MAX_HEADER as u64)
                        .read_to_end(&mut head)
                        .map_err(|e| file_error("read", p, e))?;
                    head
                }
            };
            let info = npy::header(&head)?;
            let path = schema::new_path(&store, table, attribute, &key, Some(".npy"))?;
            write(&store, &path, content)?;
            Ok(JsonB(json!({"path": path, "store": store.name, "dtype": info.dtype, "shape": info.shape})))
        }
        (Codec::Object, content) => {
            let key = key.expect("a key");
            let folder_source = matches!(&content, Content::File(p) if p.is_dir());
            let ext = if folder_source {
                None
            } else {
                filename.as_deref().or(source_name.as_deref()).and_then(schema_path::suffix)
            };
            let path = schema::new_path(&store, table, attribute, &key, ext)?;
            let timestamp = schema::now_iso()?;
            let (size, item_count) = match content {
                Content::File(dir) if folder_source => {
                    let m = folder::upload(&store, &dir, &path, &timestamp, &mut |f| {
                        Box::new(Cancellable(std::io::BufReader::with_capacity(1 << 20, f)))
                    });
                    pgrx::check_for_interrupts!();
                    let m = m?;
                    (m.total_size, Some(m.files.len()))
                }
                content => (write(&store, &path, content)?, None),
            };
            Ok(JsonB(json!({
                "path": path, "store": store.name, "size": size, "ext": ext, "is_dir": folder_source,
                "item_count": item_count, "timestamp": timestamp,
            })))
        }
        (codec, Content::Bytes(bytes)) => {
            let stored = match (codec, filename.as_deref()) {
                (Codec::Blob, _) if decode_blob => {
                    blob::unpack(bytes)?;
                    bytes.to_vec()
                }
                (Codec::Blob, _) => {
                    if !blob::looks_like_blob(bytes) {
                        return Err(not_a_blob("the content"));
                    }
                    bytes.to_vec()
                }
                (Codec::Attach, Some(name)) => address::attachment(name, bytes)?,
                _ => bytes.to_vec(),
            };
            Ok(JsonB(super::put_hashed(&store, &table.schema, stored)?.to_json()))
        }
        (codec, Content::File(p)) => {
            let mut file = open_file(&p)?;
            let prefix = match (codec, filename.as_deref()) {
                (Codec::Attach, Some(name)) => address::attachment(name, b"")?,
                (Codec::Blob, _) => {
                    let mut head = [0u8; 6];
                    let n = file.read(&mut head).map_err(|e| file_error("read", &p, e))?;
                    if !blob::looks_like_blob(&head[..n]) {
                        return Err(not_a_blob(&p.display().to_string()));
                    }
                    file.rewind().map_err(|e| file_error("read", &p, e))?;
                    vec![]
                }
                _ => vec![],
            };
            let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
            Ok(JsonB(super::put_hashed_from(&store, &table.schema, &prefix, &mut reader)?.to_json()))
        }
    }
}

/// The reference for `<filepath@store>` attribute `attribute` to a file (or folder) already in
/// the store at `path`; nothing is written, and dj.gc never removes what such references name.
pub fn filepath_ref(table: &str, attribute: &str, path: &str) -> DjResult<JsonB> {
    let table = writable(table)?;
    let (codec, store_name) = super::column_codec(&table, attribute)?;
    if codec != Codec::Filepath {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("attribute {attribute} is not a <filepath@store> attribute"),
            "dj.object_put and dj.object_put_file store objects for the other store attributes.",
        ));
    }
    let store = super::open(&store_name)?;
    address::check_filepath(&store.spec, path)?;
    let (size, is_dir) = match store.head(path)? {
        Some(meta) => (Some(meta.size), false),
        None => {
            if !store.any_under(&format!("{path}/"))? {
                return Err(StoreError::new(
                    StoreErrorKind::NotFound,
                    format!("{path:?} is not in store {}", store.name),
                    "A <filepath@store> references a file that is already in the store; put it there first.",
                )
                .into());
            }
            (None, true)
        }
    };
    Ok(JsonB(json!({
        "path": path, "store": store.name, "size": size, "is_dir": is_dir, "timestamp": schema::now_iso()?,
    })))
}

/// Writes one schema-addressed object whole (bytes) or streamed (a file); returns its size.
fn write(store: &Store, path: &str, content: Content) -> DjResult<u64> {
    match content {
        Content::Bytes(b) => {
            store.put(path, b.to_vec())?;
            Ok(b.len() as u64)
        }
        Content::File(p) => {
            let file = open_file(&p)?;
            let mut reader = Cancellable(std::io::BufReader::with_capacity(1 << 20, file));
            let written = store.put_from(path, &mut reader, &mut |_| {});
            pgrx::check_for_interrupts!();
            Ok(written?)
        }
    }
}

fn not_a_blob(what: &str) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
        format!("{what} does not hold a blob (no mYm, dj0 or ZL123 header)"),
        "A <blob@store> attribute takes DataJoint's serialization; store other files in <attach@store> or <hash@store>.",
    )
}

/// Opens a server file for reading (not a folder).
fn open_file(p: &std::path::Path) -> DjResult<std::fs::File> {
    let file = std::fs::File::open(p).map_err(|e| file_error("open", p, e))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{:?} is a directory", p.display().to_string()),
            "Name a file; only <object@store> attributes take folders.",
        ));
    }
    Ok(file)
}

/// The table, once the caller is found to may write it.
pub fn writable(table: &str) -> DjResult<Table> {
    let table = catalog::resolve(table)?;
    check_writable(&table)?;
    Ok(table)
}

/// Refuses a table the caller may neither insert into nor update.
pub fn check_writable(table: &Table) -> DjResult<()> {
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
    Ok(())
}

/// Refuses a codec objects cannot be stored for, and a file name where it makes no sense.
fn check_codec(codec: Codec, attribute: &str, filename: Option<&str>) -> DjResult<()> {
    match (codec, filename) {
        (Codec::Blob | Codec::Hash | Codec::Npy, None) | (Codec::Attach, Some(_)) | (Codec::Object, _) => Ok(()),
        (Codec::Attach, None) => {
            Err(DjError::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("attribute {attribute} is an attachment and needs the file's name"),
                "Pass filename => 'name.ext'.",
            ))
        }
        (Codec::Blob | Codec::Hash | Codec::Npy, Some(_)) => {
            Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("attribute {attribute} is not an attachment or an object: it takes no file name"),
                "Leave filename out (it names attachments, and gives <object@> objects their extension).",
            ))
        }
        (other, _) => {
            Err(DjError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("attribute {attribute} is {other:?}-coded; objects are stored for <blob@>, <attach@>, <hash@>, <object@> and <npy@> attributes"),
                "",
            ))
        }
    }
}

/// Whether the caller has the privileges of the predefined role `role`.
fn has_role(role: &str) -> DjResult<bool> {
    Ok(catalog::read_one::<bool>(
        "SELECT pg_catalog.pg_has_role(CURRENT_USER, $1::pg_catalog.name, 'USAGE')",
        &[role.into()],
    )?
    .unwrap_or(false))
}

/// A server file's path, for a caller with the privileges of `role`.
pub fn server_path(path: &str, role: &str, verb: &str) -> DjResult<std::path::PathBuf> {
    if !has_role(role)? {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to {verb} server files"),
            format!("Only roles with the privileges of {role} may, as for COPY; others pass the bytes (dj.object_put, dj.object_read)."),
        ));
    }
    let p = std::path::PathBuf::from(path);
    if !p.is_absolute() {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{path:?} is not an absolute path"),
            "Name the server file by its absolute path.",
        ));
    }
    Ok(p)
}

fn file_error(what: &str, path: &std::path::Path, e: std::io::Error) -> DjError {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
        std::io::ErrorKind::PermissionDenied => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        _ => PgSqlErrorCode::ERRCODE_IO_ERROR,
    };
    DjError::new(
        code,
        format!("could not {what} file {:?}: {e}", path.display().to_string()),
        "The file is opened by the server's operating-system user.",
    )
}

/// Writes the object `r` names to the server file `path` (replaced if there), streamed, its
/// hash checked on the way; returns the bytes written.
pub fn get_file(
    r: &ObjectRef,
    path: &str,
    open: impl FnOnce(&ObjectRef) -> DjResult<Store>,
) -> DjResult<i64> {
    use std::io::Write;
    let target = server_path(path, "pg_write_server_files", "write")?;
    let store = open(r)?;
    // Written beside the target and moved over it once whole: a failed copy leaves what was there.
    let mut partial = target.clone().into_os_string();
    // SAFETY: a plain read of the backend's pid.
    partial.push(format!(".dj-partial-{}", unsafe { pg_sys::MyProcPid }));
    let partial = std::path::PathBuf::from(partial);
    let mut file = std::fs::File::create(&partial).map_err(|e| file_error("create", &partial, e))?;
    let mut stop = super::stop_if_interrupted;
    let done = match &r.hash {
        // Nothing to check: the kernel copies a file store's object.
        None => store.copy_into_file(&r.path, &mut file, &mut stop).map(|n| n as i64).map_err(DjError::from),
        Some(expected) => {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut hasher = address::BackgroundHasher::start();
            let copied = store.get_into(&r.path, &mut |chunk| {
                stop()?;
                hasher.update(chunk);
                out.write_all(chunk).map_err(|e| {
                    StoreError::new(StoreErrorKind::Io, format!("could not write {path:?}: {e}"), "")
                })
            });
            copied.map_err(DjError::from).and_then(|n| {
                out.flush().map_err(|e| file_error("write", &partial, e))?;
                if &hasher.finish() != expected {
                    return Err(StoreError::new(
                        StoreErrorKind::Corrupt,
                        format!("object {} does not match its hash {expected}", r.path),
                        "The object was changed or damaged in the store; restore it from a backup.",
                    )
                    .into());
                }
                Ok(n as i64)
            })
        }
    };
    let done = done.and_then(|n| {
        std::fs::rename(&partial, &target).map_err(|e| file_error("replace", &target, e))?;
        Ok(n)
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    pgrx::check_for_interrupts!();
    done
}
