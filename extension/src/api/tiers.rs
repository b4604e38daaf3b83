//! Server-enforced tiers: with `dj.enforce_tiers(schema)`, Computed, Imported and Part tables of
//! the schema accept writes only from DataJoint's own operations (populate, dj.delete), never
//! from a direct INSERT, UPDATE, DELETE or TRUNCATE. Off by default, so datajoint-python clients,
//! which write those tables themselves, keep working. A session holding job reservations (as
//! datajoint-python's `populate(reserve_jobs=True)` does) may insert the rows of the keys it holds.

use datajoint_core::naming::{self, Tier};
use datajoint_core::populate;
use pgrx::prelude::*;

use crate::catalog;
use crate::error::{DjResult, OrRaise};
use crate::pipeline::writes;
use crate::security;
use datajoint_core::dependencies::Table;

/// Read by the guard trigger: whether a running DataJoint operation may do `operation` on `table`.
#[pg_extern(volatile, parallel_restricted, name = "_pipeline_write_allowed")]
fn pipeline_write_allowed(table: pg_sys::Oid, operation: &str) -> bool {
    writes::allowed(table, operation)
}

const GUARD: &str = "dj_tier_guard";
/// The guard's row triggers: check the rows a session holding job reservations inserted or
/// updated (datajoint-python's populate inserts a key's rows, then updates their `_job_*`
/// columns).
const ROWS_GUARD: &str = "dj_tier_guard_rows";
const UPDATES_GUARD: &str = "dj_tier_guard_updates";

/// The master of a part table (the table itself otherwise): whose jobs table holds its keys.
fn master_of(name: &Table) -> Table {
    match naming::split_part(&name.name) {
        Some((master, _)) => Table::new(name.schema.clone(), master.to_string()),
        None => name.clone(),
    }
}

/// Read by the guard trigger: whether this session holds a reservation in the jobs table of
/// `table`'s master (datajoint-python's `populate(reserve_jobs=True)` does, while it makes a key),
/// and the table has the trigger that checks each inserted row's key against those reservations.
#[pg_extern(volatile, parallel_restricted, name = "_holds_reservation")]
fn holds_reservation(table: pg_sys::Oid) -> bool {
    let _pin = security::pin();
    holds(table).unwrap_or(false)
}

fn holds(table: pg_sys::Oid) -> DjResult<bool> {
    let Some(name) = catalog::table_name_of(table)? else { return Ok(false) };
    let checked = catalog::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 \
                          AND t.tgname OPERATOR(pg_catalog.=) $2::pg_catalog.name)",
        &[table.into(), ROWS_GUARD.into()],
    )?;
    let jobs = populate::jobs::jobs_table(&master_of(&name));
    if checked != Some(true)
        || !catalog::table_exists(&jobs.schema, &jobs.name)?
        || !catalog::may_select(&jobs)?
    {
        return Ok(false);
    }
    Ok(catalog::read_one::<bool>(
        &format!(
            "SELECT EXISTS (SELECT FROM {} WHERE \"status\" OPERATOR(pg_catalog.=) 'reserved' \
             AND \"connection_id\" OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())",
            jobs.qualified()
        ),
        &[],
    )?
    .unwrap_or(false))
}

/// Read by the guard's row triggers: a query over the trigger's transition table `rows`
/// (`dj_new_rows` or `dj_old_rows`) that is true when every row's key is reserved by this session
/// in the jobs table of the table's master.
#[pg_extern(stable, parallel_safe, name = "_reserved_rows_sql")]
fn reserved_rows_sql(table: pg_sys::Oid, rows: &str) -> String {
    let _pin = security::pin();
    if rows != "dj_new_rows" && rows != "dj_old_rows" {
        return "SELECT false".into();
    }
    let sql = (|| {
        let Some(name) = catalog::table_name_of(table)? else { return Ok(None) };
        let master = master_of(&name);
        let key: Vec<String> =
            catalog::columns(&master)?.into_iter().filter(|c| c.in_key).map(|c| c.name).collect();
        let jobs = populate::jobs::jobs_table(&master);
        if key.is_empty() || !catalog::table_exists(&jobs.schema, &jobs.name)? {
            return Ok(None);
        }
        let on: Vec<String> = key
            .iter()
            .map(|k| format!("j.{c} OPERATOR(pg_catalog.=) n.{c}", c = datajoint_core::sql::ident(k)))
            .collect();
        Ok::<_, crate::error::DjError>(Some(format!(
            "SELECT NOT EXISTS (SELECT FROM {rows} AS n WHERE NOT EXISTS (SELECT FROM {} AS j WHERE {} \
             AND j.\"status\" OPERATOR(pg_catalog.=) 'reserved' \
             AND j.\"connection_id\" OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()))",
            jobs.qualified(),
            on.join(" AND ")
        )))
    })()
    .or_raise("dj._reserved_rows_sql");
    sql.unwrap_or_else(|| "SELECT false".into())
}

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

