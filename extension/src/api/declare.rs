//! `dj.declare` and `dj.tables`: pipeline tables from DataJoint definitions, laid out exactly as
//! datajoint-python 2.x lays them out, so its clients see them as their own.

use datajoint_core::declare::{self, Options, Target};
use datajoint_core::definition::{self, Item};
use datajoint_core::naming::{self, Tier};
use datajoint_core::sql;
use datajoint_core::types::AttributeType;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::catalog;
use crate::error::{DjError, DjResult, OrRaise};
use crate::pipeline::tables;
use crate::regclass::RegClass;
use crate::security;
use datajoint_core::dependencies::Table;

const FN: &str = "dj.declare";

/// `dj.declare(class_name, tier, definition, contents)`: creates the table (and its schema, enum
/// types, indexes, comments and `~lineage` rows) in the current transaction.
#[pg_extern(volatile, parallel_unsafe)]
fn declare(
    class_name: &str,
    tier: &str,
    definition: &str,
    contents: default!(Option<JsonB>, "NULL"),
) -> RegClass {
    let _pin = security::pin();
    let name = declare_table(class_name, tier, definition, contents).or_raise(FN);
    RegClass(catalog::oid_of(&name).or_raise(FN))
}

fn declare_table(class_name: &str, tier: &str, definition: &str, contents: Option<JsonB>) -> DjResult<Table> {
    let tier = Tier::parse(tier).ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("\"{tier}\" is not a tier"),
            "The tiers are lookup, manual, imported, computed and part.",
        )
    })?;
    let (target, master) = target_of(class_name, tier)?;
    if catalog::table_exists(&target.schema, &target.table)? {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
            format!("table {class_name} already exists as {}", sql::qualified(&target.schema, &target.table)),
            "Drop the existing table first (DROP TABLE, dependents included) to declare it anew.",
        ));
    }
    let parsed = definition::parse(definition)?;

    let mut parents = Vec::new();
    for line in &parsed.lines {
        match &line.item {
            Item::ForeignKey(fk) => {
                let parent = resolve_parent(&fk.parent, &target.schema, master.as_ref())
                    .map_err(|e| e.detail(format!("line {}: -> {}", line.number, fk.parent.join("."))))?;
                parents.push(catalog::parent(&parent)?);
            }
            Item::Attribute(a) => {
                // Native types go to PostgreSQL as written: check them here to report where.
                if let Ok(AttributeType::Native { sql_type }) = AttributeType::parse(&a.type_text) {
                    if !catalog::is_known_type(&sql_type)? {
                        return Err(DjError::new(
                            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                            format!("type {sql_type} does not exist"),
                            "Use a DataJoint core type (int32, float64, varchar(n), datetime, ...) or a PostgreSQL type.",
                        )
                        .detail(format!("line {}, column {}: {} : {}", line.number, a.type_column, a.name, a.type_text)));
                    }
                }
            }
            Item::Index(_) => {}
        }
    }
    // Computed and Imported rows record when, how fast and by which module they were made.
    let ddl =
        declare::compile(&parsed, &target, &parents, Options { job_metadata: true, provenance: false })?;

    if !catalog::schema_exists(&target.schema)? {
        Spi::run(&format!("CREATE SCHEMA {}", sql::ident(&target.schema)))?;
    }
    tables::create(&target, &ddl)?;
    for notice in &ddl.notices {
        pgrx::notice!("{notice}");
    }

    // In a tier-enforcing schema the dj_guard_new_tables event trigger has guarded it already.
    let name = Table { schema: target.schema.clone(), name: target.table.clone() };
    // Its jobs table comes with it: populates never race to create it.
    if matches!(tier, Tier::Computed | Tier::Imported) {
        tables::ensure_jobs_table(&name)?;
    }
    if let Some(rows) = contents {
        if tier != Tier::Lookup {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "contents are only for Lookup tables",
                "Insert rows into other tiers with INSERT, or declare the table as a lookup.",
            ));
        }
        insert_contents(&name, &ddl.columns, rows)?;
    }
    Ok(name)
}

