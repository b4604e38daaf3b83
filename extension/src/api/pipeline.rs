//! The pipeline's structure: dependencies between tables, definitions and headings.

use datajoint_core::dependencies::{Reference, Table};
use datajoint_core::describe::{self, ParentRef};
use datajoint_core::naming;
use pgrx::prelude::*;

use crate::catalog;
use crate::error::{DjResult, OrRaise};
use crate::security;

/// How a definition in `schema` names `table`: `Session`, `Pair.Channel`, `zoo.Animal`, or the
/// quoted SQL name for tables outside DataJoint's naming.
pub fn reference_name(table: &Table, schema: &str) -> String {
    match table.tier() {
        Some(_) if table.schema == schema => naming::class_name_of(&table.name),
        Some(_) => format!("{}.{}", table.schema, naming::class_name_of(&table.name)),
        None => datajoint_core::sql::qualified(&table.schema, &table.name),
    }
}

fn table_of(name: &str) -> DjResult<Table> {
    catalog::resolve(name)
}

type TableRow =
    (name!(schema_name, String), name!(class_name, String), name!(tier, String), name!(table_name, String));

fn row(t: &Table) -> TableRow {
    (
        t.schema.clone(),
        naming::class_name_of(&t.name),
        t.tier().map(|t| t.name().to_string()).unwrap_or_default(),
        t.name.clone(),
    )
}

type ReferenceRow = (
    name!(schema_name, String),
    name!(class_name, String),
    name!(tier, String),
    name!(table_name, String),
    name!(attributes, Vec<String>),
    name!(referenced_attributes, Vec<String>),
    name!(primary, bool),
    name!(renamed, bool),
);

fn reference_rows(list: Vec<(&Table, &Reference)>) -> Vec<ReferenceRow> {
    list.into_iter()
        .map(|(t, r)| {
            let (s, c, tier, n) = row(t);
            let child = r.attributes.iter().map(|(c, _)| c.clone()).collect();
            let parent = r.attributes.iter().map(|(_, p)| p.clone()).collect();
            (s, c, tier, n, child, parent, r.primary, r.aliased)
        })
        .collect()
}

/// `dj.parents(table)`: the tables this one references, one row per foreign key.
#[pg_extern(stable, parallel_safe)]
fn parents(
    table: &str,
) -> TableIterator<
    'static,
    (
        name!(schema_name, String),
        name!(class_name, String),
        name!(tier, String),
        name!(table_name, String),
        name!(attributes, Vec<String>),
        name!(referenced_attributes, Vec<String>),
        name!(primary, bool),
        name!(renamed, bool),
    ),
> {
    let _pin = security::pin();
    let t = table_of(table).or_raise("dj.parents");
    let deps = catalog::dependencies().or_raise("dj.parents");
    TableIterator::new(reference_rows(deps.parents(&t)))
}

/// `dj.children(table)`: the tables that reference this one, one row per foreign key.
#[pg_extern(stable, parallel_safe)]
fn children(
    table: &str,
) -> TableIterator<
    'static,
    (
        name!(schema_name, String),
        name!(class_name, String),
        name!(tier, String),
        name!(table_name, String),
        name!(attributes, Vec<String>),
        name!(referenced_attributes, Vec<String>),
        name!(primary, bool),
        name!(renamed, bool),
    ),
> {
    let _pin = security::pin();
    let t = table_of(table).or_raise("dj.children");
    let deps = catalog::dependencies().or_raise("dj.children");
    TableIterator::new(reference_rows(deps.children(&t)))
}

/// `dj.ancestors(table)`: everything upstream, parents before children.
#[pg_extern(stable, parallel_safe)]
fn ancestors(
    table: &str,
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(class_name, String), name!(tier, String), name!(table_name, String)),
> {
    let _pin = security::pin();
    let t = table_of(table).or_raise("dj.ancestors");
    let deps = catalog::dependencies().or_raise("dj.ancestors");
    TableIterator::new(deps.ancestors(&t).into_iter().map(row).collect::<Vec<_>>())
}

/// `dj.descendants(table)`: everything downstream, parents before children.
#[pg_extern(stable, parallel_safe)]
fn descendants(
    table: &str,
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(class_name, String), name!(tier, String), name!(table_name, String)),
> {
    let _pin = security::pin();
    let t = table_of(table).or_raise("dj.descendants");
    let deps = catalog::dependencies().or_raise("dj.descendants");
    TableIterator::new(deps.descendants(&t).into_iter().map(row).collect::<Vec<_>>())
}

/// `dj.tables(schema)`: the DataJoint tables of a schema (all schemas when NULL), with class
/// names and tiers as datajoint-python infers them from the table names.
#[pg_extern(stable, parallel_safe)]
fn tables(
    schema: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(class_name, String), name!(tier, String), name!(table_name, String)),