/// Adds the guard trigger to `table` (Computed, Imported and Part tables only) unless it has it.
/// Returns whether the table is one the guard is for.
pub fn guard(name: &Table) -> DjResult<bool> {
    if !guarded_tier(&name.name) {
        return Ok(false);
    }
    // The row guard's function is new in 0.2.0: a catalog not yet updated (the new library, before
    // ALTER EXTENSION UPDATE) gets the statement guard alone, which lets no reservation through.
    let rows_guard = catalog::read_one::<bool>(
        "SELECT pg_catalog.to_regprocedure('dj._tier_guard_rows()') IS NOT NULL",
        &[],
    )?
    .unwrap_or(false);
    let present = catalog::read_one::<i64>(
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t \
                        WHERE t.tgrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass \
                          AND t.tgname OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.name[])",
        &[name.qualified().into(), vec![GUARD, ROWS_GUARD, UPDATES_GUARD].into()],
    )?;
    if present == Some(if rows_guard { 3 } else { 1 }) {
        return Ok(true);
    }
    Spi::run(&format!(
        "CREATE OR REPLACE TRIGGER {GUARD} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} \
         FOR EACH STATEMENT EXECUTE FUNCTION dj._tier_guard()",
        name.qualified()
    ))?;
    if rows_guard {
        Spi::run(&format!(
            "CREATE OR REPLACE TRIGGER {ROWS_GUARD} AFTER INSERT ON {t} REFERENCING NEW TABLE AS dj_new_rows \
             FOR EACH STATEMENT EXECUTE FUNCTION dj._tier_guard_rows(); \
             CREATE OR REPLACE TRIGGER {UPDATES_GUARD} AFTER UPDATE ON {t} \
             REFERENCING OLD TABLE AS dj_old_rows NEW TABLE AS dj_new_rows \
             FOR EACH STATEMENT EXECUTE FUNCTION dj._tier_guard_rows()",
            t = name.qualified()
        ))?;
    }
    Ok(true)
}

/// Called by the `dj_guard_new_tables` event trigger for each table created (or renamed, or moved)
/// in a schema that enforces tiers, whoever does it (dj.declare, datajoint-python, plain SQL).
/// Returns whether the table is one the guard is for.
#[pg_extern(volatile, parallel_unsafe, name = "_guard_table")]
fn guard_table(table: pg_sys::Oid) -> bool {
    let _pin = security::pin();
    const FN: &str = "dj._guard_table";
    match catalog::table_name_of(table).or_raise(FN) {
        Some(name) => guard(&name).or_raise(FN),
        None => false,
    }
}

