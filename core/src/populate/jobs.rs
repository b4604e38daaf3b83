//! The jobs table of a computed table, as datajoint-python 2.x declares it (`~~name`): where a
//! populate records the keys that failed, and clears them once they succeed.

use crate::dependencies::Table;
use crate::sql;

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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
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
}
