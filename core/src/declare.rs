//! Compiles a parsed definition into the DDL datajoint-python 2.3.5 would run on PostgreSQL for
//! the same table, so that its clients cannot tell our tables from theirs: column order, types,
//! defaults, `:type:` comments, foreign keys, index names, and the `~lineage` rows.
//!
//! Deliberate differences, where datajoint-python's output is a bug: `CREATE TABLE` without
//! `IF NOT EXISTS` (an existing table is an error, not a silent no-op); defaults and comments are
//! always escaped (it pastes `'` unescaped); double quotes in column comments are stored as
//! written (it adds a backslash, a MySQL leftover).

use std::collections::HashSet;

use crate::definition::{Attribute, Definition, DefinitionError, ErrorKind, ForeignKey, Item};
use crate::naming::{Tier, MAX_NAME_LENGTH};
use crate::sql;
use crate::types::AttributeType;

/// The table being declared.
#[derive(Clone, Debug)]
pub struct Target {
    pub schema: String,
    pub table: String,
    pub tier: Tier,
}

/// A referenced table, as read from the catalog.
#[derive(Clone, Debug)]
pub struct Parent {
    pub schema: String,
    pub table: String,
    pub primary_key: Vec<ParentColumn>,
}

#[derive(Clone, Debug)]
pub struct ParentColumn {
    pub name: String,
    /// The column's type as datajoint-python reads it back (`integer`, `varchar(16)`,
    /// `timestamp without time zone`, `"lab"."enum_e54fc739"`): children inherit this text.
    pub sql_type: String,
    /// The parent's `~lineage` value for the column, if recorded.
    pub lineage: Option<String>,
}

/// datajoint-python's optional hidden columns, both off by default there.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// `_job_start_time`, `_job_duration`, `_job_version` on Computed and Imported tables.
    pub job_metadata: bool,
    /// `_prov` on Manual tables.
    pub provenance: bool,
}

/// Everything needed to create the table, in execution order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableDdl {
    /// Enum types the columns use: (type name, values); created when missing.
    pub enums: Vec<(String, Vec<String>)>,
    pub create_table: String,
    pub indexes: Vec<String>,
    /// `COMMENT ON TABLE`, then one `COMMENT ON COLUMN` per commented column.
    pub comments: Vec<String>,
    pub columns: Vec<String>,
    pub primary_key: Vec<String>,
    /// `~lineage` rows: (attribute, lineage), in datajoint-python's order.
    pub lineage: Vec<(String, String)>,
    /// Things worth a NOTICE (native types).
    pub notices: Vec<String>,
}

/// `CREATE TYPE "schema"."enum_x" AS ENUM ('a', 'b')`.
pub fn create_enum_sql(schema: &str, name: &str, values: &[String]) -> String {
    let list: Vec<String> = values.iter().map(|v| sql::literal(v)).collect();
    format!("CREATE TYPE {} AS ENUM ({})", sql::qualified(schema, name), list.join(", "))
}

struct Column {
    name: String,
    sql: String,
    in_key: bool,
    comment: Option<String>,
}

