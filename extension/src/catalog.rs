//! Reading PostgreSQL's catalog: table names and their resolution, columns, keys, foreign keys,
//! the dependency graph (cached per backend). Other modules read the catalog for their own needs
//! (headings.rs for the algebra, make/ for modules, api/ for the views); everywhere, queries take
//! names as parameters, never as pasted text.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use datajoint_core::declare::{Parent, ParentColumn};
use datajoint_core::dependencies::{Catalog, Dependencies, Table};
use datajoint_core::describe::{ColumnInfo, IndexInfo};
use datajoint_core::naming::{self, Tier};
use datajoint_core::sql;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum, PgSqlErrorCode};

use crate::error::{DjError, DjResult};

/// The first column of the first row of a read-only query. (Spi::get_one takes the read-write
/// path, which assigns a transaction id: not allowed in parallel workers or on standbys.)
pub fn read_one<T: FromDatum + IntoDatum>(query: &str, args: &[DatumWithOid]) -> DjResult<Option<T>> {
    Spi::connect(|client| {
        let rows = client.select(query, Some(1), args)?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(rows.first().get_one::<T>()?)
    })
}

/// The first column of the first row a writing statement returns (`INSERT ... RETURNING`), or
/// `None` when it returns no row.
pub fn write_one<T: FromDatum + IntoDatum>(query: &str, args: &[DatumWithOid]) -> DjResult<Option<T>> {
    Spi::connect_mut(|client| {
        let rows = client.update(query, Some(1), args)?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(rows.first().get_one::<T>()?)
    })
}

fn exists(query: &str, args: &[&str]) -> DjResult<bool> {
    let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
    Ok(read_one::<bool>(&format!("SELECT EXISTS ({query})"), &args)?.unwrap_or(false))
}

/// The schema and name of the relation with this oid.
pub fn table_name_of(oid: pg_sys::Oid) -> DjResult<Option<Table>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            Some(1),
            &[oid.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        Ok(Some(Table { schema: row.get(1)?.unwrap_or_default(), name: row.get(2)?.unwrap_or_default() }))
    })
}

/// The oid of a table (which must exist).
pub fn oid_of(name: &Table) -> DjResult<pg_sys::Oid> {
    Ok(read_one::<pg_sys::Oid>("SELECT $1::pg_catalog.regclass::pg_catalog.oid", &[name.qualified().into()])?
        .unwrap_or(pg_sys::InvalidOid))
}

/// Whether the current role may read the table.
pub fn may_select(name: &Table) -> DjResult<bool> {
    Ok(read_one::<bool>("SELECT pg_catalog.has_table_privilege($1, 'SELECT')", &[name.qualified().into()])?
        .unwrap_or(false))
}

/// Whether the current role may see the table's columns at all (as information_schema decides).
pub fn may_see(name: &Table) -> DjResult<bool> {
    Ok(read_one::<bool>(
        "SELECT pg_catalog.has_any_column_privilege($1, 'SELECT, INSERT, UPDATE, REFERENCES')",
        &[name.qualified().into()],
    )?
    .unwrap_or(false))
}

