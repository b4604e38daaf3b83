//! The query algebra in SQL: the `dj.relation` type, its operators (`*` join, `&` restrict, `-`
//! antirestrict, `+` union), `dj.proj/aggr/extend/top/u/not`, and the functions that run or
//! describe an expression (`dj.sql`, `dj.fetch`, `dj.fetch1`, `dj.count`, `dj.heading`,
//! `dj.primary_key`, `dj.create_view`). The algebra itself lives in `datajoint_core::algebra`.
//!
//! A `dj.relation` value is the expression's text (`(lab.Session * lab.Scan) & 'depth > 100'`):
//! `dj.rel(text)` makes one. It and every operator check it against the catalog and store it with canonical
//! table names; the type's input function (`'…'::dj.relation`) checks only its syntax, so stored
//! or dumped values load before their tables exist. (The type is not called `rel`: PostgreSQL
//! would read `dj.rel('…')` as a cast to it, skipping the checks.) Everything runs as the calling role.

use std::ffi::CStr;

use datajoint_core::algebra::{self, Catalog, Compiled, Cond, Rel as Expr, TableInfo};
use datajoint_core::sql;
use pgrx::prelude::*;
use pgrx::{InOutFuncs, JsonB, PgSqlErrorCode, StringInfo, VariadicArray};

use crate::rows::{self, JsonRow};
use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::error::{DjError, DjResult, OrRaise};
use crate::headings::PgCatalog;
use crate::security;
use datajoint_core::dependencies::Table;

/// A relation expression. Its text form is the expression itself.
#[derive(Clone, Debug, PostgresType, Serialize, Deserialize)]
#[inoutfuncs]
pub struct Relation {
    text: String,
}

impl InOutFuncs for Relation {
    fn input(input: &CStr) -> Self {
        let text = input.to_str().unwrap_or_else(|_| {
            DjError::new(PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, "expression is not UTF-8", "")
                .raise("dj.relation")
        });
        let expr = algebra::parse(text).or_raise("dj.relation");
        Relation { text: expr.to_string() }
    }

    fn output(&self, buffer: &mut StringInfo) {
        buffer.push_str(&self.text);
    }
}

/// Checks `expr` against the catalog; returns it with canonical names, and its compiled form.
fn checked(mut expr: Expr) -> DjResult<(Relation, Compiled)> {
    let compiled = algebra::compile(&mut expr, &mut PgCatalog)?;
    let text = expr.to_string();
    // Combining two expressions within the limits can exceed them: never store a value that
    // does not parse back.
    algebra::parse(&text)?;
    Ok((Relation { text }, compiled))
}

fn parsed(rel: &Relation) -> DjResult<Expr> {
    Ok(algebra::parse(&rel.text)?)
}

fn build(funcname: &'static str, f: impl FnOnce() -> DjResult<Expr>) -> Relation {
    let _pin = security::pin();
    f().and_then(checked).or_raise(funcname).0
}

fn compiled(funcname: &'static str, rel: &Relation) -> Compiled {
    let _pin = security::pin();
    parsed(rel).and_then(checked).or_raise(funcname).1
}

/// `dj.rel('lab.Session')`, `dj.rel('(lab.Session * lab.Scan) & ''depth > 100''')`: a relation
/// from a table name or from an expression's text.
#[pg_extern(stable, parallel_safe, name = "rel")]
fn rel_from_text(expression: &str) -> Relation {
    build("dj.rel", || Ok(algebra::parse(expression)?))
}

fn json_cond(value: &JsonB) -> DjResult<Cond> {
    Ok(Cond::from_json(&value.0)?)
}

/// An SQL condition, or a key written as JSON text (`rel & '{"subject_id": 1}'`: no SQL
/// condition starts with `{` or `[`).
fn text_cond(text: &str) -> DjResult<Cond> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            return Ok(Cond::from_json(&value)?);
        }
    }
    Ok(Cond::Sql(text.to_string()))
}

fn list_cond(items: Vec<Option<String>>) -> Cond {
    Cond::Or(items.into_iter().flatten().map(Cond::Sql).collect())
}