/// Whether a DDL command reported to the `dj_guard_new_tables` event trigger can give a table its
/// name or schema: CREATE TABLE, CREATE TABLE AS, SELECT INTO, ALTER TABLE ... RENAME TO / SET
/// SCHEMA. ALTER TABLE's other subcommands (ADD CONSTRAINT, ADD COLUMN, ...) cannot, and a dump's
/// restore runs them on tables whose guard it creates itself.
#[pg_extern(
    immutable,
    parallel_safe,
    sql = r#"CREATE FUNCTION dj."_names_table"("command" pg_ddl_command) RETURNS bool IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"#
)]
fn names_table(command: pgrx::Internal) -> bool {
    // SAFETY: event triggers pass a CollectedCommand as pg_ddl_command; its parse tree is a node.
    unsafe {
        let Some(cmd) = command.get::<pg_sys::CollectedCommand>() else { return false };
        if cmd.type_ != pg_sys::CollectedCommandType::SCT_Simple || cmd.parsetree.is_null() {
            return false;
        }
        matches!(
            (*cmd.parsetree).type_,
            pg_sys::NodeTag::T_CreateStmt
                | pg_sys::NodeTag::T_CreateTableAsStmt
                | pg_sys::NodeTag::T_RenameStmt
                | pg_sys::NodeTag::T_AlterObjectSchemaStmt
        )
    }
}

/// `dj.enforce_tiers(schema, enforce)`: turns server-enforced tiers on or off for a schema;
/// returns the number of tables guarded (on) or released (off).
#[pg_extern(volatile, parallel_unsafe)]
fn enforce_tiers(schema: &str, enforce: default!(bool, true)) -> i64 {
    let _pin = security::pin();
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
        if !guarded_tier(&name.name) {
            continue;
        }
        if enforce {
            guard(&name)?;
        } else {
            Spi::run(&format!(
                "DROP TRIGGER IF EXISTS {GUARD} ON {t}; DROP TRIGGER IF EXISTS {ROWS_GUARD} ON {t}; \
                 DROP TRIGGER IF EXISTS {UPDATES_GUARD} ON {t}",
                t = name.qualified()
            ))?;
        }
        count += 1;
    }
    Ok(count)
}

