//! The statements of a make's host calls: a guest's query as one SELECT (a table or a relation
//! expression, restricted by the current key), and a guest's row as one INSERT with the key's
//! attributes and the job metadata filled in. Built from names and checked conditions only:
//! identifiers quoted, values always parameters, conditions re-emitted by
//! [`restriction::condition`].

use crate::algebra::{self, Attribute};
use crate::dependencies::Table;
use crate::make::{self, Field, Query, Row, Value};
use crate::restriction;
use crate::sql;

use super::error::{HostError, Kind};
use super::tables::{Column, TableInfo};

/// A statement with its parameters: `$1..$n` take values of these columns' types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// What it reads or writes, for messages: a table's name or an expression.
    pub label: String,
    pub sql: String,
    pub params: Vec<Column>,
}

/// The refusal of text with a NUL character (the database cannot hold it).
pub fn nul_error(what: &str) -> HostError {
    HostError::new(
        Kind::Nul,
        format!("{what} contains a NUL character"),
        "Remove the \\0 from the make function's query: SQL text cannot hold it.",
    )
}

/// Refuses a guest query whose texts hold NUL.
pub fn check_query_text(q: &Query) -> Result<(), HostError> {
    let texts = std::iter::once(&q.relation).chain(&q.restrictions).chain(&q.attributes).chain(&q.order_by);
    if texts.into_iter().any(|t| t.contains('\0')) {
        return Err(nul_error("the make function's query"));
    }
    Ok(())
}

/// The guest's `relation` as an expression, when it is one (`Recording * Session`); `None` for a
/// plain table name, which the host resolves relative to the target's schema.
pub fn relation_expression(relation: &str) -> Result<Option<algebra::Rel>, HostError> {
    if !relation.contains(['*', '&', '-', '+', '(', '[', '\'']) {
        return Ok(None);
    }
    let parsed = algebra::parse(relation).map_err(|e| {
        let message = format!("cannot read the expression {relation}: {} (at: {})", e.message, e.fragment);
        HostError { message, ..HostError::from(e) }
    })?;
    match parsed {
        algebra::Rel::Table(_) => Ok(None),
        expression => Ok(Some(expression)),
    }
}

/// A guest's query over a table: its visible attributes, restricted by the key attributes it
/// shares with `key` (bound in the table's column order). With it, the same query for many keys
/// at once ([`batched`]).
pub fn fetch_table(
    info: &TableInfo,
    key: &Row,
    q: &Query,
    limit: Option<u64>,
) -> Result<(Statement, Option<Statement>), HostError> {
    let label = info.qualified();
    let params: Vec<Column> =
        info.columns.iter().filter(|c| key.iter().any(|f| f.name == c.name)).cloned().collect();
    let heading: Vec<Attribute> = info
        .columns
        .iter()
        .filter(|c| !c.hidden())
        .map(|c| Attribute { name: c.name.clone(), in_key: c.in_key, lineage: None })
        .collect();
    let from = info.table.qualified();
    let sql = select(&from, &heading, &params, q, limit, &label, &positional)?;
    let batch = batched(&label, &params, |param| select(&from, &heading, &params, q, limit, &label, param))?;
    Ok((Statement { label, sql, params }, batch))
}

/// A guest's query over a compiled relation expression (`aggr(Recording, Recording.Channel, 'n =
/// count(*)')`): restricted by the key on the attributes it shares with it, like a table. The
/// parameters take the types of the target's key columns.
pub fn fetch_expression(
    label: String,
    compiled: &algebra::Compiled,
    target: &TableInfo,
    key: &Row,
    q: &Query,
    limit: Option<u64>,
) -> Result<(Statement, Option<Statement>), HostError> {
    let params: Vec<Column> = target
        .columns
        .iter()
        .filter(|c| key.iter().any(|f| f.name == c.name) && compiled.heading.iter().any(|a| a.name == c.name))
        .cloned()
        .collect();
    let from = format!("({}) AS q", compiled.sql);
    let sql = select(&from, &compiled.heading, &params, q, limit, &label, &positional)?;
    let batch =
        batched(&label, &params, |param| select(&from, &compiled.heading, &params, q, limit, &label, param))?;
    Ok((Statement { label, sql, params }, batch))
}

/// `$i`: the statement's own parameters.
fn positional(i: usize) -> String {
    format!("${i}")
}

/// The name of the key's ordinal in the rows of a [`batched`] statement (their first column).
pub const KEY_ORDINAL: &str = "dj_key_ordinal";