pub fn schema_exists(schema: &str) -> DjResult<bool> {
    exists("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
}

/// The DataJoint tables `items` name: each a schema (all its tables) or a table, each table once,
/// in the order named.
pub fn named_tables(deps: &Dependencies, items: &[String]) -> DjResult<Vec<Table>> {
    let mut tables: Vec<Table> = Vec::new();
    for item in items {
        let found: Vec<&Table> = if !item.contains('.') && schema_exists(item)? {
            deps.tables().filter(|t| &t.schema == item && t.tier().is_some()).collect()
        } else {
            let name = resolve(item)?;
            deps.tables().filter(|t| t.schema == name.schema && t.name == name.name).collect()
        };
        for t in found {
            if !tables.contains(t) {
                tables.push(t.clone());
            }
        }
    }
    Ok(tables)
}

pub fn table_exists(schema: &str, table: &str) -> DjResult<bool> {
    exists(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        &[schema, table],
    )
}

pub fn type_exists(schema: &str, name: &str) -> DjResult<bool> {
    exists(
        "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1 AND t.typname = $2",
        &[schema, name],
    )
}

/// Whether PostgreSQL knows `type_text` as a type (to_regtype, which never raises).
pub fn is_known_type(type_text: &str) -> DjResult<bool> {
    exists("SELECT to_regtype($1) WHERE to_regtype($1) IS NOT NULL", &[type_text])
}

/// The master table of class `class` in `schema`: whichever tier's table name exists.
/// The tables a class name can stand for, most likely first (`Session` → `session`, `#session`,
/// `_session`, `__session`).
fn class_tables(class: &str) -> Vec<String> {
    [Tier::Manual, Tier::Lookup, Tier::Imported, Tier::Computed]
        .into_iter()
        .map(|tier| naming::master_table_name(class, tier))
        .collect()
}

/// The schema and the table names that a table name's parts can mean, most likely first: a class
/// name its table in any tier, a master's part the part of any of those, an SQL name itself.
pub fn candidates(parts: &[String]) -> Option<(String, Vec<String>)> {
    Some(match parts {
        [schema, class] if naming::is_class_name(class) => (schema.clone(), class_tables(class)),
        [schema, table] => (schema.clone(), vec![table.clone()]),
        [schema, master, part] if naming::is_class_name(master) && naming::is_class_name(part) => {
            (schema.clone(), class_tables(master).iter().map(|m| naming::part_table_name(m, part)).collect())
        }
        _ => return None,
    })
}

pub fn find_class(schema: &str, class: &str) -> DjResult<Option<Table>> {
    let candidates = class_tables(class);
    let found = read_one::<String>(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = ANY ($2) AND c.relkind IN ('r', 'p') \
         ORDER BY array_position($2, c.relname::text) LIMIT 1",
        &[schema.into(), candidates.into()],
    )?;
    Ok(found.map(|table| Table { schema: schema.to_string(), name: table }))
}

/// Resolves a table given as a class name (`lab.Session`, `lab.Pair.Channel`) or as an SQL name
/// (`lab.__pair`, `"lab"."#rig"`), as every dj function that takes a table accepts it.
pub fn resolve(name: &str) -> DjResult<Table> {
    let parts = sql::split_name(name).ok_or_else(|| not_a_name(name))?;
    let found = match parts.as_slice() {
        [schema, last] if naming::is_class_name(last) => find_class(schema, last)?,
        [schema, table] => {
            table_exists(schema, table)?.then(|| Table { schema: schema.clone(), name: table.clone() })
        }
        [schema, master, part] if naming::is_class_name(master) && naming::is_class_name(part) => {
            match find_class(schema, master)? {
                Some(m) => {
                    let part = Table::new(schema.clone(), naming::part_table_name(&m.name, part));
                    table_exists(&part.schema, &part.name)?.then_some(part)
                }
                None => None,
            }
        }
        _ => return Err(not_a_name(name)),
    };
    found.ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("table {name} does not exist"),
            format!("dj.tables('{}') lists the tables of that schema.", parts[0].replace('\'', "''")),
        )
    })
}

pub fn not_a_name(name: &str) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_INVALID_NAME,
        format!("\"{name}\" is not a table name"),
        "Name a table as schema.ClassName, schema.Master.Part, or by its SQL name schema.table_name.",
    )
}

