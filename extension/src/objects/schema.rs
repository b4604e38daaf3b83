//! Schema-addressed objects (`<object@store>`, `<npy@store>`) as the server writes them: the
//! row's primary key from the caller's JSON, checked against the table; a random token; the path
//! `datajoint_core::store::schema_path` builds; the writer's lock on it until its transaction
//! ends (so dj.gc leaves it, a folder's files included).

use datajoint_core::dependencies::Table;
use datajoint_core::store::schema_path::{self, KeyValue};
use datajoint_core::store::Store;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value as Json;

use super::locks;
use crate::catalog;
use crate::error::{DjError, DjResult};

fn bad_key(table: &Table, why: String, primary: &[String]) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("{why} ({} is addressed by its primary key)", table.qualified()),
        format!(
            "Pass the row's primary key: key => '{{{}}}'.",
            primary.iter().map(|k| format!("\"{k}\": ...")).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// The row's primary key, in the table's order, from `key` (a JSON object with exactly the
/// primary-key attributes).
pub fn key_of(table: &Table, key: Option<&JsonB>) -> DjResult<Vec<(String, KeyValue)>> {
    let columns = catalog::columns(table)?;
    let primary: Vec<String> = columns.iter().filter(|c| c.in_key).map(|c| c.name.clone()).collect();
    let Some(Json::Object(given)) = key.map(|k| &k.0) else {
        return Err(bad_key(table, "a schema-addressed object needs the row's primary key".into(), &primary));
    };
    if let Some(extra) = given.keys().find(|k| !primary.contains(k)) {
        return Err(bad_key(table, format!("{extra:?} is not an attribute of the primary key"), &primary));
    }
    let mut out = Vec::with_capacity(primary.len());
    for c in columns.iter().filter(|c| c.in_key) {
        let v = given
            .get(&c.name)
            .ok_or_else(|| bad_key(table, format!("the key has no value for {}", c.name), &primary))?;
        let value = match v {
            Json::Number(n) => KeyValue::Number(n.to_string()),
            Json::Bool(b) => KeyValue::Bool(*b),
            Json::String(s) if c.sql_type.starts_with("timestamp") => KeyValue::DateTime(s.clone()),
            Json::String(s) if c.sql_type == "date" || c.sql_type.starts_with("time") => {
                KeyValue::Iso(s.clone())
            }
            Json::String(s) => KeyValue::Text(s.clone()),
            _ => {
                return Err(bad_key(
                    table,
                    format!("the value of {} is not a number, text or boolean", c.name),
                    &primary,
                ))
            }
        };
        out.push((c.name.clone(), value));
    }
    Ok(out)
}

/// A fresh path for the object of `attribute` in the row `key`, held by this transaction.
pub fn new_path(
    store: &Store,
    table: &Table,
    attribute: &str,
    key: &[(String, KeyValue)],
    ext: Option<&str>,
) -> DjResult<String> {
    let mut random = [0u8; 16];
    // SAFETY: fills the buffer it is given, of the length it is given.
    let ok = unsafe { pg_sys::pg_strong_random(random.as_mut_ptr().cast(), random.len()) };
    if !ok {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "could not generate random bytes for an object's token",
            "",
        ));
    }
    let token = schema_path::token(&random, store.spec.token_length);
    let path =
        schema_path::object_path(&store.spec, &table.schema, &table.name, attribute, key, ext, &token)?;
    locks::hold(&store.name, &path);
    Ok(path)
}

/// Now, as Python's `datetime.now(timezone.utc).isoformat()` prints it.
pub fn now_iso() -> DjResult<String> {
    Ok(catalog::read_one::<String>(
        "SELECT pg_catalog.to_char(pg_catalog.timezone('UTC', pg_catalog.clock_timestamp()), 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')",
        &[],
    )?
    .unwrap_or_default())
}
