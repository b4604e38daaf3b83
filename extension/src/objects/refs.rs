//! A table's object references as plain columns (`dj.object_refs`), for clients and BI tools that
//! read no JSON: one row per stored object, read as the caller (the table's privileges and row
//! security apply).

use datajoint_core::describe::split_type_comment;
use datajoint_core::sql;
use datajoint_core::types::AttributeType;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::catalog;
use crate::error::DjResult;

/// One object a row references.
pub struct RefRow {
    pub attribute: String,
    pub key: JsonB,
    pub store: Option<String>,
    pub path: Option<String>,
    pub size: Option<i64>,
    pub hash: Option<String>,
    pub is_dir: bool,
    pub reference: JsonB,
}

/// Every non-NULL reference in the store attributes of `table`.
pub fn list(table: &str) -> DjResult<Vec<RefRow>> {
    let table = catalog::resolve(table)?;
    let columns = catalog::columns(&table)?;
    let key = columns
        .iter()
        .filter(|c| c.in_key)
        .map(|c| format!("{}, {}", sql::literal(&c.name), sql::ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let selects: Vec<String> = columns
        .iter()
        .filter(|c| {
            let declared = c.comment.as_deref().and_then(split_type_comment).map(|(t, _)| t);
            matches!(declared.map(AttributeType::parse), Some(Ok(AttributeType::Codec { store: Some(_), .. })))
        })
        .map(|c| {
            let col = sql::ident(&c.name);
            format!(
                "SELECT {name}::pg_catalog.text, pg_catalog.jsonb_build_object({key}), \
                        {col} OPERATOR(pg_catalog.->>) 'store', {col} OPERATOR(pg_catalog.->>) 'path', \
                        ({col} OPERATOR(pg_catalog.->>) 'size')::pg_catalog.int8, {col} OPERATOR(pg_catalog.->>) 'hash', \
                        COALESCE(({col} OPERATOR(pg_catalog.->>) 'is_dir')::pg_catalog.bool, false), {col} \
                   FROM {table} WHERE {col} IS NOT NULL",
                name = sql::literal(&c.name),
                table = table.qualified(),
            )
        })
        .collect();
    if selects.is_empty() {
        return Ok(vec![]);
    }
    let query = selects.join(" UNION ALL ");
    Spi::connect(|client| {
        let mut out = Vec::new();
        for r in client.select(&query, None, &[])? {
            out.push(RefRow {
                attribute: r.get::<String>(1)?.unwrap_or_default(),
                key: r.get::<JsonB>(2)?.unwrap_or(JsonB(serde_json::json!({}))),
                store: r.get::<String>(3)?,
                path: r.get::<String>(4)?,
                size: r.get::<i64>(5)?,
                hash: r.get::<String>(6)?,
                is_dir: r.get::<bool>(7)?.unwrap_or(false),
                reference: r.get::<JsonB>(8)?.unwrap_or(JsonB(serde_json::json!({}))),
            });
        }
        Ok(out)
    })
}
