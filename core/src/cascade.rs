//! Cascading delete: which rows of which tables a restricted delete removes. A descendant's rows
//! are those whose foreign key points into the restricted rows of a parent in the cascade; the
//! plan lists tables parents-first, and is executed children-first so every subquery still sees
//! its parent's rows.

use crate::dependencies::{Dependencies, Table};
use crate::sql;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub table: Table,
    /// A condition over the table's own columns selecting the rows to delete.
    pub condition: String,
}

/// The tables a delete from `root` (rows matching `condition`, all rows when `None`) reaches,
/// parents before children.
pub fn plan(deps: &Dependencies, root: &Table, condition: Option<String>) -> Vec<Step> {
    let mut steps = vec![Step { table: root.clone(), condition: condition.unwrap_or_else(|| "TRUE".into()) }];
    for table in deps.descendants(root) {
        let mut alternatives = Vec::new();
        for (parent, reference) in deps.parents(table) {
            let Some(parent_step) = steps.iter().find(|s| &s.table == parent) else { continue };
            let children: Vec<String> = reference.attributes.iter().map(|(c, _)| sql::ident(c)).collect();
            let parents: Vec<String> = reference.attributes.iter().map(|(_, p)| sql::ident(p)).collect();
            alternatives.push(format!(
                "({}) IN (SELECT {} FROM {} WHERE {})",
                children.join(", "),
                parents.join(", "),
                sql::qualified(&parent.schema, &parent.name),
                parent_step.condition
            ));
        }
        let condition = if alternatives.len() == 1 {
            alternatives.remove(0)
        } else {
            alternatives.iter().map(|a| format!("({a})")).collect::<Vec<_>>().join(" OR ")
        };
        steps.push(Step { table: table.clone(), condition });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dependencies::Catalog;

    fn t(name: &str) -> Table {
        Table::new("lab", name)
    }

    #[test]
    fn conditions_chain_through_foreign_keys() {
        let key = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pair = |c: &str, p: &str| (c.to_string(), p.to_string());
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
        assert_eq!(
            steps[1].condition,
            "(\"subject_id\") IN (SELECT \"subject_id\" FROM \"lab\".\"subject\" WHERE subject_id = 1)"
        );
        assert_eq!(
            steps[2].condition,
            "((\"subject_id\", \"session_idx\") IN (SELECT \"subject_id\", \"session_idx\" FROM \"lab\".\"session\" WHERE (\"subject_id\") IN (SELECT \"subject_id\" FROM \"lab\".\"subject\" WHERE subject_id = 1))) OR ((\"partner_id\") IN (SELECT \"subject_id\" FROM \"lab\".\"subject\" WHERE subject_id = 1))"
        );
        assert_eq!(
            plan(&deps, &t("__pair"), None),
            vec![Step { table: t("__pair"), condition: "TRUE".into() }]
        );
    }
}