/// A per-key query for many keys in one statement: parameter `i` is an array holding the `i`-th
/// key attribute of every key, the per-key query runs once per element (a LATERAL subquery, so
/// its order and limit hold per key), and each row starts with the 1-based ordinal of its key.
/// `None` for a query that depends on no key attribute (nothing to gain).
fn batched(
    label: &str,
    params: &[Column],
    per_key: impl FnOnce(&dyn Fn(usize) -> String) -> Result<String, HostError>,
) -> Result<Option<Statement>, HostError> {
    if params.is_empty() {
        return Ok(None);
    }
    // Inside the subquery the table's own columns come first, so no attribute can be shadowed by
    // these names.
    let element = |i: usize| format!("k.dj_key_{i}");
    let inner = per_key(&element)?;
    let arrays: Vec<String> = (1..=params.len()).map(|i| format!("pg_catalog.unnest(${i})")).collect();
    let names: Vec<String> = (1..=params.len()).map(|i| format!("dj_key_{i}")).collect();
    let sql = format!(
        "SELECT k.{KEY_ORDINAL}, s.* FROM ROWS FROM ({}) WITH ORDINALITY AS k({}, {KEY_ORDINAL}) \
         CROSS JOIN LATERAL ({inner}) AS s",
        arrays.join(", "),
        names.join(", ")
    );
    Ok(Some(Statement { label: label.to_string(), sql, params: params.to_vec() }))
}

/// `SELECT attributes FROM from WHERE key = $i ... AND (conditions) ORDER BY ... LIMIT n`.
fn select(
    from: &str,
    heading: &[Attribute],
    params: &[Column],
    q: &Query,
    limit: Option<u64>,
    label: &str,
    param: &dyn Fn(usize) -> String,
) -> Result<String, HostError> {
    let names: Vec<String> = heading.iter().map(|a| a.name.clone()).collect();
    let unknown = |a: &str| {
        HostError::new(
            Kind::UndefinedColumn,
            format!("{label} has no attribute {a}"),
            format!("Its attributes: {}.", names.join(", ")),
        )
    };
    let mut selected = Vec::new();
    for a in &q.attributes {
        if !names.contains(a) {
            return Err(unknown(a));
        }
        selected.push(sql::ident(a));
    }
    if q.attributes.is_empty() {
        selected = names.iter().map(|a| sql::ident(a)).collect();
    }
    let mut wheres: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = {}", sql::ident(&c.name), param(i + 1)))
        .collect();
    for c in &q.restrictions {
        let condition = restriction::condition(c, &names).map_err(|e| {
            HostError::new(Kind::Syntax, format!("restriction on {label}: {}", e.message), e.hint.clone())
        })?;
        wheres.push(condition);
    }
    let mut out = format!("SELECT {} FROM {from}", selected.join(", "));
    if !wheres.is_empty() {
        out = format!("{out} WHERE {}", wheres.join(" AND "));
    }
    // The one ORDER BY grammar (`KEY`, `attr [ASC|DESC] [NULLS FIRST|LAST]`).
    let order = algebra::order_by_attributes(heading, &q.order_by).map_err(HostError::from)?;
    if !order.is_empty() {
        out = format!("{out} ORDER BY {}", order.join(", "));
    }
    if let Some(n) = limit {
        out = format!("{out} LIMIT {n}");
    }
    Ok(out)
}

/// The fetch1 rule: exactly one row, else P0002 (none) or P0003 (several), as PL/pgSQL's
/// `SELECT INTO STRICT`.
pub fn check_one(rows: &[Row], label: &str, key: &Row) -> Result<(), HostError> {
    if rows.len() == 1 {
        return Ok(());
    }
    let (kind, found) = if rows.is_empty() { (Kind::NoRow, "no") } else { (Kind::SeveralRows, "several") };
    Err(HostError::new(
        kind,
        format!("fetch1 from {label} found {found} rows for key ({})", make::display_row(key)),
        "fetch1 expects exactly one row: restrict the query further, or use fetch.",
    ))
}

/// What the host records with each row of the target (datajoint-python's hidden job columns,
/// where the table has them).
#[derive(Clone, Debug)]
pub struct JobMetadata {
    /// `_job_start_time`: the session's wall clock when the key started, µs since 1970.
    pub started_at: i64,
    /// `_job_duration`, seconds.
    pub duration: f64,
    /// `_job_version`: the sha256 of the module.
    pub version: String,
}

