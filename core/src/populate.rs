//! The SQL behind `dj.populate` and a make function's host calls, built from names and checked
//! conditions only (identifiers quoted, values always parameters, conditions re-emitted by
//! [`restriction::condition`]).

use crate::dependencies::Table;
use crate::make::{Field, Value};
use crate::restriction::{self, RestrictionError};
use crate::sql;

/// Concurrent populates of one table divide its keys by bucket: a populate makes a key only
/// while it holds the key's bucket (a transaction-level lock, skipped when another session holds
/// it), so two never make the same key, never wait for each other's uncommitted rows and never
/// deadlock. Few buckets keep the locks a populate holds bounded (its transaction keeps them).
pub const KEY_BUCKETS: u32 = 64;

/// The advisory lock (two int4 keys) of a table's key bucket: the table's oid and a tag.
pub fn bucket_lock(table_oid: u32, bucket: u32) -> (i32, i32) {
    (table_oid as i32, LOCK_TAG | bucket as i32)
}

/// The advisory lock under which a table's jobs table is created.
pub fn jobs_table_lock(table_oid: u32) -> (i32, i32) {
    (table_oid as i32, LOCK_TAG | 0xffff)
}

/// The second key of datajoint's advisory locks ("DJ" in the high half).
const LOCK_TAG: i32 = 0x444a_0000;

/// The bucket of a key: a hash of its attribute names and values that every process computes
/// alike (FNV-1a over a fixed encoding).
pub fn key_bucket(key: &[Field]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for f in key {
        eat(f.name.as_bytes());
        eat(&[0]);
        match &f.value {
            Value::Null => eat(b"n"),
            Value::Boolean(b) => eat(&[b'b', u8::from(*b)]),
            Value::Int(i) => eat(&i.to_le_bytes()),
            Value::Float(x) => eat(&x.to_bits().to_le_bytes()),
            Value::Decimal(t) | Value::Text(t) | Value::Json(t) => eat(t.as_bytes()),
            Value::Bytes(b) => eat(b),
            Value::Date(d) => eat(&d.to_le_bytes()),
            Value::Time(t) | Value::Timestamp(t) => eat(&t.to_le_bytes()),
            Value::Uuid((hi, lo)) => {
                eat(&hi.to_le_bytes());
                eat(&lo.to_le_bytes())
            }
        }
        eat(&[0xff]);
    }
    (h % u64::from(KEY_BUCKETS)) as u32
}

/// One primary-key parent of the target: the parent and its (child attribute, parent attribute)
/// pairs, in key order.
#[derive(Clone, Debug)]
pub struct KeyParent {
    pub table: Table,
    pub attributes: Vec<(String, String)>,
}

/// In which order populate visits the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Original,
    Reverse,
    Random,
}

impl Order {
    pub fn parse(text: &str) -> Option<Order> {
        match text.to_ascii_lowercase().as_str() {
            "original" => Some(Order::Original),
            "reverse" => Some(Order::Reverse),
            "random" => Some(Order::Random),
            _ => None,
        }
    }
}

/// The key source of a table: the join of its primary-key parents, projected to its primary key
/// (renamed foreign keys under their new names). Every parent contributes its whole primary key,
/// so the join is a set: no DISTINCT.
///
/// Returns `None` when some key attribute comes from no parent (the table has nothing to
/// populate from).
pub fn key_source(key: &[String], parents: &[KeyParent]) -> Option<String> {
    // A table without key attributes or without primary-key parents has no key source.
    if key.is_empty() || parents.is_empty() {
        return None;
    }
    let mut source_of: Vec<Option<String>> = vec![None; key.len()];
    let mut from = String::new();
    for (i, parent) in parents.iter().enumerate() {
        let alias = format!("k{i}");
        let mut on = Vec::new();
        for (child, parent_attr) in &parent.attributes {
            let column = format!("{}.{}", sql::ident(&alias), sql::ident(parent_attr));
            let Some(slot) = key.iter().position(|k| k == child) else { continue };
            match &source_of[slot] {
                Some(earlier) => on.push(format!("{column} = {earlier}")),
                None => source_of[slot] = Some(column),
            }
        }
        let table =
            format!("{} AS {}", sql::qualified(&parent.table.schema, &parent.table.name), sql::ident(&alias));
        if i == 0 {
            from = table;
        } else if on.is_empty() {
            from = format!("{from} CROSS JOIN {table}");
        } else {
            from = format!("{from} JOIN {table} ON {}", on.join(" AND "));
        }
    }
    let mut select = Vec::with_capacity(key.len());
    for (name, source) in key.iter().zip(&source_of) {
        select.push(format!("{} AS {}", source.as_ref()?, sql::ident(name)));
    }
    Some(format!("SELECT {} FROM {from}", select.join(", ")))
}