macro_rules! restriction_operators {
    ($variant:ident, $text:ident, $json:ident, $list:ident, $name:literal) => {
        #[pg_extern(stable, parallel_safe)]
        fn $text(rel: Relation, condition: &str) -> Relation {
            build($name, || Ok(Expr::$variant(Box::new(parsed(&rel)?), text_cond(condition)?)))
        }

        #[pg_extern(stable, parallel_safe)]
        fn $json(rel: Relation, condition: JsonB) -> Relation {
            build($name, || Ok(Expr::$variant(Box::new(parsed(&rel)?), json_cond(&condition)?)))
        }

        #[pg_extern(stable, parallel_safe)]
        fn $list(rel: Relation, conditions: Vec<Option<String>>) -> Relation {
            build($name, || Ok(Expr::$variant(Box::new(parsed(&rel)?), list_cond(conditions))))
        }
    };
}

restriction_operators!(Restrict, rel_restrict_text, rel_restrict_jsonb, rel_restrict_list, "dj.relation &");
restriction_operators!(Exclude, rel_exclude_text, rel_exclude_jsonb, rel_exclude_list, "dj.relation -");

/// A relation as a condition (`{"$rel": "expression"}`): the implicit cast that lets `a & b` and
/// `a - b` take a relation on the right. (An `&(relation, relation)` operator would make
/// PostgreSQL read `a & 'depth > 1'` as a relation literal.)
#[pg_extern(immutable, parallel_safe)]
fn relation_condition(rel: Relation) -> JsonB {
    JsonB(serde_json::json!({ "$rel": rel.text }))
}

/// `a * b`: the join on shared attributes of the same lineage.
#[pg_extern(stable, parallel_safe)]
fn rel_join(a: Relation, b: Relation) -> Relation {
    build("dj.relation *", || Ok(Expr::Join(Box::new(parsed(&a)?), Box::new(parsed(&b)?))))
}

/// `a + b`: the union of relations with the same primary key.
#[pg_extern(stable, parallel_safe)]
fn rel_union(a: Relation, b: Relation) -> Relation {
    build("dj.relation +", || Ok(Expr::Union(Box::new(parsed(&a)?), Box::new(parsed(&b)?))))
}

