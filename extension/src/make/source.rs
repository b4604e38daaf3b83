//! The key source of a Computed or Imported table and the code its make runs: what every
//! populate (in this backend or in the worker pool) starts from.

use datajoint_core::dependencies::Table;
use datajoint_core::naming::Tier;
use datajoint_core::populate::{self, KeyParent, Order};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::catalog;
use crate::error::{DjError, DjResult};

/// The key source of a table: its primary-key parents joined, projected to its key, restricted
/// by a checked condition.
pub struct Source {
    pub name: Table,
    pub key: Vec<String>,
    pub sql: String,
    pub condition: Option<String>,
}

impl Source {
    /// Its keys (only those missing from the table when `missing`), in `order`, at most `limit`.
    pub fn keys(&self, missing: bool, order: Order, limit: Option<i64>) -> String {
        populate::keys_sql(&self.sql, &self.name, &self.key, self.condition.as_deref(), missing, order, limit)
    }

    pub fn count(&self, missing: bool) -> DjResult<i64> {
        count_rows(&self.keys(missing, Order::Original, None))
    }
}

pub fn count_rows(sql: &str) -> DjResult<i64> {
    Ok(catalog::read_one::<i64>(&format!("SELECT pg_catalog.count(*) FROM ({sql}) AS q"), &[])?.unwrap_or(0))
}

/// The key source of the Computed or Imported table `name`.
pub fn source_of(name: Table, restriction: Option<&str>) -> DjResult<Source> {
    auto_populated(&name)?;
    let deps = catalog::dependencies()?;
    let key: Vec<String> = deps.primary_key(&name).map(|k| k.to_vec()).unwrap_or_default();
    let parents: Vec<KeyParent> = deps
        .parents(&name)
        .into_iter()
        .filter(|(_, r)| r.primary)
        .map(|(p, r)| KeyParent { table: p.clone(), attributes: r.attributes.clone() })
        .collect();
    let sql = populate::key_source(&key, &parents).ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("{} has primary-key attributes no parent provides", name.qualified()),
            "A Computed or Imported table's key comes from its parents (-> Parent lines above ---).",
        )
    })?;
    let condition = restriction
        .map(|r| {
            populate::key_condition(r, &key).map_err(|e| {
                DjError::new(
                    PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                    format!("restriction on the key source of {}: {}", name.qualified(), e.message),
                    format!("{} The key source's attributes: {}.", e.hint, key.join(", ")),
                )
            })
        })
        .transpose()?;
    Ok(Source { name, key, sql, condition })
}

/// The code a table's make runs: (the module name it was bound under, its sha256).
pub fn make_of(name: &Table) -> DjResult<(String, String)> {
    let found = Spi::connect(|client| {
        let rows = client.select(
            "SELECT k.module, k.sha256 FROM dj.makes k \
             WHERE k.schema_name OPERATOR(pg_catalog.=) $1 AND k.table_name OPERATOR(pg_catalog.=) $2",
            Some(1),
            &[name.schema.as_str().into(), name.name.as_str().into()],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let row = rows.first();
        Ok(Some((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
    })?;
    found.ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{} has no make function", name.qualified()),
            format!(
                "Register a module and attach it: SELECT dj.set_make('{}', 'module_name');",
                name.qualified().replace('\'', "''")
            ),
        )
    })
}

/// Whether the table's binding asks for a fresh instance of its make for every key
/// (`dj.set_make(..., fresh_instance => true)`).
pub fn fresh_instance_of(name: &Table) -> DjResult<bool> {
    Ok(crate::catalog::read_one::<bool>(
        "SELECT k.fresh_instance FROM dj.makes k \
         WHERE k.schema_name OPERATOR(pg_catalog.=) $1 AND k.table_name OPERATOR(pg_catalog.=) $2",
        &[name.schema.as_str().into(), name.name.as_str().into()],
    )?
    .unwrap_or(false))
}

/// Refuses tables that no make fills.
pub fn auto_populated(name: &Table) -> DjResult<()> {
    match Tier::of_table(&name.name) {
        Some(Tier::Computed | Tier::Imported) => Ok(()),
        Some(Tier::Part) => Err(DjError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{} is a part table: its master's make fills it", name.qualified()),
            "Populate the master table; its make inserts the parts.",
        )),
        _ => Err(DjError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{} is not a Computed or Imported table", name.qualified()),
            "Only Computed and Imported tables have make functions; insert into Manual and Lookup tables directly.",
        )),
    }
}

/// A populate order given by name (original, reverse, random).
pub fn order(text: &str) -> DjResult<Order> {
    Order::parse(text).ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("\"{text}\" is not a populate order"),
            "The orders are original, reverse and random.",
        )
    })
}