/// The table a class name declares: `schema.Class` for masters, `schema.Master.Part` for parts
/// (whose master must exist). Returns the master too, for `-> master`.
fn target_of(class_name: &str, tier: Tier) -> DjResult<(Target, Option<Table>)> {
    let bad = |why: &str| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("\"{class_name}\" is not a valid class name for a {tier} table: {why}"),
            "Write schema.ClassName (schema.Master.Part for part tables), with CamelCase class names.",
        )
    };
    let parts = sql::split_name(class_name).ok_or_else(|| bad("it is not a dotted name"))?;
    let schema_ok =
        |s: &str| !s.is_empty() && s.len() <= naming::MAX_NAME_LENGTH && !s.starts_with("pg_") && s != "dj";
    match (tier, parts.as_slice()) {
        (Tier::Part, [schema, master, part]) if schema_ok(schema) => {
            if !naming::is_class_name(master) || !naming::is_class_name(part) {
                return Err(bad("class names are CamelCase letters and digits"));
            }
            let master_table = catalog::find_class(schema, master)?.ok_or_else(|| {
                DjError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    format!("master table {schema}.{master} does not exist"),
                    "Declare the master first, then its parts.",
                )
            })?;
            let table = naming::part_table_name(&master_table.name, part);
            Ok((Target { schema: schema.clone(), table, tier }, Some(master_table)))
        }
        (Tier::Part, _) => Err(bad("a part is named schema.Master.Part")),
        (_, [schema, class]) if schema_ok(schema) => {
            if !naming::is_class_name(class) {
                return Err(bad("class names are CamelCase letters and digits, starting with a capital"));
            }
            Ok((Target { schema: schema.clone(), table: naming::master_table_name(class, tier), tier }, None))
        }
        (_, [schema, _]) if !schema_ok(schema) => Err(bad("the schema name is reserved or too long")),
        _ => Err(bad("a master table is named schema.ClassName")),
    }
}

/// The table a foreign key names: `master`, `Class`, `schema.Class`, `Master.Part` or
/// `schema.Master.Part`, relative to the declaring schema.
fn resolve_parent(path: &[String], schema: &str, master: Option<&Table>) -> DjResult<Table> {
    let missing = |what: String| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("referenced table {what} does not exist"),
            format!(
                "Declare parents before their children; dj.tables('{}') lists what exists.",
                schema.replace('\'', "''")
            ),
        )
    };
    let part_of = |s: &str, m: &str, p: &str| -> DjResult<Table> {
        let master = catalog::find_class(s, m)?.ok_or_else(|| missing(format!("{s}.{m}")))?;
        let table = naming::part_table_name(&master.name, p);
        if catalog::table_exists(s, &table)? {
            Ok(Table { schema: s.to_string(), name: table })
        } else {
            Err(missing(format!("{s}.{m}.{p}")))
        }
    };
    match path {
        [m] if m == "master" => master.cloned().ok_or_else(|| {
            DjError::new(
                PgSqlErrorCode::ERRCODE_INVALID_FOREIGN_KEY,
                "-> master is only valid in a part table",
                "Declare this table with tier 'part' as schema.Master.Part, or name the parent.",
            )
        }),
        [class] => catalog::find_class(schema, class)?.ok_or_else(|| missing(format!("{schema}.{class}"))),
        [a, b] if naming::is_class_name(a) => part_of(schema, a, b),
        [s, class] => catalog::find_class(s, class)?.ok_or_else(|| missing(format!("{s}.{class}"))),
        [s, m, p] => part_of(s, m, p),
        _ => Err(missing(path.join("."))),
    }
}

/// Lookup contents: a JSON array of objects (attribute → value) or of arrays (values in attribute
/// order).
fn insert_contents(name: &Table, columns: &[String], contents: JsonB) -> DjResult<()> {
    let visible: Vec<&String> = columns.iter().filter(|c| !c.starts_with('_')).collect();
    let invalid = |why: String| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("contents: {why}"),
            format!(
                "Pass a JSON array of rows, each an object or an array of values for ({}).",
                visible.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
    };
    let serde_json::Value::Array(rows) = contents.0 else { return Err(invalid("not a JSON array".into())) };
    let table = name.qualified();
    for (i, row) in rows.into_iter().enumerate() {
        let object = match row {
            serde_json::Value::Object(o) => o,
            serde_json::Value::Array(values) => {
                if values.len() != visible.len() {
                    return Err(invalid(format!(
                        "row {} has {} values for {} attributes",
                        i + 1,
                        values.len(),
                        visible.len()
                    )));
                }
                visible.iter().map(|c| c.to_string()).zip(values).collect()
            }
            _ => return Err(invalid(format!("row {} is neither an object nor an array", i + 1))),
        };
        if let Some(key) = object.keys().find(|k| !visible.iter().any(|c| c == k)) {
            return Err(invalid(format!("\"{key}\" is not an attribute")));
        }
        // Each row names its own attributes, so the ones it leaves out get their defaults.
        let list = object.keys().map(|c| sql::ident(c)).collect::<Vec<_>>().join(", ");
        let statement = if object.is_empty() {
            format!("INSERT INTO {table} DEFAULT VALUES")
        } else {
            format!(
                "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{table}, $1)"
            )
        };
        Spi::run_with_args(&statement, &[JsonB(serde_json::Value::Object(object)).into()])?;
    }
    Ok(())
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.declare(text, text, text, jsonb) IS
  'Declare a DataJoint table: class name schema.ClassName (schema.Master.Part for parts), tier (lookup, manual, imported, computed, part), definition in the DataJoint language, optional contents for lookups. Creates the schema if missing. Returns the table.';
"#,
    name = "declare_comments",
    requires = [declare]
);