/// Compiles `definition` for `target`. `parents` holds one resolved parent per foreign-key line,
/// in order.
pub fn compile(
    definition: &Definition,
    target: &Target,
    parents: &[Parent],
    options: Options,
) -> Result<TableDdl, DefinitionError> {
    if target.table.len() > MAX_NAME_LENGTH {
        return Err(DefinitionError::new(
            ErrorKind::NameTooLong,
            format!(
                "table name {} is {} bytes long; PostgreSQL allows {MAX_NAME_LENGTH}",
                target.table,
                target.table.len()
            ),
            "Choose a shorter class name.",
        ));
    }
    let mut out = TableDdl::default();
    let mut columns: Vec<Column> = Vec::new();
    let mut foreign_keys: Vec<String> = Vec::new();
    // child attribute → (parent schema, parent table, parent attribute, parent lineage), in
    // first-insertion order with later foreign keys overwriting, as datajoint-python's dict does.
    let mut fk_attributes: Vec<(String, (String, String, String, Option<String>))> = Vec::new();
    let mut indexes: Vec<(bool, Vec<String>, usize)> = Vec::new();
    let mut fk_candidates: Vec<Vec<String>> = Vec::new();
    let mut parents = parents.iter();

    for line in &definition.lines {
        let at = |e: DefinitionError| e.at(line.number, 1, &line.text);
        match &line.item {
            Item::Attribute(attribute) => {
                let column = compile_attribute(attribute, line.in_key, target, &mut out).map_err(|e| {
                    // Point at the type when the type is what is wrong.
                    let column = if e.kind == ErrorKind::UndefinedType { attribute.type_column } else { 1 };
                    e.at(line.number, column, &line.text)
                })?;
                if columns.iter().any(|c| c.name == column.name) {
                    return Err(at(DefinitionError::new(
                        ErrorKind::DuplicateColumn,
                        format!("attribute \"{}\" is declared twice", column.name),
                        "Each attribute name appears once; a foreign key already brings its parent's key attributes.",
                    )));
                }
                columns.push(column);
            }
            Item::ForeignKey(fk) => {
                let parent = parents.next().ok_or_else(|| {
                    at(DefinitionError::new(
                        ErrorKind::UndefinedTable,
                        "foreign key parent was not resolved",
                        "This is a bug in datajoint.",
                    ))
                })?;
                if fk.nullable && line.in_key {
                    return Err(at(DefinitionError::new(
                        ErrorKind::InvalidDefinition,
                        "a primary-key foreign key cannot be nullable",
                        "Move the [nullable] reference below the --- line.",
                    )));
                }
                let pairs = fk_columns(fk, parent).map_err(at)?;
                for (child, parent_column) in &pairs {
                    if !columns.iter().any(|c| &c.name == child) {
                        let null = if fk.nullable { "" } else { " NOT NULL" };
                        columns.push(Column {
                            name: child.clone(),
                            sql: format!("{} {}{null}", sql::ident(child), parent_column.sql_type),
                            in_key: line.in_key,
                            comment: None,
                        });
                    }
                    let origin = (
                        parent.schema.clone(),
                        parent.table.clone(),
                        parent_column.name.clone(),
                        parent_column.lineage.clone(),
                    );
                    match fk_attributes.iter_mut().find(|(name, _)| name == child) {
                        Some(entry) => entry.1 = origin,
                        None => fk_attributes.push((child.clone(), origin)),
                    }
                }
                let child_cols: Vec<String> = pairs.iter().map(|(c, _)| c.clone()).collect();
                let parent_cols: Vec<&str> = pairs.iter().map(|(_, p)| p.name.as_str()).collect();
                foreign_keys.push(format!(
                    "FOREIGN KEY ({}) REFERENCES {} ({}) ON UPDATE CASCADE ON DELETE RESTRICT",
                    ident_list(&child_cols),
                    sql::qualified(&parent.schema, &parent.table),
                    ident_list(&parent_cols),
                ));
                if fk.unique {
                    indexes.push((true, child_cols, line.number));
                } else {
                    fk_candidates.push(child_cols);
                }
            }
            Item::Index(index) => indexes.push((index.unique, index.columns.clone(), line.number)),
        }
    }

    // Platform columns, compiled like user lines.
    if !columns.iter().any(|c| c.in_key) {
        let singleton = platform_attribute("_singleton", Some("1"), "bool", "singleton primary key");
        columns.push(compile_attribute(&singleton, true, target, &mut out)?);
    }
    if options.job_metadata && target.tier.is_auto_populated() {
        for (name, default, ty, comment) in [
            ("_job_start_time", Some("null"), "datetime(3)", "when computation began"),
            ("_job_duration", Some("null"), "float32", "computation duration in seconds"),
            ("_job_version", Some("\"\""), "varchar(64)", "code version"),
        ] {
            columns.push(compile_attribute(
                &platform_attribute(name, default, ty, comment),
                false,
                target,
                &mut out,
            )?);
        }
    }
    if options.provenance && target.tier == Tier::Manual {
        let prov = platform_attribute(
            "_prov",
            Some("null"),
            "json",
            "extrinsic provenance for a row that entered from outside",
        );
        columns.push(compile_attribute(&prov, false, target, &mut out)?);
    }

    let primary_key: Vec<String> = columns.iter().filter(|c| c.in_key).map(|c| c.name.clone()).collect();
    if target.tier.is_auto_populated() {
        let own: Vec<&str> = primary_key
            .iter()
            .filter(|k| !fk_attributes.iter().any(|(name, _)| name == *k))
            .map(String::as_str)
            .collect();
        if !own.is_empty() {
            return Err(DefinitionError::new(
                ErrorKind::InvalidDefinition,
                format!(
                    "{} table {} has primary key attributes that do not come from foreign keys: {}",
                    target.tier,
                    target.table,
                    own.join(", ")
                ),
                "make() runs once per key of its parents: every key attribute of a Computed or Imported table \
                 comes from a foreign key. To compute several rows per key, store them in a Part table.",
            ));
        }
    }

    // Indexes: the declared ones, then one per foreign key not already covered by the primary
    // key or an earlier index (datajoint-python's PostgreSQL rule: longest first, prefix match).
    let mut prefixes: Vec<Vec<String>> = vec![primary_key.clone()];
    prefixes.extend(indexes.iter().map(|(_, cols, _)| cols.clone()));
    fk_candidates.sort_by_key(|c| std::cmp::Reverse(c.len()));
    for candidate in fk_candidates {
        if prefixes.iter().any(|p| p.len() >= candidate.len() && p[..candidate.len()] == candidate[..]) {
            continue;
        }
        indexes.push((false, candidate.clone(), 0));
        prefixes.push(candidate);
    }
    let mut index_names = HashSet::new();
    for (unique, cols, line_number) in &indexes {
        if let Some(missing) = cols.iter().find(|c| !columns.iter().any(|col| &col.name == *c)) {
            let line = definition.lines.iter().find(|l| l.number == *line_number);
            return Err(DefinitionError::new(
                ErrorKind::UndefinedColumn,
                format!("index column \"{missing}\" is not an attribute of the table"),
                "Index only declared attributes.",
            )
            .at(*line_number, 1, line.map_or("", |l| l.text.as_str())));
        }
        // datajoint-python keeps the first 30 characters of the joined column names.
        let joined: String = cols.join("_").chars().take(30).collect();
        let name = format!("idx_{}_{joined}", target.table);
        if !index_names.insert(name.clone()) {
            return Err(DefinitionError::new(
                ErrorKind::DuplicateObject,
                format!("two indexes on ({}) would both be named {name}", cols.join(", ")),
                "Declare one index per column list (a unique foreign key already has a unique index).",
            ));
        }
        out.indexes.push(format!(
            "CREATE {}INDEX {} ON {} ({})",
            if *unique { "UNIQUE " } else { "" },
            sql::ident(&name),
            sql::qualified(&target.schema, &target.table),
            ident_list(cols),
        ));
    }

    let full_name = sql::qualified(&target.schema, &target.table);
    let mut items: Vec<String> = columns.iter().map(|c| c.sql.clone()).collect();
    items.push(format!("PRIMARY KEY ({})", ident_list(&primary_key)));
    items.extend(foreign_keys);
    out.create_table = format!("CREATE TABLE {full_name} (\n{}\n) ", items.join(",\n"));
    out.comments.push(format!("COMMENT ON TABLE {full_name} IS {}", sql::literal(&definition.comment)));
    for c in &columns {
        if let Some(comment) = &c.comment {
            out.comments.push(format!(
                "COMMENT ON COLUMN {full_name}.{} IS {}",
                sql::ident(&c.name),
                sql::literal(comment)
            ));
        }
    }
    for (attribute, (schema, table, parent_attribute, lineage)) in &fk_attributes {
        let value = lineage.clone().unwrap_or_else(|| format!("{schema}.{table}.{parent_attribute}"));
        out.lineage.push((attribute.clone(), value));
    }
    for key in &primary_key {
        if !fk_attributes.iter().any(|(name, _)| name == key) {
            out.lineage.push((key.clone(), format!("{}.{}.{key}", target.schema, target.table)));
        }
    }
    out.columns = columns.into_iter().map(|c| c.name).collect();
    out.primary_key = primary_key;
    Ok(out)
}