/// The keys of `key_source` still missing from `target` (when `missing`), restricted by the
/// checked `condition`, in `order`, at most `limit`.
pub fn keys_sql(
    key_source: &str,
    target: &Table,
    key: &[String],
    condition: Option<&str>,
    missing: bool,
    order: Order,
    limit: Option<i64>,
) -> String {
    let mut wheres = Vec::new();
    if missing {
        let matched: Vec<String> =
            key.iter().map(|k| format!("\"t\".{} = \"ks\".{}", sql::ident(k), sql::ident(k))).collect();
        wheres.push(format!(
            "NOT EXISTS (SELECT FROM {} AS \"t\" WHERE {})",
            sql::qualified(&target.schema, &target.name),
            matched.join(" AND ")
        ));
    }
    if let Some(c) = condition {
        // Conditions come parenthesized from restriction::condition.
        wheres.push(c.to_string());
    }
    let mut out = format!("SELECT * FROM ({key_source}) AS \"ks\"");
    if !wheres.is_empty() {
        out = format!("{out} WHERE {}", wheres.join(" AND "));
    }
    let columns: Vec<String> = key.iter().map(|k| sql::ident(k)).collect();
    match order {
        Order::Original => out = format!("{out} ORDER BY {}", columns.join(", ")),
        Order::Reverse => out = format!("{out} ORDER BY {} DESC", columns.join(" DESC, ")),
        Order::Random => out = format!("{out} ORDER BY pg_catalog.random()"),
    }
    if let Some(n) = limit {
        out = format!("{out} LIMIT {n}");
    }
    out
}

/// A restriction condition over the key source's attributes, checked and re-emitted.
pub fn key_condition(condition: &str, key: &[String]) -> Result<String, RestrictionError> {
    restriction::condition(condition, key)
}

/// Errors in a make function's query, reported to the user with the offending text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    UnknownAttribute { attribute: String, available: Vec<String> },
    BadOrder(String),
    Condition(RestrictionError),
}

/// `SELECT ... FROM table WHERE <key attributes> = $i ... AND (conditions) ORDER BY ... LIMIT n`.
///
/// `heading` lists the visible attributes of the table; `key_attributes` the current key's
/// attributes the table shares, each bound to the next parameter in this order.
pub fn fetch_sql(
    table: &Table,
    heading: &[String],
    key_attributes: &[String],
    attributes: &[String],
    conditions: &[String],
    order_by: &[String],
    limit: Option<u64>,
) -> Result<String, QueryError> {
    let from = sql::qualified(&table.schema, &table.name);
    fetch_sql_from(&from, heading, key_attributes, attributes, conditions, order_by, limit)
}

