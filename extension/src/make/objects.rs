//! A make function's objects over the extension's stores: each store opened once per call as the
//! role that asked (its grant checked by `objects::open`), uploads stored as `dj.object_put`
//! stores them, spool files where PostgreSQL keeps its temporary files (removed at a restart
//! should the backend die).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use datajoint_core::dependencies::Table;
use datajoint_core::host::{self, Content};
use datajoint_core::make::Row;
use datajoint_core::store::schema_path::KeyValue;
use datajoint_core::store::Store;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value as Json;

use crate::error::{DjError, DjResult};
use crate::objects::{self, put, schema};

/// The stores one make call opened.
#[derive(Default)]
pub struct Stores(HashMap<String, Store>);

impl Stores {
    pub fn get(&mut self, declared: Option<&str>) -> DjResult<&Store> {
        let name = objects::store_name(declared);
        if !self.0.contains_key(&name) {
            let store = objects::open(&name)?;
            self.0.insert(name.clone(), store);
        }
        Ok(&self.0[&name])
    }
}

/// Stores an upload for `attribute` of `table`, in the row with primary key `key`; returns the
/// reference's JSON text. The key is read as `dj.object_put`'s JSON key is, by the columns' types.
pub fn put(
    table: &Table,
    attribute: &str,
    key: &Row,
    filename: Option<&str>,
    content: Content,
) -> DjResult<String> {
    let mut given = serde_json::Map::new();
    for f in key {
        let value = host::key_value(&f.value).ok_or_else(|| {
            DjError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("the upload's key value for {} cannot address an object", f.name),
                "Schema-addressed objects are named by primary keys of numbers, text, dates, times, UUIDs and booleans.",
            )
        })?;
        let json = match value {
            KeyValue::Number(n) => serde_json::from_str(&n).unwrap_or(Json::String(n)),
            KeyValue::Bool(b) => Json::Bool(b),
            KeyValue::Text(s) | KeyValue::Iso(s) | KeyValue::DateTime(s) => Json::String(s),
        };
        given.insert(f.name.clone(), json);
    }
    let given = JsonB(Json::Object(given));
    put::check_writable(table)?;
    let content = match &content {
        Content::Bytes(b) => put::Content::Bytes(b),
        Content::File(f) => put::Content::File(f.path().to_path_buf()),
    };
    let key_values = || schema::key_of(table, Some(&given));
    let reference = put::put_into(table, attribute, content, filename, None, &key_values, false)?;
    Ok(reference.0.to_string())
}

/// A fresh spool file path: `base/pgsql_tmp/pgsql_tmp<pid>.dj_upload<n>` under the data
/// directory. A spool file is removed when its upload is stored or dropped; what a backend that
/// exits without unwinding (FATAL) leaves is removed by its exit callback, and what a crashed one
/// left by PostgreSQL when it restarts (or by the next backend with that pid).
pub fn spool_path() -> DjResult<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(SPOOL_DIR);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not create the temporary directory {}: {e}", dir.display()),
            "",
        ));
    }
    let n = N.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        // This process's first spool file: none of its name can be ours yet.
        remove_spool_files();
        // SAFETY: registers a callback PostgreSQL calls at process exit, with no argument.
        unsafe { pg_sys::on_proc_exit(Some(remove_at_exit), pg_sys::Datum::from(0)) };
    }
    Ok(dir.join(format!("{}{n}", spool_prefix())))
}

const SPOOL_DIR: &str = "base/pgsql_tmp";

fn spool_prefix() -> String {
    // SAFETY: a plain read of the backend's pid.
    format!("pgsql_tmp{}.dj_upload", unsafe { pg_sys::MyProcPid })
}

/// Removes this process's spool files.
fn remove_spool_files() {
    let prefix = spool_prefix();
    let Ok(entries) = std::fs::read_dir(SPOOL_DIR) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn remove_at_exit(_code: i32, _arg: pg_sys::Datum) {
    remove_spool_files();
}