/// A parent table's visible primary key, with each column's type as datajoint-python reads it
/// back from information_schema (children inherit that text) and its `~lineage`.
pub fn parent(name: &Table) -> DjResult<Parent> {
    let lineage = lineage_of(name)?;
    let rows = Spi::connect(|client| -> DjResult<Vec<ParentColumn>> {
        let table = client.select(
            "SELECT c.column_name::text, c.data_type::text, c.udt_schema::text, c.udt_name::text, \
                    c.character_maximum_length::int4, c.numeric_precision::int4, c.numeric_scale::int4, \
                    format_type(a.atttypid, a.atttypmod) \
             FROM information_schema.columns c \
             JOIN pg_attribute a ON a.attrelid = format('%I.%I', c.table_schema, c.table_name)::regclass \
                                 AND a.attname = c.column_name \
             JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey) \
             WHERE c.table_schema = $1 AND c.table_name = $2 AND c.column_name NOT LIKE '\\_%' \
             ORDER BY c.ordinal_position",
            None,
            &[name.schema.as_str().into(), name.name.as_str().into()],
        )?;
        let mut columns = Vec::new();
        for row in table {
            let column: String = row.get(1)?.unwrap_or_default();
            let data_type: String = row.get(2)?.unwrap_or_default();
            let udt_schema: String = row.get(3)?.unwrap_or_default();
            let udt_name: String = row.get(4)?.unwrap_or_default();
            let length: Option<i32> = row.get(5)?;
            let precision: Option<i32> = row.get(6)?;
            let scale: Option<i32> = row.get(7)?;
            let formatted: String = row.get(8)?.unwrap_or_default();
            let sql_type = match (data_type.as_str(), length, precision) {
                ("USER-DEFINED", _, _) => sql::qualified(&udt_schema, &udt_name),
                ("character", Some(n), _) => format!("char({n})"),
                ("character varying", Some(n), _) => format!("varchar({n})"),
                ("numeric", _, Some(p)) => match scale {
                    Some(s) if s > 0 => format!("decimal({p},{s})"),
                    _ => format!("decimal({p})"),
                },
                ("ARRAY", _, _) => formatted,
                _ => data_type,
            };
            let lineage = lineage.iter().find(|(a, _)| *a == column).map(|(_, l)| l.clone());
            columns.push(ParentColumn { name: column, sql_type, lineage });
        }
        Ok(columns)
    })?;
    if rows.is_empty() {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_FOREIGN_KEY,
            format!("{} has no visible primary key to reference", name.qualified()),
            "A singleton table (empty primary key) cannot be a parent; reference a table with key attributes.",
        ));
    }
    Ok(Parent { schema: name.schema.clone(), table: name.name.clone(), primary_key: rows })
}

/// The `~lineage` rows of a table, if its schema has that table.
pub fn lineage_of(name: &Table) -> DjResult<Vec<(String, String)>> {
    if !table_exists(&name.schema, "~lineage")? {
        return Ok(Vec::new());
    }
    lineage_rows(name)
}

thread_local! {
    static LINEAGE_PLANS: RefCell<std::collections::HashMap<String, pgrx::spi::OwnedPreparedStatement>> =
        RefCell::new(std::collections::HashMap::new());
}

/// The `~lineage` rows of a table whose schema has that table, through a plan kept per schema
/// (the query algebra reads them for every table an expression names).
pub fn lineage_rows(name: &Table) -> DjResult<Vec<(String, String)>> {
    Spi::connect(|client| {
        LINEAGE_PLANS.with(|plans| -> DjResult<_> {
            let mut plans = plans.borrow_mut();
            if !plans.contains_key(&name.schema) {
                let query = format!(
                    "SELECT attribute_name::text, lineage::text FROM {} WHERE table_name = $1",
                    sql::qualified(&name.schema, "~lineage")
                );
                let plan = client.prepare(query.as_str(), &[pgrx::PgOid::from(pg_sys::TEXTOID)])?.keep();
                plans.insert(name.schema.clone(), plan);
            }
            let mut rows = Vec::new();
            for row in client.select(&plans[&name.schema], None, &[name.name.as_str().into()])? {
                rows.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?.unwrap_or_default(),
                ));
            }
            Ok(rows)
        })
    })
}

