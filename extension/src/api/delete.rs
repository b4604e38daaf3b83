//! `dj.delete`, `dj.delete_preview` and `dj.drop`: removing data and tables together with
//! everything downstream, in the caller's transaction, with DataJoint's part integrity (a part's
//! rows go only with its master's).

use datajoint_core::cascade::{self, Step};
use datajoint_core::dependencies::{Dependencies, Table};
use datajoint_core::restriction::{self, UnknownAttributes};
use datajoint_core::{naming, sql};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::catalog;
use crate::error::{DjError, DjResult, OrRaise};
use crate::pipeline::{delete, writes};
use crate::security;

#[derive(Clone, Copy, PartialEq, Eq)]
enum PartIntegrity {
    Enforce,
    Ignore,
}

fn part_integrity(text: &str) -> DjResult<PartIntegrity> {
    match text.to_ascii_lowercase().as_str() {
        "enforce" => Ok(PartIntegrity::Enforce),
        "ignore" => Ok(PartIntegrity::Ignore),
        _ => Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("part_integrity \"{text}\" is not enforce or ignore"),
            "enforce (the default) deletes a part's rows only with its master's; ignore allows it.",
        )),
    }
}

/// The restriction of the root table: a checked SQL condition and/or a key (a JSON object of
/// attribute values, or an array of them meaning any of them).
fn root_condition(name: &Table, condition: Option<&str>, key: Option<JsonB>) -> DjResult<Option<String>> {
    let attributes: Vec<String> = catalog::columns(name)?.into_iter().map(|c| c.name).collect();
    let mut parts = Vec::new();
    if let Some(text) = condition {
        let checked = restriction::condition(text, &attributes).map_err(|e| {
            DjError::new(PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, format!("restriction: {}", e.message), e.hint)
                .detail(format!("at: {}", e.fragment))
        })?;
        parts.push(format!("({checked})"));
    }
    if let Some(JsonB(value)) = key {
        let objects = match value {
            serde_json::Value::Array(items) => items,
            other => vec![other],
        };
        let mut alternatives = Vec::new();
        for object in objects {
            let serde_json::Value::Object(map) = object else {
                return Err(DjError::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "key must be a JSON object or an array of objects",
                    "Pass e.g. '{\"subject_id\": 1}' or '[{\"subject_id\": 1}, {\"subject_id\": 2}]'.",
                ));
            };
            let condition = restriction::json_key(
                &map,
                |a| attributes.iter().any(|c| c == a).then(|| sql::ident(a)),
                UnknownAttributes::Refuse,
            )
            .map_err(|attribute| {
                DjError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("key attribute \"{attribute}\" is not an attribute of {}", name.qualified()),
                    format!("Its attributes are: {}.", attributes.join(", ")),
                )
            })?;
            alternatives.push(condition);
        }
        parts.push(if alternatives.is_empty() {
            "FALSE".to_string()
        } else {
            format!("({})", alternatives.join(" OR "))
        });
    }
    Ok((!parts.is_empty()).then(|| parts.join(" AND ")))
}

fn refuse_part(table: &Table) -> DjError {
    let master = table.master().map(|m| naming::class_name_of(&m.name)).unwrap_or_default();
    DjError::new(
        PgSqlErrorCode::ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION,
        format!("cannot delete from part table {}.{} directly", table.schema, naming::class_name_of(&table.name)),
        format!("A part's rows belong to its master's: delete from {}.{master} instead, or pass part_integrity => 'ignore'.", table.schema),
    )
}

/// Counts the rows each step selects.
fn counts(steps: &[Step]) -> DjResult<Vec<i64>> {
    (0..steps.len())
        .map(|i| Ok(catalog::read_one::<i64>(&cascade::count_sql(steps, i), &[])?.unwrap_or(0)))
        .collect()
}