fn platform_attribute(name: &str, default: Option<&str>, type_text: &str, comment: &str) -> Attribute {
    Attribute {
        name: name.into(),
        default: default.map(String::from),
        type_text: type_text.into(),
        type_column: 1,
        comment: comment.into(),
    }
}

fn compile_attribute(
    attribute: &Attribute,
    in_key: bool,
    target: &Target,
    out: &mut TableDdl,
) -> Result<Column, DefinitionError> {
    let name = &attribute.name;
    if name.len() > MAX_NAME_LENGTH {
        return Err(DefinitionError::new(
            ErrorKind::NameTooLong,
            format!(
                "attribute name {name} is {} bytes long; PostgreSQL allows {MAX_NAME_LENGTH}",
                name.len()
            ),
            "Choose a shorter name.",
        ));
    }
    let ty = AttributeType::parse(&attribute.type_text)
        .map_err(|e| DefinitionError::new(ErrorKind::UndefinedType, e.message, e.hint))?;
    let sql_type = ty.sql_type(&target.schema);
    if in_key && (sql_type == "bytea" || sql_type == "jsonb" || sql_type == "json") {
        return Err(DefinitionError::new(
            ErrorKind::InvalidDefinition,
            format!("primary key attribute \"{name}\" has type {}, which cannot be part of a key", attribute.type_text),
            "Keys are compared for equality: use integers, strings, dates or uuid; keep blobs and json below ---.",
        ));
    }
    match &ty {
        AttributeType::Core { enumeration: Some(e), .. } => {
            if !out.enums.iter().any(|(n, _)| n == &e.type_name) {
                out.enums.push((e.type_name.clone(), e.values.clone()));
            }
        }
        AttributeType::Native { sql_type } => out.notices.push(format!(
            "attribute \"{name}\" uses the PostgreSQL type {sql_type}; DataJoint core types (int32, float64, varchar(n), ...) are portable"
        )),
        _ => {}
    }
    let clause = default_clause(attribute, in_key)?;
    let comment = match ty.comment_prefix() {
        Some(prefix) => Some(format!("{prefix}{}", attribute.comment)),
        None => (!attribute.comment.is_empty()).then(|| attribute.comment.clone()),
    };
    Ok(Column {
        name: name.clone(),
        sql: format!("{} {sql_type} {clause}", sql::ident(name)),
        in_key,
        comment,
    })
}

