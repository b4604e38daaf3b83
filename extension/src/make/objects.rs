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
use datajoint_core::store::Store;
use pgrx::prelude::*;

use crate::error::{DjError, DjResult};
use crate::objects::{self, put};

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
/// reference's JSON text.
pub fn put(
    table: &Table,
    attribute: &str,
    key: &Row,
    filename: Option<&str>,
    content: Content,
) -> DjResult<String> {
    let key_values = || {
        key.iter()
            .map(|f| match host::key_value(&f.value) {
                Some(v) => Ok((f.name.clone(), v)),
                None => Err(DjError::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("the upload's key value for {} cannot address an object", f.name),
                    "Schema-addressed objects are named by primary keys of numbers, text, dates, times, UUIDs and booleans.",
                )),
            })
            .collect()
    };
    let table = put::writable(&table.qualified())?;
    let content = match &content {
        Content::Bytes(b) => put::Content::Bytes(b),
        Content::File(f) => put::Content::File(f.path().to_path_buf()),
    };
    let reference = put::put_into(&table, attribute, content, filename, None, &key_values)?;
    Ok(reference.0.to_string())
}

/// A fresh spool file path: `base/pgsql_tmp/pgsql_tmp<pid>.dj_upload<n>` under the data
/// directory, which PostgreSQL empties when it starts.
pub fn spool_path() -> DjResult<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from("base/pgsql_tmp");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not create the temporary directory {}: {e}", dir.display()),
            "",
        ));
    }
    // SAFETY: a plain read of the backend's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    Ok(dir.join(format!("pgsql_tmp{pid}.dj_upload{}", N.fetch_add(1, Ordering::Relaxed))))
}