/// DataJoint tables (those whose names follow the tier conventions), optionally of one schema,
/// sorted by schema and name: the nodes of the cached dependency graph.
pub fn tables(schema: Option<&str>) -> DjResult<Vec<Table>> {
    let deps = dependencies()?;
    let mut out: Vec<Table> =
        deps.tables().filter(|t| schema.is_none_or(|s| t.schema == s)).cloned().collect();
    out.sort();
    Ok(out)
}

/// Columns of a table in order, as `describe` and `heading` need them.
pub fn columns(name: &Table) -> DjResult<Vec<ColumnInfo>> {
    Ok(typed_columns(name)?.into_iter().map(|(c, _)| c).collect())
}

/// Columns of a table in order, each with its type's oid (what SPI parameters and values need).
pub fn typed_columns(name: &Table) -> DjResult<Vec<(ColumnInfo, pg_sys::Oid)>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, \
                    pg_get_expr(d.adbin, d.adrelid), col_description(a.attrelid, a.attnum), \
                    coalesce(a.attnum = ANY (i.indkey), false), a.atttypid \
             FROM pg_attribute a \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            None,
            &[name.schema.as_str().into(), name.name.as_str().into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            let column = ColumnInfo {
                name: row.get(1)?.unwrap_or_default(),
                sql_type: row.get(2)?.unwrap_or_default(),
                nullable: row.get(3)?.unwrap_or(false),
                default: row.get(4)?,
                comment: row.get(5)?,
                in_key: row.get(6)?.unwrap_or(false),
            };
            out.push((column, row.get(7)?.unwrap_or(pg_sys::InvalidOid)));
        }
        Ok(out)
    })
}

/// The table's comment ('' when none).
pub fn table_comment(name: &Table) -> DjResult<String> {
    Ok(read_one::<String>(
        "SELECT coalesce(obj_description(format('%I.%I', $1::text, $2::text)::regclass, 'pg_class'), '')",
        &[name.schema.as_str().into(), name.name.as_str().into()],
    )?
    .unwrap_or_default())
}

/// Plain-column indexes other than the primary key, by name.
pub fn indexes(name: &Table) -> DjResult<Vec<IndexInfo>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT i.indisunique, array_agg(a.attname::text ORDER BY k.ord) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass AND NOT i.indisprimary \
               AND i.indexprs IS NULL AND i.indpred IS NULL \
             GROUP BY ic.relname, i.indisunique ORDER BY ic.relname",
            None,
            &[name.schema.as_str().into(), name.name.as_str().into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(IndexInfo {
                unique: row.get(1)?.unwrap_or(false),
                columns: row.get(2)?.unwrap_or_default(),
            });
        }
        Ok(out)
    })
}

const USER_SCHEMAS: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'dj') AND n.nspname NOT LIKE 'pg\\_%'";