/// datajoint-python's default rules: `null` makes the attribute nullable; `CURRENT_TIMESTAMP[(n)]`
/// is kept as an expression; everything else is a string literal, which PostgreSQL converts to the
/// column's type (`5` → `'5'`).
fn default_clause(attribute: &Attribute, in_key: bool) -> Result<String, DefinitionError> {
    let Some(d) = attribute.default.as_deref() else { return Ok("NOT NULL".into()) };
    if d.eq_ignore_ascii_case("null") {
        if in_key {
            return Err(DefinitionError::new(
                ErrorKind::InvalidDefinition,
                format!("primary key attribute \"{}\" cannot be nullable", attribute.name),
                "Key attributes always have a value; move it below --- or give it a non-null default.",
            ));
        }
        return Ok("DEFAULT NULL".into());
    }
    let head = d.split('(').next().unwrap_or_default();
    if head.eq_ignore_ascii_case("current_timestamp") {
        let precision = &d[head.len()..];
        let ok = precision.is_empty()
            || precision
                .strip_prefix('(')
                .and_then(|p| p.strip_suffix(')'))
                .is_some_and(|p| p.len() == 1 && p.as_bytes()[0].is_ascii_digit() && p.as_bytes()[0] <= b'6');
        if !ok {
            return Err(DefinitionError::new(
                ErrorKind::Syntax,
                format!("default {d} is not CURRENT_TIMESTAMP or CURRENT_TIMESTAMP(n)"),
                "Write CURRENT_TIMESTAMP or CURRENT_TIMESTAMP(0) to CURRENT_TIMESTAMP(6).",
            ));
        }
        return Ok(format!("NOT NULL DEFAULT {d}"));
    }
    let value = if d.len() >= 2 && d.starts_with('"') && d.ends_with('"') {
        d[1..d.len() - 1].to_string()
    } else if d.starts_with('\'') {
        sql::parse_literal(d).ok_or_else(|| {
            DefinitionError::new(
                ErrorKind::Syntax,
                format!("default {d} is not one quoted string"),
                "Quote the default once ('text', with '' for a quote inside), or leave it unquoted.",
            )
        })?
    } else {
        d.to_string()
    };
    Ok(format!("NOT NULL DEFAULT {}", sql::literal(&value)))
}