/// [`fetch_sql`] over any FROM item whose columns are `heading`: a table, or a compiled relation
/// expression as `(SELECT …) AS q`.
pub fn fetch_sql_from(
    from: &str,
    heading: &[String],
    key_attributes: &[String],
    attributes: &[String],
    conditions: &[String],
    order_by: &[String],
    limit: Option<u64>,
) -> Result<String, QueryError> {
    let unknown =
        |a: &str| QueryError::UnknownAttribute { attribute: a.to_string(), available: heading.to_vec() };
    let selected: Vec<String> = if attributes.is_empty() {
        heading.iter().map(|a| sql::ident(a)).collect()
    } else {
        let mut out = Vec::new();
        for a in attributes {
            if !heading.contains(a) {
                return Err(unknown(a));
            }
            out.push(sql::ident(a));
        }
        out
    };
    let mut wheres: Vec<String> =
        key_attributes.iter().enumerate().map(|(i, k)| format!("{} = ${}", sql::ident(k), i + 1)).collect();
    for c in conditions {
        wheres.push(restriction::condition(c, heading).map_err(QueryError::Condition)?);
    }
    let mut out = format!("SELECT {} FROM {from}", selected.join(", "));
    if !wheres.is_empty() {
        out = format!("{out} WHERE {}", wheres.join(" AND "));
    }
    if !order_by.is_empty() {
        let mut terms = Vec::new();
        for term in order_by {
            let words: Vec<&str> = term.split_whitespace().collect();
            let (name, direction) = match words.as_slice() {
                [name] => (*name, ""),
                [name, d] if d.eq_ignore_ascii_case("asc") => (*name, " ASC"),
                [name, d] if d.eq_ignore_ascii_case("desc") => (*name, " DESC"),
                _ => return Err(QueryError::BadOrder(term.clone())),
            };
            if !heading.iter().any(|h| h == name) {
                return Err(unknown(name));
            }
            terms.push(format!("{}{direction}", sql::ident(name)));
        }
        out = format!("{out} ORDER BY {}", terms.join(", "));
    }
    if let Some(n) = limit {
        out = format!("{out} LIMIT {n}");
    }
    Ok(out)
}

/// The condition of rows not made by the module with this sha256 (`dj.stale`, recompute_stale).
pub fn stale_condition(sha256: &str) -> String {
    format!("\"_job_version\" IS DISTINCT FROM {}", sql::literal(sha256))
}

/// `INSERT INTO table (columns) VALUES ($1, ...)`.
pub fn insert_sql(table: &Table, columns: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|c| sql::ident(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        sql::qualified(&table.schema, &table.name),
        names.join(", "),
        params.join(", ")
    )
}

/// The jobs table of a target, datajoint-python 2.x's name: `~~` and the name without leading
/// underscores (`__spike_rate` → `~~spike_rate`).
pub fn jobs_table(target: &Table) -> Table {
    Table::new(target.schema.clone(), format!("~~{}", target.name.trim_start_matches('_')))
}

/// The definition datajoint-python 2.3.5 declares a jobs table with; `key` holds the target's
/// primary key as (name, SQL type as the catalog prints it).
pub fn jobs_definition(target: &Table, key: &[(String, String)]) -> String {
    let mut out = format!("# Job queue for {}\n", sql::qualified(&target.schema, &target.name));
    for (name, sql_type) in key {
        out.push_str(&format!("{name} : {sql_type}\n"));
    }
    out.push_str(
        "---
status          : enum('pending', 'reserved', 'success', 'error', 'ignore')
priority        : int8
created_time=CURRENT_TIMESTAMP(3) : datetime(3)
scheduled_time=CURRENT_TIMESTAMP(3) : datetime(3)
reserved_time=null  : datetime(3)
completed_time=null : datetime(3)
duration=null   : float64
error_message=\"\" : varchar(2047)
error_stack=null : <blob>
user=\"\"         : varchar(255)
host=\"\"         : varchar(255)
pid=0           : int32
connection_id=0 : int64
version=\"\"      : varchar(64)
INDEX (status, priority, scheduled_time)
",
    );
    out
}

/// Records one failed key: the key columns are parameters `$1..$n`, then error message, duration
/// (seconds), version. An earlier record of the key is replaced.
pub fn record_error_sql(jobs: &Table, key: &[String]) -> String {
    let n = key.len();
    let columns: Vec<String> = key.iter().map(|k| sql::ident(k)).collect();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {table} ({cols}, \"status\", \"priority\", \"completed_time\", \"duration\", \"error_message\", \
         \"user\", \"host\", \"pid\", \"connection_id\", \"version\") \
         VALUES ({params}, 'error', 5, LOCALTIMESTAMP(3), ${d}, pg_catalog.left(${m}, 2047), \
         pg_catalog.left(CURRENT_USER, 255), COALESCE(pg_catalog.host(pg_catalog.inet_client_addr()), ''), \
         pg_catalog.pg_backend_pid(), pg_catalog.pg_backend_pid(), ${v}) \
         ON CONFLICT ({cols}) DO UPDATE SET \"status\" = 'error', \"completed_time\" = EXCLUDED.\"completed_time\", \
         \"duration\" = EXCLUDED.\"duration\", \"error_message\" = EXCLUDED.\"error_message\", \
         \"user\" = EXCLUDED.\"user\", \"host\" = EXCLUDED.\"host\", \"pid\" = EXCLUDED.\"pid\", \
         \"connection_id\" = EXCLUDED.\"connection_id\", \"version\" = EXCLUDED.\"version\"",
        table = sql::qualified(&jobs.schema, &jobs.name),
        cols = columns.join(", "),
        params = params.join(", "),
        m = n + 1,
        d = n + 2,
        v = n + 3,
    )
}

