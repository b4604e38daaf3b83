//! A table's definition, rebuilt from the catalog in datajoint-python's layout. Unlike its
//! PostgreSQL describe, the text declares the same table again: defaults are written in definition
//! syntax (not PostgreSQL's `'x'::type` expressions), and unique references and declared indexes
//! are kept.

/// A column as the catalog has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// `format_type` of the column.
    pub sql_type: String,
    pub nullable: bool,
    /// `pg_get_expr` of the column default.
    pub default: Option<String>,
    pub comment: Option<String>,
    pub in_key: bool,
}

impl ColumnInfo {
    pub fn is_hidden(&self) -> bool {
        self.name.starts_with('_')
    }

    /// The declared type (from a `:type:` comment) or the PostgreSQL type, and the user comment.
    pub fn declared(&self) -> (String, String) {
        match self.comment.as_deref().and_then(split_type_comment) {
            Some((ty, comment)) => (ty.to_string(), comment.to_string()),
            None => (self.sql_type.clone(), self.comment.clone().unwrap_or_default()),
        }
    }

    /// The default in definition syntax: `null`, `5`, `"text"`, `CURRENT_TIMESTAMP(3)`.
    pub fn declared_default(&self) -> Option<String> {
        match self.default.as_deref() {
            None if self.nullable => Some("null".into()),
            None => None,
            Some(expr) => Some(definition_default(expr)),
        }
    }
}

/// `:int32:the comment` → (`int32`, `the comment`), as datajoint-python matches
/// `:(?P<type>[^:]+):(?P<comment>.*)`.
pub fn split_type_comment(comment: &str) -> Option<(&str, &str)> {
    let rest = comment.strip_prefix(':')?;
    let end = rest.find(':')?;
    (end > 0).then(|| (&rest[..end], &rest[end + 1..]))
}

/// A PostgreSQL default expression in definition syntax.
fn definition_default(expr: &str) -> String {
    if let Some((literal, cast)) = expr.rsplit_once("::") {
        if let Some(value) = crate::sql::parse_literal(literal) {
            let numeric = ["smallint", "integer", "bigint", "real", "double precision", "numeric"]
                .iter()
                .any(|t| cast.starts_with(t));
            if numeric || cast == "boolean" {
                return value;
            }
            return if value.contains('"') { crate::sql::literal(&value) } else { format!("\"{value}\"") };
        }
    }
    expr.to_string()
}

/// One foreign key of the table, as `describe` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// How the definition names the parent: `Session`, `Pair.Channel`, `zoo.Animal`.
    pub name: String,
    /// (child attribute, parent attribute) pairs.
    pub attributes: Vec<(String, String)>,
    pub unique: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexInfo {
    pub unique: bool,
    pub columns: Vec<String>,
}