/// The (child attribute, parent column) pairs of a foreign key, in the parent's key order.
fn fk_columns<'p>(
    fk: &ForeignKey,
    parent: &'p Parent,
) -> Result<Vec<(String, &'p ParentColumn)>, DefinitionError> {
    for (i, (new, old)) in fk.renames.iter().enumerate() {
        if !parent.primary_key.iter().any(|c| &c.name == old) {
            let key: Vec<&str> = parent.primary_key.iter().map(|c| c.name.as_str()).collect();
            return Err(DefinitionError::new(
                ErrorKind::UndefinedColumn,
                format!("\"{old}\" is not a primary key attribute of {}.{}", parent.schema, parent.table),
                format!("Its primary key is ({}); rename one of those.", key.join(", ")),
            ));
        }
        if fk.renames[..i].iter().any(|(n, o)| o == old || n == new) {
            return Err(DefinitionError::new(
                ErrorKind::NotSupported,
                format!("\"{old}\" or \"{new}\" is renamed twice"),
                "Rename each parent attribute once.",
            ));
        }
    }
    Ok(parent
        .primary_key
        .iter()
        .map(|column| {
            let child =
                fk.renames.iter().find(|(_, old)| old == &column.name).map_or(&column.name, |(new, _)| new);
            (child.clone(), column)
        })
        .collect())
}