// The operators live in `public` (on every default search_path), so that `a * b` works without
// `dj` on the path; their argument types keep them apart from every other `*`, `&`, `-`, `+`.
extension_sql!(
    r#"
CREATE CAST (dj.relation AS jsonb) WITH FUNCTION dj.relation_condition(dj.relation) AS IMPLICIT;
CREATE OPERATOR public.* (LEFTARG = dj.relation, RIGHTARG = dj.relation, FUNCTION = dj.rel_join);
CREATE OPERATOR public.+ (LEFTARG = dj.relation, RIGHTARG = dj.relation, FUNCTION = dj.rel_union);
CREATE OPERATOR public.& (LEFTARG = dj.relation, RIGHTARG = text, FUNCTION = dj.rel_restrict_text);
CREATE OPERATOR public.& (LEFTARG = dj.relation, RIGHTARG = jsonb, FUNCTION = dj.rel_restrict_jsonb);
CREATE OPERATOR public.& (LEFTARG = dj.relation, RIGHTARG = text[], FUNCTION = dj.rel_restrict_list);
CREATE OPERATOR public.- (LEFTARG = dj.relation, RIGHTARG = text, FUNCTION = dj.rel_exclude_text);
CREATE OPERATOR public.- (LEFTARG = dj.relation, RIGHTARG = jsonb, FUNCTION = dj.rel_exclude_jsonb);
CREATE OPERATOR public.- (LEFTARG = dj.relation, RIGHTARG = text[], FUNCTION = dj.rel_exclude_list);
COMMENT ON TYPE dj.relation IS 'A DataJoint query expression; its text is the expression, e.g. (lab.Session * lab.Scan) & ''depth > 100''.';
COMMENT ON OPERATOR public.* (dj.relation, dj.relation) IS 'DataJoint join: matches namesake attributes of the same lineage.';
COMMENT ON OPERATOR public.+ (dj.relation, dj.relation) IS 'DataJoint union of relations with the same primary key.';
COMMENT ON OPERATOR public.& (dj.relation, text) IS 'DataJoint restriction by an SQL condition.';
COMMENT ON OPERATOR public.& (dj.relation, jsonb) IS 'DataJoint restriction by a key, a list of keys (any), or the JSON form of conditions.';
COMMENT ON OPERATOR public.& (dj.relation, text[]) IS 'DataJoint restriction by any of several SQL conditions.';
COMMENT ON OPERATOR public.- (dj.relation, text) IS 'DataJoint antirestriction by an SQL condition.';
COMMENT ON OPERATOR public.- (dj.relation, jsonb) IS 'DataJoint antirestriction by a key, keys or conditions.';
COMMENT ON OPERATOR public.- (dj.relation, text[]) IS 'DataJoint antirestriction by several SQL conditions (none may hold).';
COMMENT ON FUNCTION dj.rel_join(dj.relation, dj.relation) IS 'The * operator on relations (join).';
COMMENT ON FUNCTION dj.rel_union(dj.relation, dj.relation) IS 'The + operator on relations (union).';
COMMENT ON FUNCTION dj.rel_restrict_text(dj.relation, text) IS 'The & operator with an SQL condition (or a key written as JSON).';
COMMENT ON FUNCTION dj.rel_restrict_jsonb(dj.relation, jsonb) IS 'The & operator with a key, keys, a relation or JSON conditions.';
COMMENT ON FUNCTION dj.rel_restrict_list(dj.relation, text[]) IS 'The & operator with several SQL conditions (any).';
COMMENT ON FUNCTION dj.rel_exclude_text(dj.relation, text) IS 'The - operator with an SQL condition (or a key written as JSON).';
COMMENT ON FUNCTION dj.rel_exclude_jsonb(dj.relation, jsonb) IS 'The - operator with a key, keys, a relation or JSON conditions.';
COMMENT ON FUNCTION dj.rel_exclude_list(dj.relation, text[]) IS 'The - operator with several SQL conditions (none may hold).';
COMMENT ON FUNCTION dj.relation_condition(dj.relation) IS 'A relation as a JSON condition (the implicit cast behind a & b and a - b).';
COMMENT ON FUNCTION dj.relation_in(cstring) IS 'Input of dj.relation: checks the expression''s syntax only.';
-- The operators as functions of schema dj: they work under any search_path (a BI tool that sets
-- it to one schema), and in SQL a parser of another dialect reads.
CREATE FUNCTION dj."join"(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_join($1, $2)';
CREATE FUNCTION dj."union"(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_union($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, text) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_text($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, jsonb) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_jsonb($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, text[]) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_list($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_jsonb($1, dj.relation_condition($2))';
CREATE FUNCTION dj.exclude(dj.relation, text) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_text($1, $2)';
CREATE FUNCTION dj.exclude(dj.relation, jsonb) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_jsonb($1, $2)';
CREATE FUNCTION dj.exclude(dj.relation, text[]) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_list($1, $2)';
CREATE FUNCTION dj.exclude(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_jsonb($1, dj.relation_condition($2))';
COMMENT ON FUNCTION dj."join"(dj.relation, dj.relation) IS 'Join (the * operator), under any search_path.';
COMMENT ON FUNCTION dj."union"(dj.relation, dj.relation) IS 'Union (the + operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, text) IS 'Restriction by an SQL condition or a key as JSON text (the & operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, jsonb) IS 'Restriction by a key, keys or JSON conditions (the & operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, text[]) IS 'Restriction by any of several SQL conditions (the & operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, dj.relation) IS 'Semijoin (the & operator with a relation), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, text) IS 'Antirestriction by an SQL condition or a key as JSON text (the - operator), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, jsonb) IS 'Antirestriction by a key, keys or JSON conditions (the - operator), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, text[]) IS 'Antirestriction by several SQL conditions, none of which may hold (the - operator), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, dj.relation) IS 'Antijoin (the - operator with a relation), under any search_path.';
COMMENT ON FUNCTION dj.relation_out(dj.relation) IS 'Output of dj.relation: the expression''s text.';
"#,
    name = "rel_operators",
    requires = [
        Relation,
        relation_condition,
        rel_join,
        rel_union,
        rel_restrict_text,
        rel_restrict_jsonb,
        rel_restrict_list,
        rel_exclude_text,
        rel_exclude_jsonb,
        rel_exclude_list
    ]
);

/// `dj.not(condition)`: the negation of a condition, for lists and nesting (`rel & ARRAY[..]`
/// has no place for it otherwise). Returns the JSON form of conditions.
#[pg_extern(immutable, parallel_safe, name = "not")]
fn not_text(condition: &str) -> JsonB {
    JsonB(Cond::Not(Box::new(Cond::Sql(condition.to_string()))).to_json())
}

#[pg_extern(immutable, parallel_safe, name = "not")]
fn not_jsonb(condition: JsonB) -> JsonB {
    JsonB(serde_json::json!({ "$not": condition.0 }))
}

#[pg_extern(immutable, parallel_safe, name = "not")]
fn not_rel(rel: Relation) -> JsonB {
    let _pin = security::pin();
    JsonB(Cond::Not(Box::new(Cond::Rel(Box::new(parsed(&rel).or_raise("dj.not"))))).to_json())
}

fn strings(items: VariadicArray<'_, String>) -> Vec<String> {
    items.iter().flatten().collect()
}

/// `dj.proj(rel, 'attr', 'new = old', 'x = expression', '-attr', '...')`.
#[pg_extern(stable, parallel_safe)]
fn proj(rel: Relation, attributes: VariadicArray<'_, String>) -> Relation {
    let items = strings(attributes);
    build("dj.proj", || Ok(Expr::Proj(Box::new(parsed(&rel)?), items)))
}

/// `dj.proj(rel)`: the primary key only.
#[pg_extern(stable, parallel_safe, name = "proj")]
fn proj_key(rel: Relation) -> Relation {
    build("dj.proj", || Ok(Expr::Proj(Box::new(parsed(&rel)?), Vec::new())))
}

fn aggr_of(group: &Relation, rel: &Relation, items: Vec<String>, exclude_nonmatching: bool) -> Relation {
    build("dj.aggr", || {
        Ok(Expr::Aggr {
            group: Box::new(parsed(group)?),
            rel: Box::new(parsed(rel)?),
            items,
            exclude_nonmatching,
        })
    })
}

/// `dj.aggr(group, rel, 'n = count(*)', 'mean_rate = avg(rate)')`: one row per row of `group`
/// (also those without matches in `rel`), with computations over the matching rows of `rel`.
#[pg_extern(stable, parallel_safe)]
fn aggr(group: Relation, rel: Relation, computations: VariadicArray<'_, String>) -> Relation {
    aggr_of(&group, &rel, strings(computations), false)
}

/// `dj.aggr(group, rel, ARRAY['n = count(*)'], exclude_nonmatching => true)`.
#[pg_extern(stable, parallel_safe, name = "aggr")]
fn aggr_array(
    group: Relation,
    rel: Relation,
    computations: Vec<Option<String>>,
    exclude_nonmatching: default!(bool, false),
) -> Relation {
    aggr_of(&group, &rel, computations.into_iter().flatten().collect(), exclude_nonmatching)
}

/// `dj.extend(a, b)`: `a` with the attributes of `b`, every row of `a` kept (`a` must determine
/// `b`).
#[pg_extern(stable, parallel_safe)]
fn extend(a: Relation, b: Relation) -> Relation {
    build("dj.extend", || Ok(Expr::Extend(Box::new(parsed(&a)?), Box::new(parsed(&b)?))))
}

/// `dj.top(rel, 10, 'rate DESC')`: the first rows in that order (`KEY` = by primary key).
#[pg_extern(stable, parallel_safe)]
fn top(
    rel: Relation,
    limit: default!(Option<i64>, 1),
    order_by: default!(&str, "'KEY'"),
    offset: default!(i64, 0),
) -> Relation {
    build("dj.top", || {
        let bad = |what: &str| {
            DjError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{what} must not be negative"),
                "",
            )
        };
        let limit = limit.map(|l| u64::try_from(l).map_err(|_| bad("limit"))).transpose()?;
        let offset = u64::try_from(offset).map_err(|_| bad("offset"))?;
        let order_by = order_by.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        Ok(Expr::Top { rel: Box::new(parsed(&rel)?), limit, order_by, offset })
    })
}

/// `dj.u('a', 'b')`: the universal set of those attributes (restrict it by a relation, or group
/// with it in dj.aggr).
#[pg_extern(immutable, parallel_safe)]
fn u(attributes: VariadicArray<'_, String>) -> Relation {
    Relation { text: Expr::U(strings(attributes)).to_string() }
}

/// `dj.u()`: the universal set with no attributes (one group: totals over a relation).
#[pg_extern(immutable, parallel_safe, name = "u")]
fn u_empty() -> Relation {
    Relation { text: Expr::U(Vec::new()).to_string() }
}

/// `dj.sql(rel)`: the SQL the expression runs as.
#[pg_extern(stable, parallel_safe)]
fn sql(rel: Relation) -> String {
    let _pin = security::pin();
    compiled("dj.sql", &rel).sql
}

/// The query over the expression's result `q`, selecting `select`, with the ORDER BY / LIMIT /
/// OFFSET a fetch asks for.
fn result_query(
    funcname: &'static str,
    rel: &Relation,
    select: &str,
    order_by: Option<&str>,
    limit: Option<i64>,
    offset: i64,
) -> String {
    let c = compiled(funcname, rel);
    let mut q = format!("SELECT {select} FROM ({}) AS q", c.sql);
    // Asked for, or else the order of a top (which the subquery alone does not guarantee).
    let order = match order_by {
        Some(order_by) => {
            let items: Vec<String> = order_by.split(',').map(|s| s.trim().to_string()).collect();
            algebra::order_by_attributes(&c.heading, &items).or_raise(funcname)
        }
        None => c.order.clone(),
    };
    if !order.is_empty() {
        let order: Vec<String> = order.into_iter().map(|o| format!("q.{o}")).collect();
        q.push_str(&format!(" ORDER BY {}", order.join(", ")));
    }
    if let Some(limit) = limit {
        q.push_str(&format!(" LIMIT {}", limit.max(0)));
    }
    if offset > 0 {
        q.push_str(&format!(" OFFSET {offset}"));
    }
    q
}

/// Each row as jsonb, exactly as `to_jsonb` makes it in the server.
fn fetch_rows(
    funcname: &'static str,
    rel: &Relation,
    order_by: Option<&str>,
    limit: Option<i64>,
    offset: i64,
) -> Vec<JsonRow> {
    let query = result_query(funcname, rel, "pg_catalog.to_jsonb(q)", order_by, limit, offset);
    rows::json_rows(&query).or_raise(funcname)
}

/// `dj.fetch(rel, order_by, limit, offset)`: the rows, each as a JSON object.
#[pg_extern(stable, parallel_safe)]
fn fetch(
    rel: Relation,
    order_by: default!(Option<&str>, "NULL"),
    limit: default!(Option<i64>, "NULL"),
    offset: default!(i64, 0),
) -> SetOfIterator<'static, JsonRow> {
    let _pin = security::pin();
    SetOfIterator::new(fetch_rows("dj.fetch", &rel, order_by, limit, offset))
}