> {
    let _pin = security::pin();
    let rows = catalog::tables(schema).or_raise("dj.tables");
    TableIterator::new(rows.iter().map(row).collect::<Vec<_>>())
}

/// `dj.topological_order(schema)`: the DataJoint tables of a schema (all schemas when NULL),
/// parents before children, parts right after their master.
#[pg_extern(stable, parallel_safe)]
fn topological_order(
    schema: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(class_name, String), name!(tier, String), name!(table_name, String)),
> {
    let _pin = security::pin();
    let deps = catalog::dependencies().or_raise("dj.topological_order");
    let rows: Vec<TableRow> = deps
        .topological_order()
        .into_iter()
        .filter(|t| t.tier().is_some() && schema.is_none_or(|s| t.schema == s))
        .map(row)
        .collect();
    TableIterator::new(rows)
}

/// `dj.describe(table)`: the table's definition, rebuilt from the catalog; declaring it again
/// gives the same table.
#[pg_extern(stable, parallel_safe)]
fn describe(table: &str) -> String {
    let _pin = security::pin();
    describe_table(table).or_raise("dj.describe")
}

fn describe_table(table: &str) -> DjResult<String> {
    let name = catalog::resolve(table)?;
    let deps = catalog::dependencies()?;
    let columns = catalog::columns(&name)?;
    let indexes = catalog::indexes(&name)?;
    let master = name.master();
    let parents: Vec<ParentRef> = deps
        .parents(&name)
        .into_iter()
        .map(|(parent, reference)| {
            let child_columns: Vec<&String> = reference.attributes.iter().map(|(c, _)| c).collect();
            ParentRef {
                name: if Some(parent) == master.as_ref() {
                    "master".into()
                } else {
                    reference_name(parent, &name.schema)
                },
                unique: indexes
                    .iter()
                    .any(|i| i.unique && i.columns.iter().collect::<Vec<_>>() == child_columns),
                attributes: reference.attributes.clone(),
            }
        })
        .collect();
    // Indexes a reference implies (its unique index, or the support index datajoint-python adds)
    // are not written as index lines.
    let declared: Vec<_> = indexes
        .into_iter()
        .filter(|i| !parents.iter().any(|p| p.attributes.iter().map(|(c, _)| c).eq(i.columns.iter())))
        .collect();
    let comment = catalog::table_comment(&name)?;
    Ok(describe::describe(&comment, &columns, &parents, &declared))
}

/// `dj.heading(table)`: the attributes with their declared types, keys, defaults and comments.
#[pg_extern(stable, parallel_safe)]
fn heading(
    table: &str,
) -> TableIterator<
    'static,
    (
        name!(attribute, String),
        name!(type, String),
        name!(sql_type, String),
        name!(in_key, bool),
        name!(nullable, bool),
        name!(default, Option<String>),
        name!(comment, String),
        name!(hidden, bool),
    ),
> {
    let _pin = security::pin();
    let name: Table = catalog::resolve(table).or_raise("dj.heading");
    let columns = catalog::columns(&name).or_raise("dj.heading");
    TableIterator::new(
        columns
            .into_iter()
            .map(|c| {
                let (declared, comment) = c.declared();
                let default = c.declared_default();
                let hidden = c.is_hidden();
                (c.name, declared, c.sql_type, c.in_key, c.nullable, default, comment, hidden)
            })
            .collect::<Vec<_>>(),
    )
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.tables(text) IS
  'The DataJoint tables of a schema (all schemas when NULL): schema, class name, tier and SQL table name.';
COMMENT ON FUNCTION dj.parents(text) IS 'The tables a table references (its foreign keys), with attributes, referenced attributes, whether the reference is part of the primary key and whether it renames attributes.';
COMMENT ON FUNCTION dj.children(text) IS 'The tables that reference a table, one row per foreign key.';
COMMENT ON FUNCTION dj.ancestors(text) IS 'Every table upstream of a table, parents before children.';
COMMENT ON FUNCTION dj.descendants(text) IS 'Every table downstream of a table, parents before children.';
COMMENT ON FUNCTION dj.topological_order(text) IS 'The DataJoint tables of a schema (all when NULL) in dependency order, parts after their master.';
COMMENT ON FUNCTION dj.describe(text) IS 'The definition of a table in the DataJoint language, rebuilt from the catalog.';
COMMENT ON FUNCTION dj.heading(text) IS 'The attributes of a table: declared type, SQL type, key, nullability, default (definition syntax), comment, hidden.';
"#,
    name = "pipeline_comments",
    requires = [tables, parents, children, ancestors, descendants, topological_order, describe, heading]
);

