//! Deleting through a cascade plan while holding the tier guard's permission (`dj.delete`, and
//! `dj.populate`'s recompute_stale).

use datajoint_core::cascade::{self, Step};
use datajoint_core::dependencies::Table;
use pgrx::prelude::*;

use super::writes::PipelineWrite;
use crate::catalog;
use crate::error::DjResult;
use crate::security;

/// Runs the deletes of a cascade plan, children first (each condition's subqueries still see the
/// parent rows), holding the tier guard's permission for exactly those tables; returns the rows
/// removed per step.
pub fn execute(steps: &[Step]) -> DjResult<Vec<i64>> {
    let tables: Vec<Table> =
        steps.iter().map(|s| Table { schema: s.table.schema.clone(), name: s.table.name.clone() }).collect();
    // Nothing a user put on the search path (a function or operator of the same name) may run
    // while the deletes hold that permission.
    let _pin = security::pin();
    let _writing = PipelineWrite::begin("DELETE", &tables)?;
    let mut removed = vec![0i64; steps.len()];
    for i in (0..steps.len()).rev() {
        removed[i] = Spi::get_one::<i64>(&cascade::delete_sql(steps, i))?.unwrap_or(0);
    }
    Ok(removed)
}

/// Deletes the rows of `name` matching `condition` (SQL this extension built, not user text)
/// and everything downstream of them.
pub fn delete_where(name: &Table, condition: &str) -> DjResult<()> {
    let steps = cascade::plan(&*catalog::dependencies()?, name, Some(condition.to_string()));
    execute(&steps).map(|_| ())
}
