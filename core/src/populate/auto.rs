//! Populate on insert (`dj.auto_populate`): the statements a trigger on a key-source parent runs
//! in the writing transaction. An insert into the parent queues the target's keys that the new
//! rows complete (as `pending` rows of its jobs table); a delete drops the pending rows of the keys
//! whose parent row went. The rows come from the trigger's transition table, `rows`.

use md5::{Digest, Md5};

use super::{keys_sql, Order};
use crate::dependencies::Table;
use crate::sql;

/// The transition table of new rows, as the insert trigger names it.
pub const NEW_ROWS: &str = "dj_new_rows";
/// The transition table of deleted rows, as the delete trigger names it.
pub const OLD_ROWS: &str = "dj_old_rows";

/// `"a".child = "b".parent AND ...` over the (child attribute, parent attribute) pairs of one
/// parent that are attributes of the key.
fn joined(key: &[String], pairs: &[(String, String)], child: &str, parent: &str) -> String {
    pairs
        .iter()
        .filter(|(c, _)| key.contains(c))
        .map(|(c, p)| {
            format!(
                "{}.{} OPERATOR(pg_catalog.=) {}.{}",
                sql::ident(parent),
                sql::ident(p),
                sql::ident(child),
                sql::ident(c)
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The keys of `key_source` missing from `target` that rows `rows` of one of its key parents
/// (whose attributes give the key attributes as `pairs`, (child, parent)) take part in. None when
/// the parent gives no key attribute.
pub fn keys_of_rows(
    key_source: &str,
    target: &Table,
    key: &[String],
    pairs: &[(String, String)],
    rows: &str,
) -> Option<String> {
    let on = joined(key, pairs, "ks", "n");
    if on.is_empty() {
        return None;
    }
    let condition = format!("EXISTS (SELECT FROM {} AS \"n\" WHERE {on})", sql::ident(rows));
    Some(keys_sql(key_source, target, key, Some(&condition), true, Order::Original, None))
}

/// Deletes the `pending` rows of `jobs` whose key takes the attributes of a row of `rows` (the
/// deleted rows of a key parent, `pairs` as in [`keys_of_rows`]); returns one row: how many.
pub fn drop_pending_sql(
    jobs: &Table,
    key: &[String],
    pairs: &[(String, String)],
    rows: &str,
) -> Option<String> {
    let on = joined(key, pairs, "j", "o");
    if on.is_empty() {
        return None;
    }
    Some(format!(
        "WITH dropped AS (DELETE FROM {} AS \"j\" WHERE \"j\".\"status\" OPERATOR(pg_catalog.=) 'pending' \
         AND EXISTS (SELECT FROM {} AS \"o\" WHERE {on}) RETURNING 1) SELECT pg_catalog.count(*) FROM dropped",
        jobs.qualified(),
        sql::ident(rows)
    ))
}

/// The name of the triggers that populate `target` on a parent's writes (`op`: insert or delete),
/// at most 63 bytes however long the target's name is.
pub fn trigger_name(target: &Table, op: &str) -> String {
    let digest = Md5::digest(format!("{}\0{}", target.schema, target.name).as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("dj_auto_{op}_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> Table {
        Table::new(s.to_string(), n.to_string())
    }

    #[test]
    fn the_keys_of_new_rows_join_them_on_the_parents_renamed_attributes() {
        let key = vec!["subject".to_string(), "session".to_string()];
        let pairs = vec![("subject".to_string(), "subject_id".to_string())];
        let sql = keys_of_rows("SELECT 1", &t("lab", "__rate"), &key, &pairs, NEW_ROWS).unwrap();
        assert!(sql.contains(
            "EXISTS (SELECT FROM \"dj_new_rows\" AS \"n\" WHERE \"n\".\"subject_id\" OPERATOR(pg_catalog.=) \"ks\".\"subject\")"
        ));
        assert!(sql.contains("NOT EXISTS (SELECT FROM \"lab\".\"__rate\""));
        // A parent that gives no key attribute completes no key.
        assert!(keys_of_rows("SELECT 1", &t("lab", "__rate"), &key, &[], NEW_ROWS).is_none());
    }

    #[test]
    fn a_delete_drops_only_pending_rows_of_the_parents_keys() {
        let key = vec!["a".to_string(), "b".to_string()];
        let pairs = vec![("a".to_string(), "a".to_string()), ("x".to_string(), "y".to_string())];
        let sql = drop_pending_sql(&t("s", "~~t"), &key, &pairs, OLD_ROWS).unwrap();
        assert!(sql.contains("\"j\".\"status\" OPERATOR(pg_catalog.=) 'pending'"));
        assert!(sql.contains("WHERE \"o\".\"a\" OPERATOR(pg_catalog.=) \"j\".\"a\")"));
        assert!(!sql.contains("\"x\""));
    }

    #[test]
    fn trigger_names_fit_and_differ() {
        let long = t("s", &"x".repeat(63));
        let a = trigger_name(&long, "insert");
        assert!(a.len() <= 63);
        assert_ne!(a, trigger_name(&t("s", "y"), "insert"));
        assert_ne!(a, trigger_name(&long, "delete"));
    }
}