/// `dj.fetch_json(...)`: `dj.fetch` under a name no SQL dialect reserves (BI tools' parsers read
/// `FETCH` as the keyword).
#[pg_extern(stable, parallel_safe)]
fn fetch_json(
    rel: Relation,
    order_by: default!(Option<&str>, "NULL"),
    limit: default!(Option<i64>, "NULL"),
    offset: default!(i64, 0),
) -> SetOfIterator<'static, JsonRow> {
    let _pin = security::pin();
    SetOfIterator::new(fetch_rows("dj.fetch_json", &rel, order_by, limit, offset))
}

/// `dj.fetch1(rel)`: the one row of a relation that must have exactly one.
#[pg_extern(stable, parallel_safe)]
fn fetch1(rel: Relation) -> JsonRow {
    let _pin = security::pin();
    let mut found = fetch_rows("dj.fetch1", &rel, None, Some(2), 0);
    match found.len() {
        1 => found.pop().expect("one row"),
        0 => DjError::new(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("fetch1: {} has no rows", rel.text),
            "fetch1 needs exactly one row; restrict by a full primary key.",
        )
        .raise("dj.fetch1"),
        _ => DjError::new(
            PgSqlErrorCode::ERRCODE_TOO_MANY_ROWS,
            format!("fetch1: {} has more than one row", rel.text),
            "fetch1 needs exactly one row; restrict by a full primary key, or use dj.fetch.",
        )
        .raise("dj.fetch1"),
    }
}

