//! DataJoint's job queue, the protocol of datajoint-python 2.3.5's `~~name` tables: keys wait as
//! `pending` rows, a worker takes one with a single conditional UPDATE (so two workers, ours or
//! datajoint-python's, never take the same key), success deletes the row, failure leaves an
//! `error` row (or, with retries, a `pending` row scheduled later). A `reserved` row whose process
//! is gone goes back to `pending`: checked by liveness, not by age.
//!
//! Times are `timestamp(3)` without time zone, as datajoint-python declares them; every statement
//! here reads and writes them as `LOCALTIMESTAMP(3)`, so every session sharing the queue must share
//! the server's `TimeZone` (datajoint-python's own rule).

use crate::dependencies::Table;
use crate::sql;

/// The attributes of a key as a column list, optionally qualified by `alias`.
fn columns(key: &[String], alias: Option<&str>) -> String {
    key.iter()
        .map(|k| match alias {
            Some(a) => format!("{}.{}", sql::ident(a), sql::ident(k)),
            None => sql::ident(k),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a.k = b.k AND ...` over the key.
fn matched(key: &[String], a: &str, b: &str) -> String {
    key.iter()
        .map(|k| format!("{a}.{c} OPERATOR(pg_catalog.=) {b}.{c}", c = sql::ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `k1 = $1 AND ...`: the key as the first parameters.
fn key_params(key: &[String]) -> String {
    key.iter()
        .enumerate()
        .map(|(i, k)| format!("{} OPERATOR(pg_catalog.=) ${}", sql::ident(k), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Adds a `pending` row for each key `keys_sql` gives that has no row in the jobs table yet (in
/// any status), in the order `keys_sql` gives them (the order workers take keys of equal priority
/// and schedule), with priority `$1` and scheduled `$2` seconds from now. Returns one row: how many
/// were added.
pub fn refresh_sql(jobs: &Table, key: &[String], keys_sql: &str) -> String {
    let cols = columns(key, None);
    format!(
        "WITH added AS (INSERT INTO {jobs} ({cols}, \"status\", \"priority\", \"created_time\", \"scheduled_time\") \
         SELECT {kcols}, 'pending', $1, LOCALTIMESTAMP(3), \
         LOCALTIMESTAMP(3) OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2) FROM ({keys_sql}) AS \"k\" \
         ON CONFLICT ({cols}) DO NOTHING RETURNING 1) SELECT pg_catalog.count(*) FROM added",
        jobs = jobs.qualified(),
        kcols = columns(key, Some("k")),
    )
}

/// The keys `keys_sql` gives that have no row in the jobs table (in any status), in its order: a
/// refresh that adds only those tries no insert of a key already queued.
pub fn unqueued_sql(jobs: &Table, key: &[String], keys_sql: &str) -> String {
    format!(
        "SELECT * FROM ({keys_sql}) AS \"q\" WHERE NOT EXISTS (SELECT FROM {} AS \"j\" WHERE {})",
        jobs.qualified(),
        matched(key, "\"j\"", "\"q\"")
    )
}

/// Puts the `error` rows of the keys `keys_sql` gives back to `pending` (a populate run retries
/// the keys that failed before, as an in-backend populate does; `ignore` rows stay).
pub fn repend_errors_sql(jobs: &Table, key: &[String], keys_sql: &str) -> String {
    format!(
        "UPDATE {jobs} AS \"j\" SET \"status\" = 'pending', \"scheduled_time\" = LOCALTIMESTAMP(3), \
         \"reserved_time\" = NULL, \"completed_time\" = NULL \
         WHERE \"j\".\"status\" OPERATOR(pg_catalog.=) 'error' \
         AND EXISTS (SELECT FROM ({keys_sql}) AS \"k\" WHERE {on})",
        jobs = jobs.qualified(),
        on = matched(key, "\"k\"", "\"j\""),
    )
}

/// [`repend_errors_sql`] for the `error` rows completed before `$1` (Unix seconds): a refresh
/// during a run retries the failures of earlier runs, never its own.
pub fn repend_errors_before_sql(jobs: &Table, key: &[String], keys_sql: &str) -> String {
    format!(
        "{} AND \"j\".\"completed_time\" OPERATOR(pg_catalog.<) pg_catalog.to_timestamp($1)::pg_catalog.timestamp",
        repend_errors_sql(jobs, key, keys_sql)
    )
}

/// Removes the `pending` and `error` rows whose key left the key source (`keys_sql`: every key
/// of the source, made or not) or is made already, as datajoint-python's refresh does; only rows
/// the checked `condition` admits (a refresh of part of the keys leaves the others alone).
pub fn prune_sql(
    jobs: &Table,
    target: &Table,
    key: &[String],
    keys_sql: &str,
    condition: Option<&str>,
) -> String {
    let filter = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
    format!(
        "DELETE FROM {jobs} AS \"j\" WHERE \"j\".\"status\" OPERATOR(pg_catalog.=) ANY ('{{pending,error}}'){filter} \
         AND (NOT EXISTS (SELECT FROM ({keys_sql}) AS \"k\" WHERE {on_k}) \
              OR EXISTS (SELECT FROM {target} AS \"t\" WHERE {on_t}))",
        jobs = jobs.qualified(),
        target = target.qualified(),
        on_k = matched(key, "\"k\"", "\"j\""),
        on_t = matched(key, "\"t\"", "\"j\""),
    )
}

/// Takes up to `$3` keys: the first `pending` rows (by priority, then schedule, then the order rows
/// were added) whose time has come and that `condition` (checked, over the key's attributes)
/// admits, skipping rows another session is taking. Marks them `reserved` with this session's
/// identity (`$1` host, `$2` version). Returns each key's attributes and the row's error message
/// (earlier attempts). Taking several at once matters: the scan for the first pending row steps
/// over the index entries of every row taken before (until vacuum), so one key per scan would
/// make a run quadratic in its keys.
pub fn reserve_sql(jobs: &Table, key: &[String], condition: Option<&str>) -> String {
    let filter = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
    format!(
        "UPDATE {jobs} AS \"j\" SET \"status\" = 'reserved', \"reserved_time\" = LOCALTIMESTAMP(3), \
         \"user\" = pg_catalog.left(CURRENT_USER, 255), \"host\" = pg_catalog.left($1, 255), \
         \"pid\" = pg_catalog.pg_backend_pid(), \"connection_id\" = pg_catalog.pg_backend_pid(), \
         \"version\" = pg_catalog.left($2, 64) \
         WHERE \"j\".ctid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT \"q\".ctid FROM {jobs} AS \"q\" \
           WHERE \"q\".\"status\" OPERATOR(pg_catalog.=) 'pending' \
           AND \"q\".\"scheduled_time\" OPERATOR(pg_catalog.<=) LOCALTIMESTAMP(3){filter} \
           ORDER BY \"q\".\"priority\", \"q\".\"scheduled_time\" LIMIT $3 FOR UPDATE SKIP LOCKED)) \
         RETURNING {cols}, \"j\".\"error_message\"",
        jobs = jobs.qualified(),
        cols = columns(key, Some("j")),
    )
}

/// Seconds until the next `pending` row that `condition` admits and no other session is taking
/// is due (0 or less if one is due now), or no row when there is none.
pub fn next_due_sql(jobs: &Table, condition: Option<&str>) -> String {
    let filter = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
    format!(
        "SELECT pg_catalog.date_part('epoch', \"scheduled_time\" OPERATOR(pg_catalog.-) LOCALTIMESTAMP(3))::pg_catalog.float8 \
         FROM {jobs} WHERE \"status\" OPERATOR(pg_catalog.=) 'pending'{filter} \
         ORDER BY \"scheduled_time\" LIMIT 1 FOR UPDATE SKIP LOCKED",
        jobs = jobs.qualified(),
    )
}

/// How many `pending` rows `condition` admits.
pub fn pending_count_sql(jobs: &Table, condition: Option<&str>) -> String {
    let filter = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
    format!(
        "SELECT pg_catalog.count(*) FROM {jobs} WHERE \"status\" OPERATOR(pg_catalog.=) 'pending'{filter}",
        jobs = jobs.qualified(),
    )
}

/// Puts the `reserved` rows of processes that no longer exist back to `pending`: no server
/// process has the row's `connection_id` (datajoint-python writes `pg_backend_pid()` there, as we
/// do), or the row was reserved before the server last started. Returns how many.
pub fn release_orphans_sql(jobs: &Table) -> String {
    format!(
        "WITH released AS (UPDATE {jobs} AS \"j\" SET \"status\" = 'pending', \"reserved_time\" = NULL \
         WHERE \"j\".\"status\" OPERATOR(pg_catalog.=) 'reserved' \
         AND (\"j\".\"reserved_time\" IS NULL \
              OR \"j\".\"reserved_time\"::pg_catalog.timestamptz OPERATOR(pg_catalog.<) pg_catalog.pg_postmaster_start_time() \
              OR NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity AS \"a\" \
                             WHERE \"a\".pid OPERATOR(pg_catalog.=) \"j\".\"connection_id\")) \
         RETURNING 1) SELECT pg_catalog.count(*) FROM released",
        jobs = jobs.qualified(),
    )
}

/// Puts the key (`$1..$n`) this session reserved back to `pending` (a cancelled run).
pub fn release_sql(jobs: &Table, key: &[String]) -> String {
    format!(
        "UPDATE {jobs} SET \"status\" = 'pending', \"reserved_time\" = NULL \
         WHERE {k} AND \"status\" OPERATOR(pg_catalog.=) 'reserved' \
         AND \"connection_id\" OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()",
        jobs = jobs.qualified(),
        k = key_params(key),
    )
}

/// Schedules the key (`$1..$n`) again after a failure: `pending`, due in `$n+1` seconds, with the
/// failure's text `$n+2` (see [`retry_message`]).
pub fn retry_sql(jobs: &Table, key: &[String]) -> String {
    let n = key.len();
    format!(
        "UPDATE {jobs} SET \"status\" = 'pending', \"reserved_time\" = NULL, \
         \"scheduled_time\" = LOCALTIMESTAMP(3) OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => ${d}), \
         \"error_message\" = pg_catalog.left(${m}, 2047) WHERE {k}",
        jobs = jobs.qualified(),
        k = key_params(key),
        d = n + 1,
        m = n + 2,
    )
}

/// Marks the keys `keys_sql` gives `ignore` (datajoint-python's `jobs.ignore`): no populate takes
/// them. A key some process holds reserved keeps its reservation. Returns one row: how many.
pub fn ignore_sql(jobs: &Table, key: &[String], keys_sql: &str) -> String {
    let cols = columns(key, None);
    format!(
        "WITH marked AS (INSERT INTO {jobs} AS \"j\" ({cols}, \"status\", \"priority\") \
         SELECT {kcols}, 'ignore', 5 FROM ({keys_sql}) AS \"k\" \
         ON CONFLICT ({cols}) DO UPDATE SET \"status\" = 'ignore' \
         WHERE \"j\".\"status\" OPERATOR(pg_catalog.<>) 'reserved' RETURNING 1) \
         SELECT pg_catalog.count(*) FROM marked",
        jobs = jobs.qualified(),
        kcols = columns(key, Some("k")),
    )
}

/// Deletes the `error` rows `condition` admits (the next run or refresh queues their keys again).
/// Returns one row: how many.
pub fn clear_errors_sql(jobs: &Table, condition: Option<&str>) -> String {
    let filter = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
    format!(
        "WITH cleared AS (DELETE FROM {jobs} WHERE \"status\" OPERATOR(pg_catalog.=) 'error'{filter} RETURNING 1) \
         SELECT pg_catalog.count(*) FROM cleared",
        jobs = jobs.qualified(),
    )
}

/// The text of a failed attempt that will be retried: `attempt 2 of 4 failed: ...`.
pub fn retry_message(attempt: u32, retries: u32, message: &str) -> String {
    format!("attempt {attempt} of {} failed: {message}", retries + 1)
}

/// How many attempts a pending row's error message records (0 for a fresh row).
pub fn attempts_of(error_message: &str) -> u32 {
    error_message
        .strip_prefix("attempt ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Seconds before the retry after `attempt` failed attempts: 1, 2, 4, ... at most 10 minutes.
pub fn retry_delay(attempt: u32) -> f64 {
    2f64.powi(attempt.saturating_sub(1).min(10) as i32).min(600.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reservation_is_one_conditional_update_of_the_first_due_pending_row() {
        let jobs = Table::new("lab", "~~pair");
        let sql = reserve_sql(&jobs, &names(&["a", "b"]), Some("(\"a\" > 3)"));
        assert!(sql.starts_with("UPDATE \"lab\".\"~~pair\" AS \"j\" SET \"status\" = 'reserved'"), "{sql}");
        assert!(sql.contains("LOCALTIMESTAMP(3) AND (\"a\" > 3) ORDER BY \"q\".\"priority\", \"q\".\"scheduled_time\" LIMIT $3 FOR UPDATE SKIP LOCKED"));
        assert!(sql.ends_with("RETURNING \"j\".\"a\", \"j\".\"b\", \"j\".\"error_message\""));
        assert!(!reserve_sql(&jobs, &names(&["a"]), None).contains("AND ("));
        assert!(sql.contains("ctid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT"), "{sql}");
    }

    #[test]
    fn refresh_adds_only_keys_without_a_row_and_counts_them() {
        let jobs = Table::new("lab", "~~pair");
        let sql = refresh_sql(&jobs, &names(&["a"]), "SELECT 1 AS \"a\"");
        assert!(sql.contains("SELECT \"k\".\"a\", 'pending', $1, LOCALTIMESTAMP(3)"), "{sql}");
        assert!(
            sql.contains("ON CONFLICT (\"a\") DO NOTHING RETURNING 1) SELECT pg_catalog.count(*) FROM added")
        );
        let prune = prune_sql(
            &jobs,
            &Table::new("lab", "__pair"),
            &names(&["a"]),
            "SELECT 1 AS \"a\"",
            Some("(\"a\" > 1)"),
        );
        assert!(prune.contains("\"t\".\"a\" OPERATOR(pg_catalog.=) \"j\".\"a\""), "{prune}");
        assert!(
            prune.contains("ANY ('{pending,error}') AND (\"a\" > 1) AND"),
            "only the refreshed keys: {prune}"
        );
    }

    #[test]
    fn a_pipelines_refresh_leaves_out_keys_already_queued() {
        let jobs = Table::new("lab", "~~pair");
        let sql = unqueued_sql(&jobs, &names(&["a", "b"]), "SELECT 1 AS \"a\", 2 AS \"b\"");
        assert!(
            sql.ends_with("WHERE NOT EXISTS (SELECT FROM \"lab\".\"~~pair\" AS \"j\" WHERE \"j\".\"a\" OPERATOR(pg_catalog.=) \"q\".\"a\" AND \"j\".\"b\" OPERATOR(pg_catalog.=) \"q\".\"b\")"),
            "{sql}"
        );
    }

    #[test]
    fn a_refresh_during_a_run_retries_only_earlier_failures() {
        let jobs = Table::new("lab", "~~pair");
        let sql = repend_errors_before_sql(&jobs, &names(&["a"]), "SELECT 1 AS \"a\"");
        assert!(sql.starts_with(&repend_errors_sql(&jobs, &names(&["a"]), "SELECT 1 AS \"a\"")), "{sql}");
        assert!(
            sql.ends_with("AND \"j\".\"completed_time\" OPERATOR(pg_catalog.<) pg_catalog.to_timestamp($1)::pg_catalog.timestamp"),
            "{sql}"
        );
    }

    #[test]
    fn orphans_are_found_by_liveness() {
        let sql = release_orphans_sql(&Table::new("lab", "~~pair"));
        assert!(sql.contains("pg_catalog.pg_stat_activity"));
        assert!(sql.contains("pg_catalog.pg_postmaster_start_time()"));
        assert!(!sql.contains("interval"), "no age rule: {sql}");
    }

    #[test]
    fn retries_count_their_attempts_in_the_message_and_back_off() {
        let m = retry_message(2, 3, "boom");
        assert_eq!(m, "attempt 2 of 4 failed: boom");
        assert_eq!(attempts_of(&m), 2);
        assert_eq!(attempts_of(""), 0);
        assert_eq!(attempts_of("attempted nothing"), 0);
        assert_eq!((retry_delay(1), retry_delay(2), retry_delay(3)), (1.0, 2.0, 4.0));
        assert_eq!(retry_delay(40), 600.0);
        let sql = retry_sql(&Table::new("lab", "~~pair"), &names(&["a", "b"]));
        assert!(
            sql.contains("make_interval(secs => $3)") && sql.contains("pg_catalog.left($4, 2047)"),
            "{sql}"
        );
    }
}