fn ident_list<S: AsRef<str>>(names: &[S]) -> String {
    names.iter().map(|n| sql::ident(n.as_ref())).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse;

    fn target(table: &str, tier: Tier) -> Target {
        Target { schema: "lab".into(), table: table.into(), tier }
    }

    fn parent(table: &str, key: &[(&str, &str, &str)]) -> Parent {
        Parent {
            schema: "lab".into(),
            table: table.into(),
            primary_key: key
                .iter()
                .map(|(n, t, l)| ParentColumn {
                    name: n.to_string(),
                    sql_type: t.to_string(),
                    lineage: Some(l.to_string()),
                })
                .collect(),
        }
    }

    fn statements(ddl: &TableDdl) -> Vec<String> {
        let mut s: Vec<String> = ddl.enums.iter().map(|(n, v)| create_enum_sql("lab", n, v)).collect();
        s.push(ddl.create_table.clone());
        s.extend(ddl.indexes.iter().cloned());
        s.extend(ddl.comments.iter().cloned());
        s
    }

    fn subject() -> Parent {
        parent("subject", &[("subject_id", "integer", "lab.subject.subject_id")])
    }

    fn session() -> Parent {
        parent(
            "session",
            &[
                ("subject_id", "integer", "lab.subject.subject_id"),
                ("session_idx", "smallint", "lab.session.session_idx"),
            ],
        )
    }

    /// The worked example of datajoint-python 2.3.5's output on PostgreSQL, statement for statement
    /// (less IF NOT EXISTS).
    #[test]
    fn matches_datajoint_python_byte_for_byte() {
        let def = parse("# Experimental subject\nsubject_id : int32        # unique subject id\n---\nsex : enum('M', 'F', 'U')\ndob = null : date").unwrap();
        let ddl = compile(&def, &target("subject", Tier::Manual), &[], Options::default()).unwrap();
        assert_eq!(
            statements(&ddl),
            [
                "CREATE TYPE \"lab\".\"enum_e54fc739\" AS ENUM ('M', 'F', 'U')",
                "CREATE TABLE \"lab\".\"subject\" (\n\"subject_id\" integer NOT NULL,\n\"sex\" \"lab\".\"enum_e54fc739\" NOT NULL,\n\"dob\" date DEFAULT NULL,\nPRIMARY KEY (\"subject_id\")\n) ",
                "COMMENT ON TABLE \"lab\".\"subject\" IS 'Experimental subject'",
                "COMMENT ON COLUMN \"lab\".\"subject\".\"subject_id\" IS ':int32:unique subject id'",
                "COMMENT ON COLUMN \"lab\".\"subject\".\"sex\" IS ':enum(''M'', ''F'', ''U''):'",
                "COMMENT ON COLUMN \"lab\".\"subject\".\"dob\" IS ':date:'",
            ]
        );
        assert_eq!(ddl.lineage, [("subject_id".to_string(), "lab.subject.subject_id".to_string())]);

        let def =
            parse("-> Subject\nsession_idx : int16\n---\nsession_start : datetime(3)\n-> [nullable] Rig")
                .unwrap();
        let rig = parent("#rig", &[("rig", "varchar(16)", "lab.#rig.rig")]);
        let ddl =
            compile(&def, &target("session", Tier::Manual), &[subject(), rig], Options::default()).unwrap();
        assert_eq!(
            statements(&ddl),
            [
                "CREATE TABLE \"lab\".\"session\" (\n\"subject_id\" integer NOT NULL,\n\"session_idx\" smallint NOT NULL,\n\"session_start\" timestamp(3) NOT NULL,\n\"rig\" varchar(16),\nPRIMARY KEY (\"subject_id\", \"session_idx\"),\nFOREIGN KEY (\"subject_id\") REFERENCES \"lab\".\"subject\" (\"subject_id\") ON UPDATE CASCADE ON DELETE RESTRICT,\nFOREIGN KEY (\"rig\") REFERENCES \"lab\".\"#rig\" (\"rig\") ON UPDATE CASCADE ON DELETE RESTRICT\n) ",
                "CREATE INDEX \"idx_session_rig\" ON \"lab\".\"session\" (\"rig\")",
                "COMMENT ON TABLE \"lab\".\"session\" IS ''",
                "COMMENT ON COLUMN \"lab\".\"session\".\"session_idx\" IS ':int16:'",
                "COMMENT ON COLUMN \"lab\".\"session\".\"session_start\" IS ':datetime(3):'",
            ]
        );
        let lineage: Vec<(&str, &str)> = ddl.lineage.iter().map(|(a, l)| (a.as_str(), l.as_str())).collect();
        assert_eq!(
            lineage,
            [
                ("subject_id", "lab.subject.subject_id"),
                ("rig", "lab.#rig.rig"),
                ("session_idx", "lab.session.session_idx")
            ]
        );

        let def =
            parse("-> Session\n-> Subject.proj(partner_id='subject_id')\n---\nsimilarity : float32").unwrap();
        let options = Options { job_metadata: true, provenance: true };
        let ddl = compile(&def, &target("__pair", Tier::Computed), &[session(), subject()], options).unwrap();
        assert_eq!(
            statements(&ddl),
            [
                "CREATE TABLE \"lab\".\"__pair\" (\n\"subject_id\" integer NOT NULL,\n\"session_idx\" smallint NOT NULL,\n\"partner_id\" integer NOT NULL,\n\"similarity\" real NOT NULL,\n\"_job_start_time\" timestamp(3) DEFAULT NULL,\n\"_job_duration\" real DEFAULT NULL,\n\"_job_version\" varchar(64) NOT NULL DEFAULT '',\nPRIMARY KEY (\"subject_id\", \"session_idx\", \"partner_id\"),\nFOREIGN KEY (\"subject_id\", \"session_idx\") REFERENCES \"lab\".\"session\" (\"subject_id\", \"session_idx\") ON UPDATE CASCADE ON DELETE RESTRICT,\nFOREIGN KEY (\"partner_id\") REFERENCES \"lab\".\"subject\" (\"subject_id\") ON UPDATE CASCADE ON DELETE RESTRICT\n) ",
                "CREATE INDEX \"idx___pair_partner_id\" ON \"lab\".\"__pair\" (\"partner_id\")",
                "COMMENT ON TABLE \"lab\".\"__pair\" IS ''",
                "COMMENT ON COLUMN \"lab\".\"__pair\".\"similarity\" IS ':float32:'",
                "COMMENT ON COLUMN \"lab\".\"__pair\".\"_job_start_time\" IS ':datetime(3):when computation began'",
                "COMMENT ON COLUMN \"lab\".\"__pair\".\"_job_duration\" IS ':float32:computation duration in seconds'",
                "COMMENT ON COLUMN \"lab\".\"__pair\".\"_job_version\" IS ':varchar(64):code version'",
            ]
        );
        let lineage: Vec<&str> = ddl.lineage.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lineage, ["lab.subject.subject_id", "lab.session.session_idx", "lab.subject.subject_id"]);

        let pair = parent(
            "__pair",
            &[
                ("subject_id", "integer", "lab.subject.subject_id"),
                ("session_idx", "smallint", "lab.session.session_idx"),
                ("partner_id", "integer", "lab.subject.subject_id"),
            ],
        );
        let def = parse("-> master\nchannel : int16\n---\nvalue : <blob>").unwrap();
        let ddl = compile(&def, &target("__pair__channel", Tier::Part), &[pair], Options::default()).unwrap();
        assert_eq!(
            statements(&ddl),
            [
                "CREATE TABLE \"lab\".\"__pair__channel\" (\n\"subject_id\" integer NOT NULL,\n\"session_idx\" smallint NOT NULL,\n\"partner_id\" integer NOT NULL,\n\"channel\" smallint NOT NULL,\n\"value\" bytea NOT NULL,\nPRIMARY KEY (\"subject_id\", \"session_idx\", \"partner_id\", \"channel\"),\nFOREIGN KEY (\"subject_id\", \"session_idx\", \"partner_id\") REFERENCES \"lab\".\"__pair\" (\"subject_id\", \"session_idx\", \"partner_id\") ON UPDATE CASCADE ON DELETE RESTRICT\n) ",
                "COMMENT ON TABLE \"lab\".\"__pair__channel\" IS ''",
                "COMMENT ON COLUMN \"lab\".\"__pair__channel\".\"channel\" IS ':int16:'",
                "COMMENT ON COLUMN \"lab\".\"__pair__channel\".\"value\" IS ':<blob>:'",
            ]
        );
        assert_eq!(
            ddl.lineage.last().unwrap(),
            &("channel".to_string(), "lab.__pair__channel.channel".to_string())
        );
    }

    #[test]
    fn singleton_tables_get_the_hidden_key() {
        let ddl =
            compile(&parse("---\nx : int32").unwrap(), &target("t", Tier::Manual), &[], Options::default())
                .unwrap();
        assert_eq!(
            ddl.create_table,
            "CREATE TABLE \"lab\".\"t\" (\n\"x\" integer NOT NULL,\n\"_singleton\" boolean NOT NULL DEFAULT '1',\nPRIMARY KEY (\"_singleton\")\n) "
        );
        assert_eq!(ddl.lineage, [("_singleton".to_string(), "lab.t._singleton".to_string())]);
    }

    #[test]
    fn defaults() {
        let col = |line: &str| {
            let ddl = compile(
                &parse(&format!("id : int32\n---\n{line}")).unwrap(),
                &target("t", Tier::Manual),
                &[],
                Options::default(),
            );
            ddl.map(|d| d.create_table.lines().nth(2).unwrap().trim_end_matches(',').to_string())
        };
        assert_eq!(col("n = 5 : int32").unwrap(), "\"n\" integer NOT NULL DEFAULT '5'");
        assert_eq!(col("s = \"it's\" : varchar(8)").unwrap(), "\"s\" varchar(8) NOT NULL DEFAULT 'it''s'");
        assert_eq!(col("s = 'a''b' : varchar(8)").unwrap(), "\"s\" varchar(8) NOT NULL DEFAULT 'a''b'");
        assert_eq!(
            col("t = current_timestamp : datetime").unwrap(),
            "\"t\" timestamp NOT NULL DEFAULT current_timestamp"
        );
        assert_eq!(
            col("t = CURRENT_TIMESTAMP(3) : datetime(3)").unwrap(),
            "\"t\" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)"
        );
        assert_eq!(col("s = a%b : varchar(8)").unwrap(), "\"s\" varchar(8) NOT NULL DEFAULT 'a%b'");
        assert!(col("s = 'a' || 'b' : varchar(8)").is_err());
        assert!(col("t = CURRENT_TIMESTAMP(3); drop table x : datetime").is_err());
    }

    #[test]
    fn definition_rules_are_enforced() {
        let err = |text: &str, tier: Tier, parents: &[Parent]| {
            compile(&parse(text).unwrap(), &target("__t", tier), parents, Options::default()).unwrap_err()
        };
        let e = err("-> Subject\nframe : int32", Tier::Computed, &[subject()]);
        assert_eq!(e.kind, ErrorKind::InvalidDefinition);
        assert!(e.message.contains("frame"));
        let e = err("a : int32\na : int16", Tier::Manual, &[]);
        assert_eq!((e.kind, e.line), (ErrorKind::DuplicateColumn, 2));
        let e = err("a = null : int32", Tier::Manual, &[]);
        assert_eq!(e.kind, ErrorKind::InvalidDefinition);
        let e = err("-> [nullable] Subject", Tier::Manual, &[subject()]);
        assert_eq!(e.kind, ErrorKind::InvalidDefinition);
        let e = err("-> Subject.proj(x='nope')", Tier::Manual, &[subject()]);
        assert_eq!(e.kind, ErrorKind::UndefinedColumn);
        let e = err("a : int32\nindex(b)", Tier::Manual, &[]);
        assert_eq!((e.kind, e.line), (ErrorKind::UndefinedColumn, 2));
        let e = err("a : int(x)", Tier::Manual, &[]);
        assert_eq!((e.kind, e.line, e.column), (ErrorKind::UndefinedType, 1, 5));
        let e = err("a : <blob>", Tier::Manual, &[]);
        assert_eq!(e.kind, ErrorKind::InvalidDefinition);
        let e = err("a : int32\nunique index(a)\nunique index(a)", Tier::Manual, &[]);
        assert_eq!(e.kind, ErrorKind::DuplicateObject);
        let long = format!("{} : int32", "a".repeat(64));
        assert_eq!(err(&long, Tier::Manual, &[]).kind, ErrorKind::NameTooLong);
        let t = Target { schema: "lab".into(), table: "x".repeat(64), tier: Tier::Manual };
        assert_eq!(
            compile(&parse("a : int32").unwrap(), &t, &[], Options::default()).unwrap_err().kind,
            ErrorKind::NameTooLong
        );
    }

    #[test]
    fn index_rules() {
        let ddl = compile(
            &parse("-> Session\n---\n-> [unique] Subject.proj(partner='subject_id')\nindex(session_idx, subject_id)").unwrap(),
            &target("t", Tier::Manual),
            &[session(), subject()],
            Options::default(),
        )
        .unwrap();
        assert_eq!(
            ddl.indexes,
            [
                "CREATE UNIQUE INDEX \"idx_t_partner\" ON \"lab\".\"t\" (\"partner\")",
                "CREATE INDEX \"idx_t_session_idx_subject_id\" ON \"lab\".\"t\" (\"session_idx\", \"subject_id\")",
            ]
        );
        assert!(ddl.notices.is_empty());
        let native =
            compile(&parse("a : text").unwrap(), &target("t", Tier::Manual), &[], Options::default())
                .unwrap();
        assert_eq!(native.notices.len(), 1);
        assert!(
            !native.comments.iter().any(|c| c.contains("\"a\"")),
            "no comment for a native type without one"
        );
    }
}