/// Part integrity: a part loses rows only if its master loses rows too.
fn check_parts(deps: &Dependencies, steps: &[Step], counts: &[i64]) -> DjResult<()> {
    for (step, &n) in steps.iter().zip(counts) {
        let Some(master) = step.table.master().filter(|m| deps.contains(m)) else { continue };
        let master_rows = steps.iter().zip(counts).find(|(s, _)| s.table == master).map_or(0, |(_, &n)| n);
        if n > 0 && master_rows == 0 {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION,
                format!(
                    "the delete would remove {n} rows of part table {}.{} but none of its master {}",
                    step.table.schema,
                    naming::class_name_of(&step.table.name),
                    naming::class_name_of(&master.name)
                ),
                "Delete from the master instead, or pass part_integrity => 'ignore'.",
            ));
        }
    }
    Ok(())
}

type Plan = (std::rc::Rc<Dependencies>, Vec<Step>, PartIntegrity);

fn plan(table: &str, condition: Option<&str>, key: Option<JsonB>, integrity: &str) -> DjResult<Plan> {
    let integrity = part_integrity(integrity)?;
    let root = catalog::resolve(table)?;
    let deps = catalog::dependencies()?;
    let is_part = root.master().is_some_and(|m| deps.contains(&m));
    if integrity == PartIntegrity::Enforce && is_part {
        return Err(refuse_part(&root));
    }
    if integrity == PartIntegrity::Ignore && writes::enforced(&root.schema)? {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("part_integrity => 'ignore' is not available: schema {} enforces DataJoint tiers", root.schema),
            "Delete from the master, or have the schema owner turn enforcement off (dj.enforce_tiers(schema, false)).",
        ));
    }
    let condition = root_condition(&root, condition, key)?;
    let steps = cascade::plan(&deps, &root, condition);
    Ok((deps, steps, integrity))
}

type CountRow =
    (name!(schema_name, String), name!(class_name, String), name!(table_name, String), name!(rows, i64));

fn rows(steps: &[Step], counts: &[i64]) -> Vec<CountRow> {
    steps
        .iter()
        .zip(counts)
        .map(|(s, &n)| {
            (s.table.schema.clone(), naming::class_name_of(&s.table.name), s.table.name.clone(), n)
        })
        .collect()
}

/// `dj.delete(table, restriction, key, part_integrity)`: deletes the restricted rows and
/// everything downstream of them in one transaction; returns the rows removed per table.
#[pg_extern(volatile, parallel_unsafe)]
fn delete(
    table: &str,
    restriction: default!(Option<&str>, "NULL"),
    key: default!(Option<JsonB>, "NULL"),
    part_integrity: default!(&str, "'enforce'"),
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(class_name, String), name!(table_name, String), name!(rows, i64)),
> {
    let _pin = security::pin();
    const FN: &str = "dj.delete";
    let (deps, steps, integrity) = plan(table, restriction, key, part_integrity).or_raise(FN);
    let removed = delete::execute(&steps).or_raise(FN);
    if integrity == PartIntegrity::Enforce {
        check_parts(&deps, &steps, &removed).or_raise(FN);
    }
    TableIterator::new(rows(&steps, &removed))
}

/// `dj.delete_preview(...)`: what `dj.delete` with the same arguments would remove, per table.
#[pg_extern(stable, parallel_safe)]
fn delete_preview(
    table: &str,
    restriction: default!(Option<&str>, "NULL"),
    key: default!(Option<JsonB>, "NULL"),
    part_integrity: default!(&str, "'enforce'"),
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(class_name, String), name!(table_name, String), name!(rows, i64)),
> {
    let _pin = security::pin();
    const FN: &str = "dj.delete_preview";
    let (deps, steps, integrity) = plan(table, restriction, key, part_integrity).or_raise(FN);
    let n = counts(&steps).or_raise(FN);
    // The preview refuses what the delete would refuse.
    if integrity == PartIntegrity::Enforce {
        check_parts(&deps, &steps, &n).or_raise(FN);
    }
    TableIterator::new(rows(&steps, &n))
}