/// `dj._query_sql(rel, ...)`: the typed query `dj.query` runs (each attribute a column of its type).
#[pg_extern(stable, parallel_safe, name = "_query_sql")]
fn query_sql(
    rel: Relation,
    order_by: default!(Option<&str>, "NULL"),
    limit: default!(Option<i64>, "NULL"),
    offset: default!(i64, 0),
) -> String {
    let _pin = security::pin();
    result_query("dj.query", &rel, "q.*", order_by, limit, offset)
}

/// `dj.temp_view(rel, name)`: a temporary view of the expression (this session only, typed
/// columns, replaced if it exists), for clients that want typed rows without creating a view:
/// `SELECT dj.temp_view(dj.rel('lab.Session'), 'sessions'); SELECT * FROM sessions;`. Returns
/// its name.
#[pg_extern(volatile, parallel_unsafe)]
fn temp_view(rel: Relation, name: default!(&str, "'dj_result'")) -> String {
    const FN: &str = "dj.temp_view";
    let _pin = security::pin();
    let c = compiled(FN, &rel);
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !valid {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("\"{name}\" is not a temporary view name"),
            "Use letters, digits and _ (no schema: the view is in this session's temporary schema).",
        )
        .raise(FN);
    }
    let view = sql::ident(name);
    // (DROP ... IF EXISTS would say the temporary schema does not exist before its first use.)
    let exists = catalog::read_one::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[format!("pg_temp.{view}").into()],
    )
    .or_raise(FN);
    let drop = if exists == Some(true) { format!("DROP VIEW pg_temp.{view};\n") } else { String::new() };
    Spi::run(&format!("{drop}CREATE TEMPORARY VIEW {view} AS {}", c.sql)).map_err(DjError::from).or_raise(FN);
    comment_columns(&format!("pg_temp.{view}"), &rel).or_raise(FN);
    name.to_string()
}

