//! Creating pipeline tables from compiled declarations (`dj.declare`), and the hidden jobs table
//! of a computed table, created at declaration or on a populate's first failure.

use datajoint_core::declare::{self, Options, Target};
use datajoint_core::definition;
use datajoint_core::naming::Tier;
use datajoint_core::{populate, sql};
use pgrx::prelude::*;

use crate::catalog;
use crate::error::DjResult;
use datajoint_core::dependencies::Table;

/// Creates the jobs table of a Computed or Imported table (`~~name`, laid out as
/// datajoint-python 2.3.5 lays it out) unless it exists. Creators of one table's jobs table take
/// the same transaction-level lock first, so concurrent populates (or a populate nested in a
/// trigger) never both create it.
pub fn ensure_jobs_table(target: &Table) -> DjResult<()> {
    let jobs = populate::jobs::jobs_table(target);
    if catalog::table_exists(&jobs.schema, &jobs.name)? {
        return Ok(());
    }
    let (class, object) = populate::jobs_table_lock(catalog::oid_of(target)?.to_u32());
    Spi::run_with_args("SELECT pg_catalog.pg_advisory_xact_lock($1, $2)", &[class.into(), object.into()])?;
    if catalog::table_exists(&jobs.schema, &jobs.name)? {
        return Ok(());
    }
    let key: Vec<(String, String)> =
        catalog::columns(target)?.into_iter().filter(|c| c.in_key).map(|c| (c.name, c.sql_type)).collect();
    if key.is_empty() {
        return Ok(());
    }
    let definition = populate::jobs::jobs_definition(target, &key);
    declare_hidden(&jobs, &definition)
}

/// Declares a hidden table (a `~~name` jobs table) from a definition without foreign keys.
fn declare_hidden(name: &Table, definition: &str) -> DjResult<()> {
    let parsed = definition::parse(definition)?;
    let target = Target { schema: name.schema.clone(), table: name.name.clone(), tier: Tier::Manual };
    let ddl = declare::compile(&parsed, &target, &[], Options::default())?;
    create(&target, &ddl)
}

/// Runs a compiled declaration in an existing schema: enum types, table, indexes, comments,
/// `~lineage` rows.
pub fn create(target: &Target, ddl: &declare::TableDdl) -> DjResult<()> {
    for (type_name, values) in &ddl.enums {
        // Enum types are shared by every table of the schema with the same value set.
        if !catalog::type_exists(&target.schema, type_name)? {
            Spi::run(&declare::create_enum_sql(&target.schema, type_name, values))?;
        }
    }
    Spi::run(&ddl.create_table)?;
    for statement in ddl.indexes.iter().chain(&ddl.comments) {
        Spi::run(statement)?;
    }
    write_lineage(target, &ddl.lineage)
}

/// Replaces the table's `~lineage` rows (datajoint-python's table, created on first use).
fn write_lineage(target: &Target, rows: &[(String, String)]) -> DjResult<()> {
    let lineage = sql::qualified(&target.schema, "~lineage");
    if !catalog::table_exists(&target.schema, "~lineage")? {
        Spi::run(&format!(
        "CREATE TABLE {lineage} (\n\"table_name\" VARCHAR(64) NOT NULL,\n\"attribute_name\" VARCHAR(64) NOT NULL,\n\"lineage\" VARCHAR(255) NOT NULL,\nPRIMARY KEY (\"table_name\", \"attribute_name\")\n) "
        ))?;
    }
    Spi::run_with_args(
        &format!("DELETE FROM {lineage} WHERE table_name = $1"),
        &[target.table.as_str().into()],
    )?;
    let attributes: Vec<&str> = rows.iter().map(|(a, _)| a.as_str()).collect();
    let values: Vec<&str> = rows.iter().map(|(_, v)| v.as_str()).collect();
    Spi::run_with_args(
        &format!(
            "INSERT INTO {lineage} (table_name, attribute_name, lineage) \
             SELECT $1, a, v FROM unnest($2::text[], $3::text[]) AS u(a, v) \
             ON CONFLICT (table_name, attribute_name) DO UPDATE SET lineage = EXCLUDED.lineage"
        ),
        &[target.table.as_str().into(), attributes.into(), values.into()],
    )?;
    Ok(())
}
