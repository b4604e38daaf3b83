//! `dj.populate`'s rules: which keys a table's make must compute (its key source, restricted and
//! ordered), how concurrent runs divide them (key buckets), the jobs table failures are recorded
//! in (`jobs`), and the loop every host drives (`driver`). The SQL is built from names and checked
//! conditions only (identifiers quoted, values always parameters, conditions re-emitted by
//! [`restriction::condition`]).

use crate::dependencies::Table;
use crate::make::{Field, Value};
use crate::restriction::{self, RestrictionError};
use crate::sql;

pub mod auto;
mod driver;
pub mod jobs;
pub mod queue;

pub use driver::{run, Class, KeyRun, Progress, Settings, Stop, Summary};

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

/// The key buckets one run holds, and those it lost to another session populating the same
/// table. A bucket another session held stays lost for the whole run, even once that session
/// commits: what it made is invisible to this run's snapshot.
#[derive(Clone, Debug)]
pub struct Buckets {
    held: [bool; KEY_BUCKETS as usize],
    lost: [bool; KEY_BUCKETS as usize],
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets { held: [false; KEY_BUCKETS as usize], lost: [false; KEY_BUCKETS as usize] }
    }
}

impl Buckets {
    /// Whether this run makes `key`: it holds the key's bucket, or `try_lock(bucket)` takes it
    /// now (a lock never waited for).
    pub fn claim(&mut self, key: &[Field], try_lock: impl FnOnce(u32) -> bool) -> bool {
        let bucket = key_bucket(key);
        let b = bucket as usize;
        if !self.held[b] && !self.lost[b] {
            let took = try_lock(bucket);
            self.held[b] = took;
            self.lost[b] = !took;
        }
        self.held[b]
    }
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

/// The condition of rows not made by the module with this sha256 (`dj.stale`, recompute_stale).
pub fn stale_condition(sha256: &str) -> String {
    format!("\"_job_version\" IS DISTINCT FROM {}", sql::literal(sha256))
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
    fn a_lost_bucket_stays_lost_and_a_held_one_is_not_locked_again() {
        let key = |i: i64| vec![Field { name: "id".into(), value: Value::Int(i) }];
        let mut b = Buckets::default();
        let mut locks = 0;
        assert!(b.claim(&key(1), |_| {
            locks += 1;
            true
        }));
        assert!(b.claim(&key(1), |_| unreachable!("held already")));
        let other = (2..1000).find(|i| key_bucket(&key(*i)) != key_bucket(&key(1))).unwrap();
        assert!(!b.claim(&key(other), |_| false));
        assert!(!b.claim(&key(other), |_| unreachable!("lost for the run")));
        assert_eq!(locks, 1);
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
    fn stale_rows_are_those_of_another_version() {
        assert_eq!(stale_condition("ab'c"), "\"_job_version\" IS DISTINCT FROM 'ab''c'");
    }
}
