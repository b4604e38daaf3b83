//! Writes to Computed, Imported and Part tables: which DataJoint operation running in this
//! backend may write which tables through the tier guard, and whether a schema enforces tiers.

use std::cell::RefCell;

use pgrx::prelude::*;

use crate::catalog;
use crate::error::DjResult;
use datajoint_core::dependencies::Table;

thread_local! {
    /// What DataJoint operations running in this backend may do to guarded tables: an operation
    /// (`DELETE`, `INSERT`) on a set of tables. Only Rust code changes it: no SQL client can.
    static PERMITS: RefCell<Vec<(&'static str, Vec<pg_sys::Oid>)>> = const { RefCell::new(Vec::new()) };
}

/// Held while a DataJoint operation writes Computed, Imported or Part tables: it lets `operation`
/// through the guard on exactly `tables`, nothing else (a user trigger that fires meanwhile gets
/// no more than it would otherwise). Released on every exit, errors included (a Postgres ERROR
/// unwinds through Rust frames).
pub struct PipelineWrite(());

impl PipelineWrite {
    pub fn begin(operation: &'static str, tables: &[Table]) -> DjResult<PipelineWrite> {
        let oids = tables.iter().map(catalog::oid_of).collect::<DjResult<Vec<_>>>()?;
        Ok(Self::of_oids(operation, oids))
    }

    /// The same for tables already looked up (outside any transaction too).
    pub fn of_oids(operation: &'static str, oids: Vec<pg_sys::Oid>) -> PipelineWrite {
        PERMITS.with(|p| p.borrow_mut().push((operation, oids)));
        PipelineWrite(())
    }
}

impl Drop for PipelineWrite {
    fn drop(&mut self) {
        PERMITS.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.pop();
            }
        });
    }
}

/// Whether a running DataJoint operation may do `operation` on `table` (read by the guard).
pub fn allowed(table: pg_sys::Oid, operation: &str) -> bool {
    PERMITS.with(|p| p.borrow().iter().any(|(op, oids)| *op == operation && oids.contains(&table)))
}

/// Whether the schema enforces tiers.
pub fn enforced(schema: &str) -> DjResult<bool> {
    Ok(catalog::read_one::<bool>(
        "SELECT coalesce((SELECT enforce_tiers FROM dj.schema_settings WHERE schema_name = $1), false)",
        &[schema.into()],
    )?
    .unwrap_or(false))
}