/// Tables as the catalog describes them, noting each one an expression names.
struct Recorder(Vec<Table>);

impl Catalog for Recorder {
    type Error = DjError;

    fn table(&mut self, name: &str) -> DjResult<TableInfo> {
        let info = PgCatalog.table(name)?;
        self.0.push(Table { schema: info.schema.clone(), name: info.table.clone() });
        Ok(info)
    }
}

/// Gives each column of the view `view` (qualified) of `rel` the comment of the column it comes
/// from: the first table the expression names that has a column of that name (renamed and
/// computed attributes get none), without DataJoint's `:type:` prefix.
fn comment_columns(view: &str, rel: &Relation) -> DjResult<()> {
    let mut tables = Recorder(Vec::new());
    let compiled = algebra::compile(&mut parsed(rel)?, &mut tables)?;
    let mut columns = Vec::new();
    for t in &tables.0 {
        columns.push(catalog::columns(t)?);
    }
    for attribute in &compiled.heading {
        let origin = columns.iter().flatten().find(|c| c.name == attribute.name);
        let Some((_, comment)) = origin.map(|c| c.declared()) else { continue };
        if !comment.is_empty() {
            Spi::run(&format!(
                "COMMENT ON COLUMN {view}.{} IS {}",
                sql::ident(&attribute.name),
                sql::literal(&comment)
            ))?;
        }
    }
    Ok(())
}

/// `dj.count(rel)`: the number of rows.
#[pg_extern(stable, parallel_safe)]
fn count(rel: Relation) -> i64 {
    let _pin = security::pin();
    let c = compiled("dj.count", &rel);
    catalog::read_one::<i64>(&format!("SELECT count(*) FROM ({}) AS q", c.sql), &[])
        .or_raise("dj.count")
        .unwrap_or(0)
}

/// `dj.primary_key(rel)`: the primary key of the result.
#[pg_extern(stable, parallel_safe)]
fn primary_key(rel: Relation) -> Vec<String> {
    compiled("dj.primary_key", &rel).primary_key()
}

/// The result's column types, as PostgreSQL infers them for the query.
fn column_types(query: &str) -> DjResult<Vec<String>> {
    Spi::connect(|client| {
        let table = client.select(&format!("SELECT * FROM ({query}) AS q LIMIT 0"), None, &[])?;
        let mut oids: Vec<pg_sys::Oid> = Vec::new();
        for i in 1..=table.columns()? {
            oids.push(table.column_type_oid(i)?.value());
        }
        let names = client.select(
            "SELECT pg_catalog.format_type(t, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
            None,
            &[oids.into()],
        )?;
        let mut out = Vec::new();
        for row in names {
            out.push(row.get::<String>(1)?.unwrap_or_default());
        }
        Ok(out)
    })
}

