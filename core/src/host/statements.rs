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
/// shares with `key` (bound in the table's column order).
pub fn fetch_table(
    info: &TableInfo,
    key: &Row,
    q: &Query,
    limit: Option<u64>,
) -> Result<Statement, HostError> {
    let label = info.qualified();
    let params: Vec<Column> =
        info.columns.iter().filter(|c| key.iter().any(|f| f.name == c.name)).cloned().collect();
    let heading: Vec<Attribute> = info
        .columns
        .iter()
        .filter(|c| !c.hidden())
        .map(|c| Attribute { name: c.name.clone(), in_key: c.in_key, lineage: None })
        .collect();
    let sql = select(&info.table.qualified(), &heading, &params, q, limit, &label)?;
    Ok(Statement { label, sql, params })
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
) -> Result<Statement, HostError> {
    let params: Vec<Column> = target
        .columns
        .iter()
        .filter(|c| key.iter().any(|f| f.name == c.name) && compiled.heading.iter().any(|a| a.name == c.name))
        .cloned()
        .collect();
    let from = format!("({}) AS q", compiled.sql);
    let sql = select(&from, &compiled.heading, &params, q, limit, &label)?;
    Ok(Statement { label, sql, params })
}

/// `SELECT attributes FROM from WHERE key = $i ... AND (conditions) ORDER BY ... LIMIT n`.
fn select(
    from: &str,
    heading: &[Attribute],
    params: &[Column],
    q: &Query,
    limit: Option<u64>,
    label: &str,
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
    let mut wheres: Vec<String> =
        params.iter().enumerate().map(|(i, c)| format!("{} = ${}", sql::ident(&c.name), i + 1)).collect();
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
    let qualified = info.qualified();
    let key_value = |name: &str| key.iter().find(|f| f.name == name).map(|f| &f.value);
    let mut columns: Vec<Column> = Vec::with_capacity(row.len() + key.len() + 3);
    let mut values: Vec<Value> = Vec::with_capacity(columns.capacity());
    for Field { name, value } in row {
        let Some(c) = info.column(&name).filter(|c| !c.hidden()) else {
            return Err(HostError::new(
                Kind::UndefinedColumn,
                format!("{qualified} has no attribute {name}"),
                format!("Its attributes: {}.", info.visible().join(", ")),
            ));
        };
        if columns.iter().any(|d| d.name == c.name) {
            return Err(HostError::new(
                Kind::DuplicateColumn,
                format!("attribute {name} appears twice in a row for {qualified}"),
                "Give each attribute once per row.",
            ));
        }
        if let Some(k) = key_value(&c.name) {
            if *k != value {
                return Err(HostError::new(
                    Kind::Privilege,
                    format!(
                        "the make function inserted {name}={} into {qualified}, but its key has {name}={}",
                        make::display_value(&value),
                        make::display_value(k)
                    ),
                    "A make call writes only rows of its own key.",
                ));
            }
        }
        columns.push(c.clone());
        values.push(value);
    }
    // Key attributes the row left out come from the key.
    for c in &info.columns {
        if columns.iter().any(|d| d.name == c.name) {
            continue;
        }
        if let Some(k) = key_value(&c.name) {
            columns.push(c.clone());
            values.push(k.clone());
        }
    }
    if let Some(job) = job {
        for (name, value) in [
            ("_job_start_time", Value::Timestamp(job.started_at)),
            ("_job_duration", Value::Float(job.duration)),
            ("_job_version", Value::Text(job.version.clone())),
        ] {
            if let Some(c) = info.column(name) {
                columns.push(c.clone());
                values.push(value);
            }
        }
    }
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let sql = insert_sql(&info.table, &names);
    Ok((Statement { label: qualified, sql, params: columns }, values))
}

/// `INSERT INTO table (columns) VALUES ($1, ...)`.
pub fn insert_sql(table: &Table, columns: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|c| sql::ident(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    format!("INSERT INTO {} ({}) VALUES ({})", table.qualified(), names.join(", "), params.join(", "))
}