pub fn describe(
    comment: &str,
    columns: &[ColumnInfo],
    parents: &[ParentRef],
    indexes: &[IndexInfo],
) -> String {
    let mut out = String::new();
    if !comment.is_empty() {
        out.push_str(&format!("# {comment}\n"));
    }
    let mut separated = false;
    let mut seen: Vec<&str> = Vec::new();
    let mut printed = vec![false; parents.len()];
    for column in columns.iter().filter(|c| !c.is_hidden()) {
        if !column.in_key && !separated {
            out.push_str("---\n");
            separated = true;
        }
        seen.push(&column.name);
        let mut in_reference = false;
        for (i, parent) in parents.iter().enumerate() {
            if !parent.attributes.iter().any(|(c, _)| *c == column.name) {
                continue;
            }
            in_reference = true;
            if printed[i] || !parent.attributes.iter().all(|(c, _)| seen.contains(&c.as_str())) {
                continue;
            }
            printed[i] = true;
            let nullable = parent
                .attributes
                .iter()
                .any(|(c, _)| columns.iter().any(|col| col.name == *c && col.nullable));
            let options: Vec<&str> = [(nullable, "nullable"), (parent.unique, "unique")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, o)| *o)
                .collect();
            let options =
                if options.is_empty() { String::new() } else { format!(" [{}]", options.join(", ")) };
            let renames: Vec<String> = parent
                .attributes
                .iter()
                .filter(|(c, p)| c != p)
                .map(|(c, p)| format!("{c}=\"{p}\""))
                .collect();
            let proj =
                if renames.is_empty() { String::new() } else { format!(".proj({})", renames.join(",")) };
            out.push_str(&format!("->{options} {}{proj}\n", parent.name));
        }
        if in_reference {
            continue;
        }
        let (declared_type, user_comment) = column.declared();
        let left = match column.declared_default() {
            Some(d) => format!("{}={d}", column.name),
            None => column.name.clone(),
        };
        let line = if user_comment.is_empty() {
            format!("{left:<20} : {declared_type}")
        } else {
            format!("{left:<20} : {declared_type:<28} # {user_comment}")
        };
        out.push_str(&line);
        out.push('\n');
    }
    for index in indexes {
        out.push_str(&format!(
            "{}index({})\n",
            if index.unique { "unique " } else { "" },
            index.columns.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, sql_type: &str, comment: Option<&str>, in_key: bool) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            sql_type: sql_type.into(),
            nullable: false,
            default: None,
            comment: comment.map(String::from),
            in_key,
        }
    }

    #[test]
    fn rebuilds_a_definition_in_datajoint_layout() {
        let mut columns = vec![
            col("subject_id", "integer", None, true),
            col("session_idx", "smallint", Some(":int16:"), true),
            col("partner_id", "integer", None, true),
            col("rig", "character varying(16)", None, false),
            col("label", "character varying(32)", Some(":varchar(32):a label"), false),
            col("n", "integer", Some(":int32:"), false),
            col("notes", "text", Some("free text"), false),
            col("_job_version", "character varying(64)", Some(":varchar(64):code version"), false),
        ];
        columns[3].nullable = true;
        columns[4].default = Some("'it''s'::character varying".into());
        columns[5].default = Some("'5'::integer".into());
        let parents = vec![
            ParentRef {
                name: "Session".into(),
                attributes: vec![
                    ("subject_id".into(), "subject_id".into()),
                    ("session_idx".into(), "session_idx".into()),
                ],
                unique: false,
            },
            ParentRef {
                name: "zoo.Subject".into(),
                attributes: vec![("partner_id".into(), "subject_id".into())],
                unique: false,
            },
            ParentRef { name: "Rig".into(), attributes: vec![("rig".into(), "rig".into())], unique: true },
        ];
        let text = describe(
            "My analysis",
            &columns,
            &parents,
            &[IndexInfo { unique: false, columns: vec!["n".into()] }],
        );
        assert_eq!(
            text,
            "# My analysis\n\
             -> Session\n\
             -> zoo.Subject.proj(partner_id=\"subject_id\")\n\
             ---\n\
             -> [nullable, unique] Rig\n\
             label=\"it's\"         : varchar(32)                  # a label\n\
             n=5                  : int32\n\
             notes                : text                         # free text\n\
             index(n)\n"
        );
        // And it parses back.
        assert!(crate::definition::parse(&text).is_ok());
    }

    #[test]
    fn defaults_and_singletons() {
        let mut c = col("t", "timestamp(3) without time zone", Some(":datetime(3):"), false);
        c.default = Some("CURRENT_TIMESTAMP(3)".into());
        assert_eq!(c.declared_default().as_deref(), Some("CURRENT_TIMESTAMP(3)"));
        c.default = Some("'U'::zoo.enum_e54fc739".into());
        assert_eq!(c.declared_default().as_deref(), Some("\"U\""));
        c.default = Some("'a\"b'::text".into());
        assert_eq!(c.declared_default().as_deref(), Some("'a\"b'"));
        c.default = Some("9.99".into());
        assert_eq!(c.declared_default().as_deref(), Some("9.99"));
        c.default = Some("'-1'::smallint".into());
        assert_eq!(c.declared_default().as_deref(), Some("-1"));
        let singleton =
            [col("_singleton", "boolean", None, true), col("x", "real", Some(":float32:"), false)];
        assert_eq!(describe("", &singleton, &[], &[]), "---\nx                    : float32\n");
        assert_eq!(split_type_comment(":<blob@s>:img"), Some(("<blob@s>", "img")));
        assert_eq!(split_type_comment("plain: text"), None);
    }
}
