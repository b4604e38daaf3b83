//! Tables as the query algebra sees them: visible attributes, key membership and lineage, read
//! from the catalog with one kept plan per backend. Used by the algebra's SQL functions and by
//! make functions' relation expressions.

use datajoint_core::algebra::{Attribute, Catalog, TableInfo};
use datajoint_core::dependencies::Table;
use datajoint_core::naming::{self, Tier};
use datajoint_core::sql;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgOid, PgSqlErrorCode};

use crate::catalog;
use crate::error::{DjError, DjResult};

/// Tables as the catalog describes them to the caller.
pub struct PgCatalog;

impl Catalog for PgCatalog {
    type Error = DjError;

    fn table(&mut self, name: &str) -> DjResult<TableInfo> {
        match sql::split_name(name).as_deref().and_then(catalog::candidates) {
            Some((schema, candidates)) => match table_info(&schema, candidates)? {
                Some(info) => Ok(info),
                // Not found: let the catalog's resolver say so, with its hint.
                None => Err(catalog::resolve(name).err().unwrap_or_else(|| {
                    DjError::new(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                        format!("table {name} does not exist"),
                        "",
                    )
                })),
            },
            // Every name `candidates` refuses, the resolver refuses too (the same split, the same
            // shapes); should they ever differ, the name is still not one the algebra can read.
            None => Err(catalog::resolve(name).err().unwrap_or_else(|| catalog::not_a_name(name))),
        }
    }
}

/// One table's visible columns, key membership and whether its schema records lineage; one
/// statement, planned once per backend (expressions compile in well under a millisecond).
const COLUMNS: &str = "WITH t AS ( \
       SELECT c.oid, c.relname::text AS relname FROM pg_catalog.pg_class c \
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
       WHERE n.nspname = $1 AND c.relname = ANY ($2) AND c.relkind IN ('r', 'p') \
       ORDER BY pg_catalog.array_position($2, c.relname::text) LIMIT 1) \
     SELECT t.relname, a.attname::text, coalesce(a.attnum = ANY (i.indkey), false), \
            pg_catalog.to_regclass(pg_catalog.format('%I.%I', $1, '~lineage')) IS NOT NULL \
     FROM t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped \
     LEFT JOIN pg_catalog.pg_index i ON i.indrelid = t.oid AND i.indisprimary \
     ORDER BY a.attnum";

thread_local! {
    static PLANS: std::cell::RefCell<Option<OwnedPreparedStatement>> = const { std::cell::RefCell::new(None) };
}

pub fn table_info(schema: &str, candidates: Vec<String>) -> DjResult<Option<TableInfo>> {
    let rows: Vec<(String, String, bool, bool)> = Spi::connect(|client| {
        PLANS.with(|plans| -> DjResult<_> {
            let mut plans = plans.borrow_mut();
            if plans.is_none() {
                let oids = [PgOid::from(pg_sys::TEXTOID), PgOid::from(pg_sys::TEXTARRAYOID)];
                *plans = Some(client.prepare(COLUMNS, &oids)?.keep());
            }
            let table = client.select(
                plans.as_ref().expect("prepared"),
                None,
                &[schema.into(), candidates.into()],
            )?;
            let mut out = Vec::new();
            for row in table {
                out.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?.unwrap_or_default(),
                    row.get::<bool>(3)?.unwrap_or(false),
                    row.get::<bool>(4)?.unwrap_or(false),
                ));
            }
            Ok(out)
        })
    })?;
    let Some((table, _, _, lineage_available)) = rows.first().cloned() else { return Ok(None) };
    let t = Table { schema: schema.to_string(), name: table };
    let lineage = if lineage_available { catalog::lineage_rows(&t)? } else { Vec::new() };
    let attributes = rows
        .into_iter()
        // Hidden attributes (job metadata) are not part of the heading, as in datajoint-python.
        .filter(|(_, name, _, _)| !name.starts_with('_'))
        .map(|(_, name, in_key, _)| Attribute {
            lineage: lineage.iter().find(|(a, _)| *a == name).map(|(_, l)| l.clone()),
            name,
            in_key,
        })
        .collect();
    let display = match Tier::of_table(&t.name) {
        Some(_) => format!("{}.{}", display_part(&t.schema), naming::class_name_of(&t.name)),
        None => sql::qualified(&t.schema, &t.name),
    };
    Ok(Some(TableInfo {
        display,
        schema: t.schema.clone(),
        table: t.name.clone(),
        attributes,
        lineage_available,
    }))
}

/// A resolved table as the algebra sees it (for make functions' expressions).
pub fn table_info_of(t: &Table) -> DjResult<TableInfo> {
    table_info(&t.schema, vec![t.name.clone()])?.ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("table {} does not exist", t.qualified()),
            "",
        )
    })
}

/// A schema name as the expression syntax reads it back: bare when it is a plain word.
fn display_part(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        sql::ident(name)
    }
}