extension_sql!(
    r#"
-- Runs for every write statement on a guarded table, so it takes no SET clause (which would cost
-- every statement a settings round trip): the one call it makes is schema-qualified with exact
-- argument types, and NOT is syntax, so no search_path can substitute anything.
CREATE FUNCTION dj._tier_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
BEGIN
    IF NOT dj._pipeline_write_allowed(TG_RELID, TG_OP) THEN
        -- A session holding job reservations (datajoint-python's populate(reserve_jobs=True))
        -- may insert and update; the row triggers then check that it holds every row's key.
        IF TG_OP OPERATOR(pg_catalog.=) ANY ('{INSERT,UPDATE}') THEN
            IF dj._holds_reservation(TG_RELID) THEN
                RETURN NULL;
            END IF;
        END IF;
        RAISE EXCEPTION '% on %.% is not allowed: the schema enforces DataJoint tiers', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Computed, Imported and Part tables are written by dj.populate and cleared with dj.delete (or by a session holding the key''s reservation in the jobs table). The schema owner can turn this off with dj.enforce_tiers(schema, false).';
    END IF;
    RETURN NULL;
END
$guard$;
COMMENT ON FUNCTION dj._tier_guard() IS 'Trigger of tier-enforcing schemas: refuses direct writes to Computed, Imported and Part tables, but inserts and updates of a session holding job reservations (checked row by row).';
-- The second trigger: after an insert let through for a session's reservations, every row's key
-- must be one it holds. The query it runs is built from catalog names, all qualified; the
-- transition table shadows any relation of the same name.
CREATE FUNCTION dj._tier_guard_rows() RETURNS trigger LANGUAGE plpgsql AS $guard$
DECLARE
    reserved boolean;
BEGIN
    IF dj._pipeline_write_allowed(TG_RELID, TG_OP) THEN
        RETURN NULL;
    END IF;
    EXECUTE dj._reserved_rows_sql(TG_RELID, 'dj_new_rows') INTO reserved;
    IF reserved AND TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        EXECUTE dj._reserved_rows_sql(TG_RELID, 'dj_old_rows') INTO reserved;
    END IF;
    IF reserved IS NOT TRUE THEN
        RAISE EXCEPTION '% on %.% is not allowed: the schema enforces DataJoint tiers and this session does not hold the reservation of every key written', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Reserve the key in the table''s jobs table first (datajoint-python''s populate(reserve_jobs=True) does), or let dj.populate make it.';
    END IF;
    RETURN NULL;
END
$guard$;
COMMENT ON FUNCTION dj._tier_guard_rows() IS 'Trigger of tier-enforcing schemas: an insert or update let through for a session''s job reservations may write only keys that session reserved.';
COMMENT ON FUNCTION dj._holds_reservation(oid) IS 'Internal: whether this session holds a reservation in the jobs table of the table''s master (and the table checks inserted rows against them).';
COMMENT ON FUNCTION dj._reserved_rows_sql(oid, text) IS 'Internal: the query by which the row guard checks inserted keys against this session''s reservations.';
COMMENT ON FUNCTION dj._pipeline_write_allowed(oid, text) IS 'Internal: whether a DataJoint operation running in this backend (populate, dj.delete) may do this operation on this table.';
COMMENT ON FUNCTION dj._guard_table(oid) IS 'Internal: add the tier guard to a new table of a tier-enforcing schema.';
COMMENT ON FUNCTION dj._names_table(pg_ddl_command) IS 'Internal: whether a DDL command creates a table, renames it or moves it to another schema.';
CREATE FUNCTION dj._guard_new_tables() RETURNS event_trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $guard$
DECLARE
    created record;
    has_rows boolean;
BEGIN
    -- Every way a table comes to have a tier name in an enforcing schema: CREATE TABLE, CREATE
    -- TABLE AS / SELECT INTO, and ALTER TABLE (RENAME TO, SET SCHEMA).
    FOR created IN
        SELECT c.objid, c.schema_name, c.command_tag, c.in_extension FROM pg_event_trigger_ddl_commands() c
        WHERE c.object_type OPERATOR(pg_catalog.=) 'table' AND c.schema_name IS NOT NULL AND dj._names_table(c.command)
    LOOP
        -- Schema dj is the extension's: a table put there (by a client that takes it for a
        -- DataJoint schema, say) would outlive DROP EXTENSION.
        IF created.schema_name OPERATOR(pg_catalog.=) 'dj' AND NOT created.in_extension THEN
            RAISE EXCEPTION 'schema dj belongs to the datajoint extension: % may not put table % there',
                    created.command_tag, created.objid::pg_catalog.regclass
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Declare pipeline tables in a schema of their own (dj.declare(''lab.Session'', ...) creates it).';
        END IF;
        -- (Nested IFs: SQL does not promise to evaluate the operands of AND in order.)
        IF EXISTS (SELECT FROM dj.schema_settings s
                   WHERE s.schema_name OPERATOR(pg_catalog.=) created.schema_name AND s.enforce_tiers) THEN
            IF dj._guard_table(created.objid) AND created.command_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
                -- Its rows were written directly, as the guard now refuses.
                EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', created.objid::pg_catalog.regclass) INTO has_rows;
                IF has_rows THEN
                    RAISE EXCEPTION '% cannot fill %: the schema enforces DataJoint tiers', created.command_tag, created.objid::pg_catalog.regclass
                        USING ERRCODE = 'insufficient_privilege',
                              HINT = 'Computed, Imported and Part tables are filled by dj.populate; create it WITH NO DATA, or declare it with dj.declare.';
                END IF;
            END IF;
        END IF;
    END LOOP;
END
$guard$;
COMMENT ON FUNCTION dj._guard_new_tables() IS 'Event trigger: guards tables that come to have a tier name in a tier-enforcing schema (CREATE TABLE, CREATE TABLE AS, SELECT INTO, ALTER TABLE RENAME / SET SCHEMA), whoever runs the command; refuses tables in schema dj.';
CREATE EVENT TRIGGER dj_guard_new_tables ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION dj._guard_new_tables();
COMMENT ON FUNCTION dj.enforce_tiers(text, boolean) IS
  'Turn server-enforced tiers on (default) or off for a schema: direct INSERT, UPDATE, DELETE and TRUNCATE on its Computed, Imported and Part tables are refused outside populate and dj.delete. Returns the number of tables affected.';
"#,
    name = "tier_guard",
    requires = [
        pipeline_write_allowed,
        holds_reservation,
        reserved_rows_sql,
        enforce_tiers,
        guard_table,
        names_table
    ]
);