/// `dj.drop(table, part_integrity)`: drops the table and every table downstream of it (parts
/// with their master), with their `~lineage` rows and enum types no longer used.
#[pg_extern(volatile, parallel_unsafe)]
fn drop(
    table: &str,
    part_integrity: default!(&str, "'enforce'"),
) -> TableIterator<'static, (name!(schema_name, String), name!(class_name, String), name!(table_name, String))>
{
    let _pin = security::pin();
    drop_tables(table, part_integrity).or_raise("dj.drop")
}

fn drop_tables(
    table: &str,
    integrity: &str,
) -> DjResult<
    TableIterator<
        'static,
        (name!(schema_name, String), name!(class_name, String), name!(table_name, String)),
    >,
> {
    let integrity = part_integrity(integrity)?;
    let root = catalog::resolve(table)?;
    let deps = catalog::dependencies()?;
    if integrity == PartIntegrity::Enforce && root.master().is_some_and(|m| deps.contains(&m)) {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!(
                "cannot drop part table {}.{} without its master",
                root.schema,
                naming::class_name_of(&root.name)
            ),
            "Drop the master (its parts go with it), or pass part_integrity => 'ignore'.",
        ));
    }
    let mut tables: Vec<Table> = vec![root.clone()];
    tables.extend(deps.descendants(&root).into_iter().cloned());
    if integrity == PartIntegrity::Enforce {
        for t in &tables {
            if let Some(master) = t.master().filter(|m| deps.contains(m) && !tables.contains(m)) {
                return Err(DjError::new(
                    PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                    format!(
                        "dropping {} would drop part {} without its master {}",
                        root.name, t.name, master.name
                    ),
                    "Drop the master instead, or pass part_integrity => 'ignore'.",
                ));
            }
        }
    }
    for t in tables.iter().rev() {
        // A Computed or Imported table's jobs table (`~~name`) goes with it.
        let jobs = datajoint_core::populate::jobs::jobs_table(t);
        let with_jobs = matches!(t.tier(), Some(naming::Tier::Computed | naming::Tier::Imported))
            && catalog::table_exists(&jobs.schema, &jobs.name)?;
        for t in std::iter::once(t).chain(with_jobs.then_some(&jobs)) {
            drop_one(t)?;
        }
    }
    Ok(TableIterator::new(
        tables
            .into_iter()
            .map(|t| (t.schema.clone(), naming::class_name_of(&t.name), t.name))
            .collect::<Vec<_>>(),
    ))
}

/// Drops one table with its `~lineage` rows and the DataJoint enum types no other column uses.
fn drop_one(t: &Table) -> DjResult<()> {
    let enums = catalog::enum_types_of(t)?;
    Spi::run(&format!("DROP TABLE {}", sql::qualified(&t.schema, &t.name)))?;
    if catalog::table_exists(&t.schema, "~lineage")? {
        Spi::run_with_args(
            &format!("DELETE FROM {} WHERE table_name = $1", sql::qualified(&t.schema, "~lineage")),
            &[t.name.as_str().into()],
        )?;
    }
    for (schema, type_name) in enums {
        if !catalog::type_in_use(&schema, &type_name)? {
            Spi::run(&format!("DROP TYPE {}", sql::qualified(&schema, &type_name)))?;
        }
    }
    Ok(())
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.delete(text, text, jsonb, text) IS
  'Delete the rows of a table matching a restriction (a SQL condition on its attributes) and/or a key (JSON object or array of objects), and everything downstream, in one transaction. Part tables lose rows only with their master (part_integrity => ''ignore'' to allow). Returns the rows removed per table.';
COMMENT ON FUNCTION dj.delete_preview(text, text, jsonb, text) IS
  'The rows per table that dj.delete with the same arguments would remove.';
COMMENT ON FUNCTION dj.drop(text, text) IS
  'Drop a table and every table downstream of it, parts with their master, with their ~lineage rows, jobs tables and unused enum types. Returns the dropped tables.';
"#,
    name = "delete_comments",
    requires = [delete, delete_preview, drop]
);
