//! Server-enforced tiers: with `dj.enforce_tiers(schema)`, Computed, Imported and Part tables of
//! the schema accept writes only from DataJoint's own operations (populate, dj.delete), never
//! from a direct INSERT, UPDATE, DELETE or TRUNCATE. Off by default, so datajoint-python clients,
//! which write those tables themselves, keep working.

use std::cell::RefCell;

use datajoint_core::naming::{self, Tier};
use pgrx::prelude::*;

use crate::catalog::{self, TableName};
use crate::error::{DjResult, OrRaise};

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
    pub fn begin(operation: &'static str, tables: &[TableName]) -> DjResult<PipelineWrite> {
        let mut oids = Vec::with_capacity(tables.len());
        for t in tables {
            if let Some(oid) =
                catalog::read_one::<pg_sys::Oid>("SELECT $1::regclass::oid", &[t.qualified().into()])?
            {
                oids.push(oid);
            }
        }
        PERMITS.with(|p| p.borrow_mut().push((operation, oids)));
        Ok(PipelineWrite(()))
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

/// Read by the guard trigger: whether a running DataJoint operation may do `operation` on `table`.
#[pg_extern(volatile, parallel_restricted, name = "_pipeline_write_allowed")]
fn pipeline_write_allowed(table: pg_sys::Oid, operation: &str) -> bool {
    PERMITS.with(|p| p.borrow().iter().any(|(op, oids)| *op == operation && oids.contains(&table)))
}

const GUARD: &str = "dj_tier_guard";

/// Computed and Imported tables and their parts (parts of Manual and Lookup masters are entered
/// by hand like their masters).
fn guarded_tier(table: &str) -> bool {
    match Tier::of_table(table) {
        Some(Tier::Computed | Tier::Imported) => true,
        Some(Tier::Part) => naming::split_part(table).is_some_and(|(master, _)| {
            matches!(Tier::of_table(master), Some(Tier::Computed | Tier::Imported))
        }),
        _ => false,
    }
}

/// Adds the guard trigger to `table` (Computed, Imported and Part tables only).
pub fn guard(name: &TableName) -> DjResult<bool> {
    if !guarded_tier(&name.table) {
        return Ok(false);
    }
    Spi::run(&format!(
        "CREATE OR REPLACE TRIGGER {GUARD} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} \
         FOR EACH STATEMENT EXECUTE FUNCTION dj._tier_guard()",
        name.qualified()
    ))?;
    Ok(true)
}

/// Called by the `dj_guard_new_tables` event trigger for each table created in a schema that
/// enforces tiers, whoever creates it (dj.declare, datajoint-python, plain SQL).
#[pg_extern(volatile, parallel_unsafe, name = "_guard_table")]
fn guard_table(table: pg_sys::Oid) -> bool {
    const FN: &str = "dj._guard_table";
    match catalog::table_name_of(table).or_raise(FN) {
        Some(name) => guard(&name).or_raise(FN),
        None => false,
    }
}

/// Whether the schema enforces tiers.
pub fn enforced(schema: &str) -> DjResult<bool> {
    Ok(catalog::read_one::<bool>(
        "SELECT coalesce((SELECT enforce_tiers FROM dj.schema_settings WHERE schema_name = $1), false)",
        &[schema.into()],
    )?
    .unwrap_or(false))
}

/// `dj.enforce_tiers(schema, enforce)`: turns server-enforced tiers on or off for a schema;
/// returns the number of tables guarded (on) or released (off).
#[pg_extern(volatile, parallel_unsafe)]
fn enforce_tiers(schema: &str, enforce: default!(bool, true)) -> i64 {
    set_enforcement(schema, enforce).or_raise("dj.enforce_tiers")
}

fn set_enforcement(schema: &str, enforce: bool) -> DjResult<i64> {
    if !catalog::schema_exists(schema)? {
        return Err(crate::error::DjError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("schema {schema} does not exist"),
            "Declare a table in it first (dj.declare creates the schema).",
        ));
    }
    let owner = catalog::read_one::<bool>(
        "SELECT pg_has_role(nspowner, 'USAGE') FROM pg_namespace WHERE nspname = $1",
        &[schema.into()],
    )?;
    if owner != Some(true) {
        return Err(crate::error::DjError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("only the owner of schema {schema} can change its tier enforcement"),
            "Ask the schema's owner, or a member of the owning role.",
        ));
    }
    Spi::run_with_args(
        "INSERT INTO dj.schema_settings (schema_name, enforce_tiers) VALUES ($1, $2) \
         ON CONFLICT (schema_name) DO UPDATE SET enforce_tiers = EXCLUDED.enforce_tiers",
        &[schema.into(), enforce.into()],
    )?;
    let mut count = 0;
    for name in catalog::tables(Some(schema))? {
        if !guarded_tier(&name.table) {
            continue;
        }
        if enforce {
            guard(&name)?;
        } else {
            Spi::run(&format!("DROP TRIGGER IF EXISTS {GUARD} ON {}", name.qualified()))?;
        }
        count += 1;
    }
    Ok(count)
}

extension_sql!(
    r#"
CREATE FUNCTION dj._tier_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
BEGIN
    IF NOT dj._pipeline_write_allowed(TG_RELID, TG_OP) THEN
        RAISE EXCEPTION '% on %.% is not allowed: the schema enforces DataJoint tiers', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Computed, Imported and Part tables are written by dj.populate and cleared with dj.delete. The schema owner can turn this off with dj.enforce_tiers(schema, false).';
    END IF;
    RETURN NULL;
END
$guard$;
COMMENT ON FUNCTION dj._tier_guard() IS 'Trigger of tier-enforcing schemas: refuses direct writes to Computed, Imported and Part tables.';
COMMENT ON FUNCTION dj._pipeline_write_allowed(oid, text) IS 'Internal: whether a DataJoint operation running in this backend (populate, dj.delete) may do this operation on this table.';
COMMENT ON FUNCTION dj._guard_table(oid) IS 'Internal: add the tier guard to a new table of a tier-enforcing schema.';
CREATE FUNCTION dj._guard_new_tables() RETURNS event_trigger LANGUAGE plpgsql AS $guard$
DECLARE
    created record;
BEGIN
    FOR created IN
        SELECT c.objid, c.schema_name FROM pg_event_trigger_ddl_commands() c
        WHERE c.command_tag = 'CREATE TABLE' AND c.object_type = 'table'
    LOOP
        IF EXISTS (SELECT 1 FROM dj.schema_settings s WHERE s.schema_name = created.schema_name AND s.enforce_tiers) THEN
            PERFORM dj._guard_table(created.objid);
        END IF;
    END LOOP;
END
$guard$;
COMMENT ON FUNCTION dj._guard_new_tables() IS 'Event trigger: guards tables created in tier-enforcing schemas, whoever creates them.';
CREATE EVENT TRIGGER dj_guard_new_tables ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION dj._guard_new_tables();
COMMENT ON FUNCTION dj.enforce_tiers(text, boolean) IS
  'Turn server-enforced tiers on (default) or off for a schema: direct INSERT, UPDATE, DELETE and TRUNCATE on its Computed, Imported and Part tables are refused outside populate and dj.delete. Returns the number of tables affected.';
"#,
    name = "tier_guard",
    requires = [pipeline_write_allowed, enforce_tiers, guard_table]
);
