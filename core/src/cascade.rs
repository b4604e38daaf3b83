//! Cascading delete: which rows of which tables a restricted delete removes. The root's rows are
//! those matching the restriction; a descendant's rows are those whose foreign key points into the
//! rows of a parent in the cascade. Each table's selected keys are computed once, as a
//! `MATERIALIZED` CTE that its children refer to by name, so the SQL grows linearly with the
//! number of tables however many paths (diamonds) connect them. Statements are run children
//! first, so every CTE still sees its table's rows.

use crate::dependencies::{Dependencies, Table};
use crate::sql;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub table: Table,
    /// The table's primary key (what its CTE keeps).
    pub key: Vec<String>,
    /// A condition over the table's own columns, referring to earlier steps' CTEs by name.
    pub condition: String,
}

/// The name of step `i`'s key set in the statements' WITH clause.
fn cte(i: usize) -> String {
    format!("dj_cascade_{i}")
}

/// The tables a delete from `root` (rows matching `condition`, all rows when `None`) reaches,
/// parents before children.
pub fn plan(deps: &Dependencies, root: &Table, condition: Option<String>) -> Vec<Step> {
    let key_of = |t: &Table| deps.primary_key(t).map(<[String]>::to_vec).unwrap_or_default();
    let mut steps = vec![Step {
        table: root.clone(),
        key: key_of(root),
        condition: condition.unwrap_or_else(|| "TRUE".into()),
    }];
    for table in deps.descendants(root) {
        let mut alternatives = Vec::new();
        for (parent, reference) in deps.parents(table) {
            let Some(p) = steps.iter().position(|s| &s.table == parent) else { continue };
            let children: Vec<String> = reference.attributes.iter().map(|(c, _)| sql::ident(c)).collect();
            let parents: Vec<String> = reference.attributes.iter().map(|(_, p)| sql::ident(p)).collect();
            alternatives.push(format!(
                "({}) IN (SELECT {} FROM {})",
                children.join(", "),
                parents.join(", "),
                cte(p)
            ));
        }
        let condition = if alternatives.len() == 1 {
            alternatives.remove(0)
        } else {
            alternatives.iter().map(|a| format!("({a})")).collect::<Vec<_>>().join(" OR ")
        };
        steps.push(Step { table: table.clone(), key: key_of(table), condition });
    }
    steps
}

/// `WITH dj_cascade_0 AS MATERIALIZED (...), ...` defining the key sets of the steps before `i`
/// (PostgreSQL skips the ones step `i` does not use).
fn with_clause(steps: &[Step], i: usize) -> String {
    let ctes: Vec<String> = steps[..i]
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let key = s.key.iter().map(|k| sql::ident(k)).collect::<Vec<_>>().join(", ");
            format!(
                "{} AS MATERIALIZED (SELECT {key} FROM {} WHERE {})",
                cte(j),
                sql::qualified(&s.table.schema, &s.table.name),
                s.condition
            )
        })
        .collect();
    if ctes.is_empty() {
        String::new()
    } else {
        format!("WITH {} ", ctes.join(", "))
    }
}

/// The statement counting the rows step `i` selects.
pub fn count_sql(steps: &[Step], i: usize) -> String {
    let s = &steps[i];
    format!(
        "{}SELECT count(*) FROM {} WHERE {}",
        with_clause(steps, i),
        sql::qualified(&s.table.schema, &s.table.name),
        s.condition
    )
}

/// The statement deleting the rows step `i` selects and returning how many.
pub fn delete_sql(steps: &[Step], i: usize) -> String {
    let s = &steps[i];
    let with = with_clause(steps, i);
    let delete = format!(
        "gone AS (DELETE FROM {} WHERE {} RETURNING 1)",
        sql::qualified(&s.table.schema, &s.table.name),
        s.condition
    );
    let with =
        if with.is_empty() { format!("WITH {delete} ") } else { format!("{}, {delete} ", with.trim_end()) };
    format!("{with}SELECT count(*) FROM gone")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dependencies::Catalog;

    fn t(name: &str) -> Table {
        Table::new("lab", name)
    }

    fn key(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn pair(c: &str, p: &str) -> (String, String) {
        (c.to_string(), p.to_string())
    }

    #[test]
    fn conditions_refer_to_the_parents_key_sets() {
        let deps = Dependencies::new(Catalog {
            tables: vec![
                (t("subject"), key(&["subject_id"])),
                (t("session"), key(&["subject_id", "session_idx"])),
                (t("__pair"), key(&["subject_id", "session_idx", "partner_id"])),
            ],
            foreign_keys: vec![
                (t("session"), t("subject"), vec![pair("subject_id", "subject_id")]),
                (
                    t("__pair"),
                    t("session"),
                    vec![pair("subject_id", "subject_id"), pair("session_idx", "session_idx")],
                ),
                (t("__pair"), t("subject"), vec![pair("partner_id", "subject_id")]),
            ],
        })
        .unwrap();
        let steps = plan(&deps, &t("subject"), Some("subject_id = 1".into()));
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1].condition, r#"("subject_id") IN (SELECT "subject_id" FROM dj_cascade_0)"#);
        assert_eq!(
            steps[2].condition,
            r#"(("subject_id", "session_idx") IN (SELECT "subject_id", "session_idx" FROM dj_cascade_1)) OR (("partner_id") IN (SELECT "subject_id" FROM dj_cascade_0))"#
        );
        assert_eq!(count_sql(&steps, 0), r#"SELECT count(*) FROM "lab"."subject" WHERE subject_id = 1"#);
        assert_eq!(
            delete_sql(&steps, 1),
            r#"WITH dj_cascade_0 AS MATERIALIZED (SELECT "subject_id" FROM "lab"."subject" WHERE subject_id = 1), gone AS (DELETE FROM "lab"."session" WHERE ("subject_id") IN (SELECT "subject_id" FROM dj_cascade_0) RETURNING 1) SELECT count(*) FROM gone"#
        );
    }

    #[test]
    fn diamonds_grow_the_sql_linearly() {
        // A chain of 12 diamonds: t0 → (a_i, b_i) → t_{i+1}. Nested conditions would double at
        // every diamond (4096 copies of the root condition); key sets keep it to one per table.
        let mut tables = vec![(t("t0"), key(&["k"]))];
        let mut keys = Vec::new();
        for i in 0..12 {
            for side in ["a", "b"] {
                tables.push((t(&format!("{side}{i}")), key(&["k"])));
                keys.push((t(&format!("{side}{i}")), t(&format!("t{i}")), vec![pair("k", "k")]));
                keys.push((t(&format!("t{}", i + 1)), t(&format!("{side}{i}")), vec![pair("k", "k")]));
            }
            tables.push((t(&format!("t{}", i + 1)), key(&["k"])));
        }
        let deps = Dependencies::new(Catalog { tables, foreign_keys: keys }).unwrap();
        let steps = plan(&deps, &t("t0"), Some("k = 1".into()));
        assert_eq!(steps.len(), 37);
        let last = delete_sql(&steps, steps.len() - 1);
        assert_eq!(last.matches("k = 1").count(), 1);
        assert!(last.len() < 10_000, "{}", last.len());
    }
}