/// `dj.heading(rel)`: the result's attributes: name, type, whether in the primary key, lineage.
#[pg_extern(stable, parallel_safe, name = "heading")]
fn rel_heading(
    rel: Relation,
) -> TableIterator<
    'static,
    (name!(attribute, String), name!(sql_type, String), name!(in_key, bool), name!(lineage, Option<String>)),
> {
    let _pin = security::pin();
    let c = compiled("dj.heading", &rel);
    let types = column_types(&c.sql).or_raise("dj.heading");
    TableIterator::new(
        c.heading.into_iter().zip(types).map(|(a, t)| (a.name, t, a.in_key, a.lineage)).collect::<Vec<_>>(),
    )
}

/// `dj.create_view('lab.active_sessions', rel)`: a view of the expression (security_invoker,
/// so the base tables' privileges and row-level security apply to whoever queries it), with a
/// comment naming its primary key. Returns the view's qualified name.
#[pg_extern(volatile, parallel_unsafe)]
fn create_view(name: &str, rel: Relation, replace: default!(bool, false)) -> String {
    let _pin = security::pin();
    let c = compiled("dj.create_view", &rel);
    let parts = sql::split_name(name).filter(|p| p.len() == 2).unwrap_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("\"{name}\" is not a view name"),
            "Name the view with its schema: schema.view_name.",
        )
        .raise("dj.create_view")
    });
    let qualified = sql::qualified(&parts[0], &parts[1]);
    let key = c.primary_key().join(", ");
    let comment = format!("DataJoint query: {}; primary key: ({key})", rel.text);
    // Replacing drops the old view first: CREATE OR REPLACE cannot change a view's columns.
    let drop = if replace { format!("DROP VIEW IF EXISTS {qualified};\n") } else { String::new() };
    Spi::run(&format!(
        "{drop}CREATE VIEW {qualified} WITH (security_invoker = true) AS {};\nCOMMENT ON VIEW {qualified} IS {}",
        c.sql,
        sql::literal(&comment)
    ))
    .map_err(DjError::from)
    .or_raise("dj.create_view");
    comment_columns(&qualified, &rel).or_raise("dj.create_view");
    qualified
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.rel(text) IS 'A relation from a table (schema.Class or SQL name) or from an expression''s text, checked against the catalog.';
COMMENT ON FUNCTION dj.proj(dj.relation, text[]) IS 'Projection: keep ''attr'', rename ''new = old'', compute ''x = expression'', drop ''-attr'', all ''...''; the primary key always stays.';
COMMENT ON FUNCTION dj.proj(dj.relation) IS 'Projection onto the primary key.';
COMMENT ON FUNCTION dj.aggr(dj.relation, dj.relation, text[]) IS 'Aggregation: one row per row of the first relation (all kept), computations such as ''n = count(*)'' over the matching rows of the second.';
COMMENT ON FUNCTION dj.aggr(dj.relation, dj.relation, text[], boolean) IS 'Aggregation with computations as an array; exclude_nonmatching drops groups without matches.';
COMMENT ON FUNCTION dj.extend(dj.relation, dj.relation) IS 'The first relation with the attributes of the second, every row kept (the first must determine the second).';
COMMENT ON FUNCTION dj.top(dj.relation, bigint, text, bigint) IS 'The first rows in an order (''KEY'' = primary key; ''attr DESC, other'').';
COMMENT ON FUNCTION dj.u(text[]) IS 'The universal set of these attributes: restrict it by a relation, or group with it in dj.aggr.';
COMMENT ON FUNCTION dj.u() IS 'The universal set with no attributes: one group, for totals in dj.aggr.';
COMMENT ON FUNCTION dj.not(text) IS 'The negation of an SQL condition, as a JSON condition (for lists and nesting).';
COMMENT ON FUNCTION dj.not(jsonb) IS 'The negation of a key, list of keys or JSON condition.';
COMMENT ON FUNCTION dj.not(dj.relation) IS 'The negation of a semijoin: rows matching no row of the relation.';
COMMENT ON FUNCTION dj.sql(dj.relation) IS 'The SQL a relation runs as.';
COMMENT ON FUNCTION dj.fetch(dj.relation, text, bigint, bigint) IS 'The rows of a relation as JSON objects, optionally ordered (''KEY'', ''attr DESC''), limited and offset.';
COMMENT ON FUNCTION dj.fetch_json(dj.relation, text, bigint, bigint) IS 'dj.fetch under a name no SQL dialect reserves (for BI tools): the rows as JSON objects, exactly as to_jsonb makes them.';
COMMENT ON FUNCTION dj._query_sql(dj.relation, text, bigint, bigint) IS 'Internal: the typed query dj.query runs.';
CREATE FUNCTION dj.query(rel dj.relation, order_by text DEFAULT NULL, "limit" bigint DEFAULT NULL, "offset" bigint DEFAULT 0)
    RETURNS SETOF record LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $query$