/// A guest's row for `info` as an INSERT and its values, in parameter order: every attribute
/// visible and given once, key attributes equal to the key's (those left out are taken from
/// it), the job metadata added for the target.
pub fn insert_row(
    info: &TableInfo,
    row: Row,
    key: &Row,
    job: Option<&JobMetadata>,
) -> Result<(Statement, Vec<Value>), HostError> {
    let (columns, values) = insert_values(info, row, key, job)?;
    Ok((insert_statement(info, &columns), values))
}

/// The columns (positions in `info.columns`, in order) and values of a guest's row, as
/// [`insert_row`] checks and completes them; the statement for those columns is [`insert_statement`]'s (the
/// same for every row with the same columns).
pub fn insert_values(
    info: &TableInfo,
    row: Row,
    key: &Row,
    job: Option<&JobMetadata>,
) -> Result<(Vec<usize>, Vec<Value>), HostError> {
    let key_value = |name: &str| key.iter().find(|f| f.name == name).map(|f| &f.value);
    let position = |name: &str| info.columns.iter().position(|c| c.name == name);
    let mut columns: Vec<usize> = Vec::with_capacity(row.len() + key.len() + 3);
    let mut values: Vec<Value> = Vec::with_capacity(columns.capacity());
    for Field { name, value } in row {
        let Some(i) = position(&name).filter(|&i| !info.columns[i].hidden()) else {
            return Err(HostError::new(
                Kind::UndefinedColumn,
                format!("{} has no attribute {name}", info.qualified()),
                format!("Its attributes: {}.", info.visible().join(", ")),
            ));
        };
        if columns.contains(&i) {
            return Err(HostError::new(
                Kind::DuplicateColumn,
                format!("attribute {name} appears twice in a row for {}", info.qualified()),
                "Give each attribute once per row.",
            ));
        }
        if let Some(k) = key_value(&name) {
            if *k != value {
                return Err(HostError::new(
                    Kind::Privilege,
                    format!(
                        "the make function inserted {name}={} into {}, but its key has {name}={}",
                        make::display_value(&value),
                        info.qualified(),
                        make::display_value(k)
                    ),
                    "A make call writes only rows of its own key.",
                ));
            }
        }
        columns.push(i);
        values.push(value);
    }
    // Key attributes the row left out come from the key.
    for (i, c) in info.columns.iter().enumerate() {
        if columns.contains(&i) {
            continue;
        }
        if let Some(k) = key_value(&c.name) {
            columns.push(i);
            values.push(k.clone());
        }
    }
    if let Some(job) = job {
        for (name, value) in [
            ("_job_start_time", Value::Timestamp(job.started_at)),
            ("_job_duration", Value::Float(job.duration)),
            ("_job_version", Value::Text(job.version.clone())),
        ] {
            if let Some(i) = position(name) {
                columns.push(i);
                values.push(value);
            }
        }
    }
    // In the table's order: rows of one table with the same attributes have one statement,
    // whatever order the guest gave them in.
    let mut pairs: Vec<(usize, Value)> = columns.into_iter().zip(values).collect();
    pairs.sort_by_key(|(i, _)| *i);
    Ok(pairs.into_iter().unzip())
}

/// The single-row INSERT of `info`'s `columns` (positions).
pub fn insert_statement(info: &TableInfo, columns: &[usize]) -> Statement {
    let params: Vec<Column> = columns.iter().map(|&i| info.columns[i].clone()).collect();
    let names: Vec<String> = params.iter().map(|c| c.name.clone()).collect();
    Statement { label: info.qualified(), sql: insert_sql(&info.table, &names), params }
}

/// `INSERT INTO table (columns) VALUES ($1, ...)`.
pub fn insert_sql(table: &Table, columns: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|c| sql::ident(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    format!("INSERT INTO {} ({}) VALUES ({})", table.qualified(), names.join(", "), params.join(", "))
}

/// `INSERT INTO table (columns) SELECT * FROM ROWS FROM (unnest($1), ...)`: many rows in one
/// statement, parameter `i` the array of the rows' values of column `i`.
pub fn insert_many_sql(table: &Table, columns: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|c| sql::ident(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("pg_catalog.unnest(${i})")).collect();
    format!(
        "INSERT INTO {} ({}) SELECT * FROM ROWS FROM ({})",
        table.qualified(),
        names.join(", "),
        params.join(", ")
    )
}