/// `dj.diagram(items, format)`: a diagram of the named schemas and tables, as Mermaid (default),
/// Graphviz DOT or a laid-out SVG.
#[pg_extern(stable, parallel_safe)]
fn diagram(items: Vec<String>, format: default!(&str, "'mermaid'")) -> String {
    let _pin = security::pin();
    draw(&items, format).or_raise("dj.diagram")
}

/// `dj.diagram('lab')`: one schema or table.
#[pg_extern(stable, parallel_safe, name = "diagram")]
fn diagram_one(item: &str, format: default!(&str, "'mermaid'")) -> String {
    let _pin = security::pin();
    draw(&[item.to_string()], format).or_raise("dj.diagram")
}

type ColumnRow = (
    name!(schema_name, String),
    name!(class_name, String),
    name!(table_name, String),
    name!(position, i32),
    name!(attribute, String),
    name!(datajoint_type, String),
    name!(sql_type, String),
    name!(in_key, bool),
    name!(nullable, bool),
    name!(default_value, Option<String>),
    name!(comment, String),
    name!(lineage, Option<String>),
    name!(hidden, bool),
);

/// `dj._pipeline_columns()`, behind the view `dj.pipeline_columns`: every attribute of every
/// DataJoint table the calling role may see, with its DataJoint type, comment (without the type
/// prefix DataJoint stores in it), key membership and lineage.
#[pg_extern(stable, parallel_safe, name = "_pipeline_columns")]
fn pipeline_columns() -> TableIterator<
    'static,
    (
        name!(schema_name, String),
        name!(class_name, String),
        name!(table_name, String),
        name!(position, i32),
        name!(attribute, String),
        name!(datajoint_type, String),
        name!(sql_type, String),
        name!(in_key, bool),
        name!(nullable, bool),
        name!(default_value, Option<String>),
        name!(comment, String),
        name!(lineage, Option<String>),
        name!(hidden, bool),
    ),
> {
    let _pin = security::pin();
    TableIterator::new(column_rows().or_raise("dj.pipeline_columns"))
}

fn column_rows() -> DjResult<Vec<ColumnRow>> {
    let mut out = Vec::new();
    for name in catalog::tables(None)? {
        if !catalog::may_see(&name)? {
            continue;
        }
        let lineage = catalog::lineage_of(&name)?;
        let class = naming::class_name_of(&name.name);
        for (i, c) in catalog::columns(&name)?.into_iter().enumerate() {
            let (declared, comment) = c.declared();
            let default = c.declared_default();
            let hidden = c.is_hidden();
            let origin = lineage.iter().find(|(a, _)| *a == c.name).map(|(_, l)| l.clone());
            out.push((
                name.schema.clone(),
                class.clone(),
                name.name.clone(),
                i as i32 + 1,
                c.name,
                declared,
                c.sql_type,
                c.in_key,
                c.nullable,
                default,
                comment,
                origin,
                hidden,
            ));
        }
    }
    Ok(out)
}

fn draw(items: &[String], format: &str) -> DjResult<String> {
    let format = datajoint_core::diagram::Format::parse(format).ok_or_else(|| {
        crate::error::DjError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("diagram format \"{format}\" is not mermaid, dot or svg"),
            "Pass format => 'mermaid', 'dot' or 'svg'.",
        )
    })?;
    let deps = catalog::dependencies()?;
    let named = catalog::named_tables(&deps, items)?;
    let tables: Vec<&Table> = named.iter().collect();
    Ok(datajoint_core::diagram::Diagram::new(&items.join(", "), &deps, tables).render(format))
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.diagram(text, text) IS 'A diagram of one schema or table (see dj.diagram(text[], text)).';
COMMENT ON FUNCTION dj._pipeline_columns() IS 'Internal: the rows of the view dj.pipeline_columns.';
CREATE VIEW dj.pipeline_columns WITH (security_invoker = true) AS SELECT * FROM dj._pipeline_columns();
COMMENT ON VIEW dj.pipeline_columns IS 'Every attribute of every DataJoint table the querying role may see: DataJoint type, SQL type, key, nullability, default, comment (without the :type: prefix), lineage, hidden.';
GRANT SELECT ON dj.pipeline_columns TO PUBLIC;
COMMENT ON FUNCTION dj.diagram(text[], text) IS
  'A diagram of schemas and tables (each item a schema name or a table): format mermaid (default), dot, or svg (laid out, viewable in a browser). Tiers are drawn as DataJoint draws them.';
"#,
    name = "diagram_comment",
    requires = [diagram, diagram_one, pipeline_columns]
);