BEGIN
    RETURN QUERY EXECUTE dj._query_sql(rel, order_by, "limit", "offset");
END
$query$;
COMMENT ON FUNCTION dj.query(dj.relation, text, bigint, bigint) IS 'The rows of a relation as typed columns: SELECT * FROM dj.query(rel) AS t(subject_id int4, ...), the column list matching dj.heading.';
COMMENT ON FUNCTION dj.temp_view(dj.relation, text) IS 'A temporary view (this session) of a relation, typed columns and their comments: SELECT * FROM name afterwards. Returns the name.';
COMMENT ON FUNCTION dj.fetch1(dj.relation) IS 'The one row of a relation that must have exactly one (P0002 none, P0003 several).';
COMMENT ON FUNCTION dj.count(dj.relation) IS 'The number of rows of a relation.';
COMMENT ON FUNCTION dj.heading(dj.relation) IS 'The attributes of a relation: name, type, whether in the primary key, lineage.';
COMMENT ON FUNCTION dj.primary_key(dj.relation) IS 'The primary key of a relation.';
COMMENT ON FUNCTION dj.create_view(text, dj.relation, boolean) IS 'Creates schema.view for the relation (security_invoker: the querying role''s privileges and row-level security apply), with its primary key in the comment; replace drops an existing view first.';
"#,
    name = "algebra_comments",
    requires = [
        rel_from_text,
        proj,
        proj_key,
        aggr,
        aggr_array,
        extend,
        top,
        u,
        u_empty,
        not_text,
        not_jsonb,
        not_rel,
        sql,
        fetch,
        fetch_json,
        query_sql,
        temp_view,
        fetch1,
        count,
        rel_heading,
        primary_key,
        create_view
    ]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run(
            "SELECT dj.declare('alg.Subject', 'manual', 'subject_id: int\n---\nspecies: varchar(20)');
             SELECT dj.declare('alg.Session', 'manual', '-> alg.Subject\nsession_idx: int\n---\nduration: float');
             INSERT INTO alg.subject VALUES (1, 'mouse'), (2, 'rat'), (3, 'mouse');
             INSERT INTO alg.session VALUES (1, 1, 2.0), (1, 2, 3.0), (2, 1, 1.0);",
        )
        .unwrap();
    }

    #[pg_test]
    fn operators_compose_and_run() {
        Spi::run("CREATE SCHEMA alg").unwrap();
        setup();
        let n = Spi::get_one::<i64>(
            "SELECT dj.count(dj.rel('alg.Subject') * dj.rel('alg.Session') & 'duration > 1.5')",
        );
        assert_eq!(n, Ok(Some(2)));
        let n = Spi::get_one::<i64>("SELECT dj.count(dj.rel('alg.Subject') - dj.rel('alg.Session'))");
        assert_eq!(n, Ok(Some(1)));
        let text =
            Spi::get_one::<String>("SELECT (dj.rel('alg.subject') & '{\"subject_id\": 1}'::jsonb)::text");
        assert_eq!(text, Ok(Some("alg.Subject & {\"subject_id\":1}".to_string())));
        let total = Spi::get_one::<pgrx::JsonB>(
            "SELECT dj.fetch1(dj.aggr(dj.rel('alg.Subject') & 'subject_id = 1', dj.rel('alg.Session'), 'n = count(*)'))",
        )
        .unwrap()
        .unwrap();
        assert_eq!(total.0["n"], 2);
    }

    #[pg_test(error = "cannot match on attribute \"species\": different lineages (none vs none)")]
    fn namesakes_without_lineage_do_not_match() {
        Spi::run("CREATE SCHEMA alg").unwrap();
        setup();
        Spi::run("SELECT dj.rel('alg.Subject') * dj.proj(dj.rel('alg.Session'), 'species = duration')")
            .unwrap();
    }
}