/// Every table of the user schemas with its primary key, and every foreign key among them.
fn dependency_catalog() -> DjResult<Catalog> {
    Spi::connect(|client| {
        let mut catalog = Catalog::default();
        let tables = client.select(
            &format!(
                "SELECT n.nspname::text, c.relname::text, \
                        coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) \
                                  FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                                  WHERE i.indrelid = c.oid AND i.indisprimary), '{{}}') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMAS} AND c.relname NOT LIKE '~%'"
            ),
            None,
            &[],
        )?;
        for row in tables {
            let table = Table::new(
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
            );
            // DataJoint tables only: other tables (a self-referencing employees table, say) are
            // none of the pipeline's business and must not be able to break its graph.
            if table.tier().is_some() {
                catalog.tables.push((table, row.get::<Vec<String>>(3)?.unwrap_or_default()));
            }
        }
        let keys = client.select(
            &format!(
                "SELECT n.nspname::text, cc.relname::text, pn.nspname::text, pc.relname::text, \
                        array_agg(ca.attname::text ORDER BY k.ord), array_agg(pa.attname::text ORDER BY k.ord) \
                 FROM pg_constraint co \
                 JOIN pg_class cc ON cc.oid = co.conrelid JOIN pg_namespace n ON n.oid = cc.relnamespace \
                 JOIN pg_class pc ON pc.oid = co.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace \
                 CROSS JOIN LATERAL unnest(co.conkey, co.confkey) WITH ORDINALITY AS k(child, parent, ord) \
                 JOIN pg_attribute ca ON ca.attrelid = co.conrelid AND ca.attnum = k.child \
                 JOIN pg_attribute pa ON pa.attrelid = co.confrelid AND pa.attnum = k.parent \
                 WHERE co.contype = 'f' AND {USER_SCHEMAS} AND cc.relname NOT LIKE '~%' \
                 GROUP BY co.oid, co.conname, n.nspname, cc.relname, pn.nspname, pc.relname \
                 ORDER BY 1, 2, co.conname"
            ),
            None,
            &[],
        )?;
        for row in keys {
            let child = Table::new(
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
            );
            let parent = Table::new(
                row.get::<String>(3)?.unwrap_or_default(),
                row.get::<String>(4)?.unwrap_or_default(),
            );
            let c: Vec<String> = row.get(5)?.unwrap_or_default();
            let p: Vec<String> = row.get(6)?.unwrap_or_default();
            if child != parent && child.tier().is_some() && parent.tier().is_some() {
                catalog.foreign_keys.push((child, parent, c.into_iter().zip(p).collect()));
            }
        }
        Ok(catalog)
    })
}

/// Bumped by every relcache invalidation (any DDL on any table, ours or another session's).
static CATALOG_GENERATION: AtomicU64 = AtomicU64::new(1);
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static DEPENDENCIES: RefCell<Option<(u64, Rc<Dependencies>)>> = const { RefCell::new(None) };
}

unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    // Must not fail or allocate: only mark the cached graph stale.
    CATALOG_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Schema renames change no relation: they come as pg_namespace syscache invalidations.
unsafe extern "C-unwind" fn on_namespace_invalidation(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    CATALOG_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The dependency graph of all user schemas, cached for this backend until the next DDL.
pub fn dependencies() -> DjResult<Rc<Dependencies>> {
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: registers callbacks that only touch an atomic; called on the main thread.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0));
            pg_sys::CacheRegisterSyscacheCallback(
                pg_sys::SysCacheIdentifier::NAMESPACEOID as std::ffi::c_int,
                Some(on_namespace_invalidation),
                pg_sys::Datum::from(0),
            );
        }
    }
    let generation = CATALOG_GENERATION.load(Ordering::Relaxed);
    if let Some(cached) = DEPENDENCIES
        .with(|d| d.borrow().as_ref().filter(|(g, _)| *g == generation).map(|(_, deps)| deps.clone()))
    {
        return Ok(cached);
    }
    let deps = Rc::new(Dependencies::new(dependency_catalog()?).map_err(|cycle| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_FOREIGN_KEY,
            format!("foreign keys form a cycle through {}.{}", cycle.0[0].schema, cycle.0[0].name),
            "DataJoint pipelines are acyclic; drop the foreign key that closes the cycle.",
        )
    })?);
    DEPENDENCIES.with(|d| *d.borrow_mut() = Some((generation, deps.clone())));
    Ok(deps)
}

/// The DataJoint enum types (`enum_xxxxxxxx`) a table's columns use: (schema, type name).
pub fn enum_types_of(name: &Table) -> DjResult<Vec<(String, String)>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT DISTINCT tn.nspname::text, t.typname::text FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace \
             WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass AND a.attnum > 0 \
               AND NOT a.attisdropped AND t.typtype = 'e' AND t.typname LIKE 'enum\\_%'",
            None,
            &[name.schema.as_str().into(), name.name.as_str().into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()));
        }
        Ok(out)
    })
}

/// Whether any column still uses type `schema.name`.
pub fn type_in_use(schema: &str, name: &str) -> DjResult<bool> {
    exists(
        "SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace \
         WHERE n.nspname = $1 AND t.typname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        &[schema, name],
    )
}