/// `SELECT EXISTS (SELECT FROM table WHERE key = ($1, ...))`: whether a key's row is there.
pub fn key_exists_sql(table: &Table, key: &[String]) -> String {
    let matched: Vec<String> =
        key.iter().enumerate().map(|(i, k)| format!("{} = ${}", sql::ident(k), i + 1)).collect();
    format!(
        "SELECT EXISTS (SELECT FROM {} WHERE {})",
        sql::qualified(&table.schema, &table.name),
        matched.join(" AND ")
    )
}

/// Removes the key's record from the jobs table (after it succeeded).
pub fn clear_job_sql(jobs: &Table, key: &[String]) -> String {
    let matched: Vec<String> =
        key.iter().enumerate().map(|(i, k)| format!("{} = ${}", sql::ident(k), i + 1)).collect();
    format!("DELETE FROM {} WHERE {}", sql::qualified(&jobs.schema, &jobs.name), matched.join(" AND "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_without_key_or_parents_has_no_key_source() {
        assert_eq!(key_source(&[], &[]), None);
        assert_eq!(key_source(&names(&["id"]), &[]), None);
    }

    #[test]
    fn keys_spread_over_every_bucket_and_a_key_always_lands_in_the_same() {
        let key = |i: i64| vec![Field { name: "case_id".into(), value: Value::Int(i) }];
        let buckets: std::collections::HashSet<u32> = (0..2000).map(|i| key_bucket(&key(i))).collect();
        assert_eq!(buckets.len(), KEY_BUCKETS as usize);
        assert_eq!(key_bucket(&key(7)), key_bucket(&key(7)));
        // A stable encoding: the same bucket in every process and build.
        assert_eq!(key_bucket(&key(1)), 33);
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_source_joins_parents_on_shared_attributes() {
        let key = names(&["subject_id", "session", "method"]);
        let parents = vec![
            KeyParent {
                table: Table::new("lab", "session"),
                attributes: vec![
                    ("subject_id".into(), "subject_id".into()),
                    ("session".into(), "session".into()),
                ],
            },
            KeyParent {
                table: Table::new("lab", "#method"),
                attributes: vec![("method".into(), "method".into())],
            },
        ];
        assert_eq!(
            key_source(&key, &parents).unwrap(),
            "SELECT \"k0\".\"subject_id\" AS \"subject_id\", \"k0\".\"session\" AS \"session\", \"k1\".\"method\" AS \"method\" \
             FROM \"lab\".\"session\" AS \"k0\" CROSS JOIN \"lab\".\"#method\" AS \"k1\""
        );
    }

    #[test]
    fn key_source_renames_and_matches_shared_parents() {
        let key = names(&["subject_id", "partner_id"]);
        let parents = vec![
            KeyParent {
                table: Table::new("lab", "subject"),
                attributes: vec![("subject_id".into(), "subject_id".into())],
            },
            KeyParent {
                table: Table::new("lab", "subject"),
                attributes: vec![("partner_id".into(), "subject_id".into())],
            },
            KeyParent {
                table: Table::new("lab", "pairing"),
                attributes: vec![("subject_id".into(), "subject_id".into())],
            },
        ];
        let sql = key_source(&key, &parents).unwrap();
        assert!(
            sql.starts_with(
                "SELECT \"k0\".\"subject_id\" AS \"subject_id\", \"k1\".\"subject_id\" AS \"partner_id\""
            ),
            "{sql}"
        );
        assert!(
            sql.ends_with(
                "JOIN \"lab\".\"pairing\" AS \"k2\" ON \"k2\".\"subject_id\" = \"k0\".\"subject_id\""
            ),
            "{sql}"
        );
        assert_eq!(key_source(&names(&["x"]), &parents), None);
    }

    #[test]
    fn missing_keys_are_an_antijoin_with_a_checked_condition() {
        let key = names(&["a"]);
        let cond = key_condition("a > 3", &key).unwrap();
        let sql = keys_sql(
            "SELECT 1 AS a",
            &Table::new("s", "_t"),
            &key,
            Some(&cond),
            true,
            Order::Reverse,
            Some(10),
        );
        assert_eq!(
            sql,
            "SELECT * FROM (SELECT 1 AS a) AS \"ks\" WHERE NOT EXISTS (SELECT FROM \"s\".\"_t\" AS \"t\" WHERE \"t\".\"a\" = \"ks\".\"a\") \
             AND (\"a\" > 3) ORDER BY \"a\" DESC LIMIT 10"
        );
        assert!(key_condition("b > 3", &key).is_err());
        assert!(key_condition("a > 3; drop table x", &key).is_err());
    }

    #[test]
    fn fetch_checks_attributes_order_and_conditions() {
        let t = Table::new("lab", "_recording");
        let heading = names(&["subject_id", "session", "duration"]);
        let sql = fetch_sql(
            &t,
            &heading,
            &names(&["subject_id"]),
            &names(&["duration"]),
            &names(&["duration > 1"]),
            &names(&["session desc"]),
            Some(5),
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT \"duration\" FROM \"lab\".\"_recording\" WHERE \"subject_id\" = $1 AND (\"duration\" > 1) ORDER BY \"session\" DESC LIMIT 5"
        );
        assert!(matches!(
            fetch_sql(&t, &heading, &[], &names(&["nope"]), &[], &[], None),
            Err(QueryError::UnknownAttribute { attribute, .. }) if attribute == "nope"
        ));
        assert!(matches!(
            fetch_sql(&t, &heading, &[], &[], &[], &names(&["session sideways"]), None),
            Err(QueryError::BadOrder(_))
        ));
        assert!(matches!(
            fetch_sql(&t, &heading, &[], &[], &names(&["1=1) or (true"]), &[], None),
            Err(QueryError::Condition(_))
        ));
    }

    #[test]
    fn jobs_table_follows_datajoint_naming() {
        assert_eq!(jobs_table(&Table::new("lab", "__pair")).name, "~~pair");
        assert_eq!(jobs_table(&Table::new("lab", "_rec")).name, "~~rec");
        let def = jobs_definition(&Table::new("lab", "__pair"), &[("subject_id".into(), "integer".into())]);
        assert!(def.starts_with("# Job queue for \"lab\".\"__pair\"\nsubject_id : integer\n---\n"));
        assert!(crate::definition::parse(&def).is_ok());
        let sql = record_error_sql(&Table::new("lab", "~~pair"), &names(&["a", "b"]));
        assert!(
            sql.contains("VALUES ($1, $2, 'error', 5, LOCALTIMESTAMP(3), $4, pg_catalog.left($3, 2047)"),
            "{sql}"
        );
        assert!(sql.contains("ON CONFLICT (\"a\", \"b\") DO UPDATE"));
        assert_eq!(
            clear_job_sql(&Table::new("lab", "~~pair"), &names(&["a"])),
            "DELETE FROM \"lab\".\"~~pair\" WHERE \"a\" = $1"
        );
    }

    #[test]
    fn stale_rows_are_those_of_another_version() {
        assert_eq!(stale_condition("ab'c"), "\"_job_version\" IS DISTINCT FROM 'ab''c'");
    }

    #[test]
    fn insert_binds_every_column() {
        assert_eq!(
            insert_sql(&Table::new("lab", "__x"), &names(&["a", "b"])),
            "INSERT INTO \"lab\".\"__x\" (\"a\", \"b\") VALUES ($1, $2)"
        );
    }
}
