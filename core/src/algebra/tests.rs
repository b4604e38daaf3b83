use super::*;

/// A small pipeline: Subject → Session → Scan; Session.rig is a secondary foreign key to Rig;
/// Other has a `session_idx` of its own lineage.
struct Lab;

fn attr(name: &str, in_key: bool, lineage: Option<&str>) -> Attribute {
    Attribute { name: name.into(), in_key, lineage: lineage.map(String::from) }
}

impl Catalog for Lab {
    type Error = AlgebraError;
    fn table(&mut self, name: &str) -> Result<TableInfo, AlgebraError> {
        let (table, attributes) = match name {
            "lab.Subject" | "lab.subject" => (
                "subject",
                vec![attr("subject_id", true, Some("lab.subject.subject_id")), attr("species", false, None)],
            ),
            "lab.Session" | "lab.session" => (
                "session",
                vec![
                    attr("subject_id", true, Some("lab.subject.subject_id")),
                    attr("session_idx", true, Some("lab.session.session_idx")),
                    attr("rig", false, Some("lab.rig.rig")),
                    attr("duration", false, None),
                ],
            ),
            "lab.Scan" => (
                "scan",
                vec![
                    attr("subject_id", true, Some("lab.subject.subject_id")),
                    attr("session_idx", true, Some("lab.session.session_idx")),
                    attr("scan_idx", true, Some("lab.scan.scan_idx")),
                    attr("depth", false, None),
                ],
            ),
            "lab.Rig" => ("rig", vec![attr("rig", true, Some("lab.rig.rig")), attr("room", false, None)]),
            "lab.Other" => ("other", vec![attr("session_idx", true, Some("lab.other.session_idx"))]),
            _ => {
                return Err(AlgebraError::new(
                    Code::UndefinedTable,
                    format!("table {name} does not exist"),
                    name,
                    "",
                ))
            }
        };
        Ok(TableInfo {
            display: format!("lab.{}", crate::naming::class_name_of(table)),
            schema: "lab".into(),
            table: table.into(),
            attributes,
            lineage_available: true,
        })
    }
}

fn compiled(text: &str) -> Result<Compiled, AlgebraError> {
    let mut rel = parse(text)?;
    compile(&mut rel, &mut Lab)
}

fn key(text: &str) -> Vec<String> {
    compiled(text).unwrap().primary_key()
}

#[test]
fn text_round_trips() {
    for text in [
        "(lab.Session * lab.Scan) & 'depth > 100'",
        "lab.Session * lab.Scan * lab.Subject",
        "lab.Session & {\"subject_id\":1} & 'duration > 2'",
        "lab.Session - [{\"subject_id\":1}, 'duration < 1']",
        "lab.Session & not(lab.Scan & 'depth > 3')",
        "proj(lab.Session, 'rig', 'idx = session_idx', 'x = duration * 2')",
        "aggr(lab.Subject, lab.Session, 'n = count(*)', exclude_nonmatching=true)",
        "top(lab.Scan, 10, 'depth DESC', offset=5)",
        "u('rig') & lab.Session",
        "proj(lab.Session) + proj(lab.Scan, 'x = scan_idx')",
        "extend(lab.Session, lab.Rig)",
        "lab.Session & and('duration > 1', true)",
        "lab.Session & 'it''s'",
    ] {
        let rel = parse(text).unwrap();
        assert_eq!(rel.to_string(), text, "prints back as written");
        assert_eq!(parse(&rel.to_string()).unwrap(), rel);
    }
    // Python's precedence: * before + and -, & last.
    assert_eq!(parse("lab.A * lab.B & 'x'").unwrap().to_string(), "(lab.A * lab.B) & 'x'");
    assert_eq!(parse("lab.A - lab.B * lab.C").unwrap().to_string(), "lab.A - (lab.B * lab.C)");
}

#[test]
fn bad_text_is_a_syntax_error_with_the_fragment() {
    for (text, fragment) in [
        ("lab.Session &", ""),
        ("lab.Session ; drop table x", "; drop table x"),
        ("'depth > 1' & lab.Session", "\"depth > 1\""),
        ("proj(lab.Session, 3)", ")"),
        ("frob(lab.Session)", "frob(lab.Session)"),
        ("lab.Session & {\"a\": ", "{\"a\": "),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.fragment.starts_with(fragment) || fragment.is_empty(), "{text}: {e:?}");
    }
    assert_eq!(parse("'x' * lab.S").unwrap_err().code, Code::WrongOperand);
}

#[test]
fn join_key_follows_dependence() {
    assert_eq!(key("lab.Session * lab.Scan"), ["subject_id", "session_idx", "scan_idx"]);
    assert_eq!(key("lab.Scan * lab.Session"), ["subject_id", "session_idx", "scan_idx"]);
    // Session determines Rig (rig is an attribute of Session).
    assert_eq!(key("lab.Session * lab.Rig"), ["subject_id", "session_idx"]);
    assert_eq!(key("lab.Subject * lab.Rig"), ["subject_id", "rig"]);
    // Scan determines Session: Scan's attributes come first (as in datajoint-python).
    let c = compiled("lab.Session * lab.Scan").unwrap();
    assert_eq!(
        c.sql,
        "SELECT t2.\"subject_id\", t2.\"session_idx\", t2.\"scan_idx\", t2.\"depth\", t1.\"rig\", t1.\"duration\" \
         FROM \"lab\".\"session\" AS t1 JOIN \"lab\".\"scan\" AS t2 ON t1.\"subject_id\" = t2.\"subject_id\" \
         AND t1.\"session_idx\" = t2.\"session_idx\""
    );
}

#[test]
fn lineage_clash_is_an_error_with_a_rename_hint() {
    let e = compiled("lab.Session * lab.Other").unwrap_err();
    assert_eq!(e.code, Code::LineageClash);
    assert!(e.message.contains("session_idx"), "{e:?}");
    assert!(e.hint.contains("dj.proj"));
    // Secondary attributes without lineage never match.
    let e = compiled("lab.Session * proj(lab.Scan, 'duration = depth')").unwrap_err();
    assert_eq!(e.code, Code::LineageClash);
    // Renaming resolves it.
    assert_eq!(
        key("lab.Session * proj(lab.Other, 'other_idx = session_idx')"),
        ["subject_id", "session_idx", "other_idx"]
    );
    assert_eq!(compiled("lab.Session & lab.Other").unwrap_err().code, Code::LineageClash);
}

#[test]
fn restrictions_flatten_into_one_select() {
    let c = compiled("(lab.Session * lab.Scan) & 'depth > 100' & {\"subject_id\": 3}").unwrap();
    assert_eq!(c.sql.matches("SELECT").count(), 1, "{}", c.sql);
    assert!(c.sql.ends_with("WHERE (t2.\"depth\" > 100) AND (t2.\"subject_id\" = '3')"), "{}", c.sql);
    let c = compiled("lab.Session - lab.Scan").unwrap();
    assert!(c.sql.contains("WHERE (NOT EXISTS (SELECT 1 FROM \"lab\".\"scan\" AS t2 WHERE t2.\"subject_id\" = t1.\"subject_id\""), "{}", c.sql);
    // Keys ignore attributes the relation does not have; an empty key matches everything.
    let c = compiled("lab.Subject & {\"scan_idx\": 1}").unwrap();
    assert!(!c.sql.contains("WHERE"));
    assert!(compiled("lab.Subject & []").unwrap().sql.ends_with("WHERE FALSE"));
    // A renamed attribute is restricted through its source column.
    let c = compiled("proj(lab.Scan, 'd = depth') & 'd > 1'").unwrap();
    assert!(c.sql.ends_with("WHERE (t1.\"depth\" > 1)"), "{}", c.sql);
    assert_eq!(compiled("lab.Scan & 'nope > 1'").unwrap_err().code, Code::UndefinedColumn);
    assert_eq!(compiled("lab.Scan & 'depth > 1; drop table x'").unwrap_err().code, Code::Syntax);
}

#[test]
fn projection_keeps_the_key() {
    let c = compiled("proj(lab.Session, 'idx = session_idx', 'x = duration * 2')").unwrap();
    let names: Vec<&str> = c.heading.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["subject_id", "idx", "x"]);
    assert_eq!(c.primary_key(), ["subject_id", "idx"]);
    assert_eq!(c.heading[1].lineage.as_deref(), Some("lab.session.session_idx"));
    assert_eq!(c.heading[2].lineage, None);
    let names: Vec<String> =
        compiled("proj(lab.Session, '...', '-rig')").unwrap().heading.into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["subject_id", "session_idx", "duration"]);
    assert_eq!(compiled("proj(lab.Session, '-subject_id')").unwrap_err().code, Code::InvalidReference);
    assert_eq!(compiled("proj(lab.Session, 'nope')").unwrap_err().code, Code::UndefinedColumn);
    assert_eq!(
        compiled("proj(lab.Session, 'rig', 'rig = duration')").unwrap_err().code,
        Code::DuplicateColumn
    );
    assert_eq!(compiled("proj(lab.Session, 'x = pg_sleep(1)')").unwrap_err().code, Code::Syntax);
    assert_eq!(compiled("proj(lab.Session, 'x = count(*)')").unwrap_err().code, Code::Syntax);
}

#[test]
fn aggregation_groups_by_the_group_key() {
    let c = compiled("aggr(lab.Subject, lab.Session, 'n = count(session_idx)', 'avg_d = avg(duration)')")
        .unwrap();
    assert_eq!(c.primary_key(), ["subject_id"]);
    assert!(c.sql.contains("LEFT JOIN"), "{}", c.sql);
    assert!(c.sql.contains("GROUP BY t1.\"subject_id\""), "{}", c.sql);
    let c =
        compiled("aggr(lab.Subject, lab.Session, '...', 'n = count(*)', exclude_nonmatching=true)").unwrap();
    assert!(!c.sql.contains("LEFT JOIN"));
    assert_eq!(c.heading.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["subject_id", "species", "n"]);
    // Restricting an aggregation wraps it.
    let c = compiled("aggr(lab.Subject, lab.Session, 'n = count(*)') & 'n > 2'").unwrap();
    assert!(c.sql.ends_with("WHERE (t3.\"n\" > 2)"), "{}", c.sql);
    assert_eq!(
        compiled("aggr(lab.Session, lab.Subject, 'n = count(*)')").unwrap_err().code,
        Code::InvalidReference
    );
    let c = compiled("aggr(u('rig'), lab.Session, 'n = count(*)')").unwrap();
    assert_eq!(c.primary_key(), ["rig"]);
    assert!(c.sql.contains("GROUP BY t1.\"rig\""));
    let c = compiled("aggr(u(), lab.Session, 'n = count(*)')").unwrap();
    assert!(c.primary_key().is_empty() && !c.sql.contains("GROUP BY"));
}

#[test]
fn universal_sets() {
    let c = compiled("u('rig') & lab.Session").unwrap();
    assert_eq!(c.sql, "SELECT DISTINCT t1.\"rig\" FROM \"lab\".\"session\" AS t1");
    assert_eq!(c.primary_key(), ["rig"]);
    for text in [
        "u('rig') * lab.Session",
        "lab.Session * u('rig')",
        "u('rig') - lab.Session",
        "u('rig')",
        "u('rig') & 'rig > 1'",
        "u('x') & lab.Session",
    ] {
        assert!(compiled(text).is_err(), "{text}");
    }
    assert_eq!(compiled("u('rig') - lab.Session").unwrap_err().code, Code::NotSupported);
}

#[test]
fn union_needs_the_same_key() {
    let c = compiled("proj(lab.Session & 'duration > 1') + proj(lab.Session & 'duration < 0')").unwrap();
    assert!(c.sql.contains(" UNION "), "{}", c.sql);
    let c = compiled("proj(lab.Session, 'rig') + proj(lab.Session, 'duration')").unwrap();
    assert!(c.sql.contains("FULL JOIN"), "{}", c.sql);
    assert_eq!(compiled("lab.Session + lab.Scan").unwrap_err().code, Code::Incompatible);
    assert_eq!(compiled("lab.Session + lab.Session").unwrap_err().code, Code::Incompatible);
}

#[test]
fn top_orders_and_limits() {
    let c = compiled("top(lab.Scan, 3, 'depth DESC')").unwrap();
    assert!(c.sql.ends_with("ORDER BY t1.\"depth\" DESC LIMIT 3"), "{}", c.sql);
    assert_eq!(c.order, ["\"depth\" DESC"]);
    let c = compiled("top(lab.Scan, 3, 'KEY') & 'depth > 1'").unwrap();
    assert!(c.sql.starts_with("SELECT t2.") && c.sql.contains("LIMIT 3) AS t2"), "{}", c.sql);
    assert_eq!(compiled("top(lab.Scan, 3, 'nope')").unwrap_err().code, Code::UndefinedColumn);
    assert_eq!(compiled("top(lab.Scan, 3, 'depth; drop')").unwrap_err().code, Code::Syntax);
}

#[test]
fn extend_keeps_every_row() {
    let c = compiled("extend(lab.Session, lab.Rig & 'room > 1')").unwrap();
    assert!(
        c.sql.contains("LEFT JOIN \"lab\".\"rig\" AS t2 ON t1.\"rig\" = t2.\"rig\" AND (t2.\"room\" > 1)"),
        "{}",
        c.sql
    );
    assert_eq!(c.primary_key(), ["subject_id", "session_idx"]);
    assert_eq!(compiled("extend(lab.Subject, lab.Session)").unwrap_err().code, Code::InvalidReference);
}

#[test]
fn names_are_canonical_after_compiling() {
    let mut rel = parse("lab.subject * lab.session").unwrap();
    compile(&mut rel, &mut Lab).unwrap();
    assert_eq!(rel.to_string(), "lab.Subject * lab.Session");
    assert_eq!(compiled("lab.Nope").unwrap_err().code, Code::UndefinedTable);
}

#[test]
fn deep_or_long_expressions_are_refused_not_a_stack_overflow() {
    let deep = format!("{}lab.Subject{}", "(".repeat(100_000), ")".repeat(100_000));
    assert_eq!(parse(&deep).unwrap_err().code, Code::TooComplex);
    let long = vec!["lab.Subject"; 100_000].join(" * ");
    assert_eq!(parse(&long).unwrap_err().code, Code::TooComplex);
    let lists = format!("lab.Subject & {}'x'{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(parse(&lists).unwrap_err().code, Code::TooComplex);
    let fine = vec!["lab.Subject"; 200].join(" * ");
    assert!(parse(&fine).is_ok());
}

#[test]
fn combined_conditions_keep_their_parentheses() {
    let c = compiled("lab.Session & ['duration < 1', 'duration > 5'] & {\"subject_id\": 1}").unwrap();
    assert!(
        c.sql.ends_with(
            "WHERE ((t1.\"duration\" < 1) OR (t1.\"duration\" > 5)) AND (t1.\"subject_id\" = '1')"
        ),
        "{}",
        c.sql
    );
    let c = compiled("lab.Session - ['duration < 1', 'duration > 5']").unwrap();
    assert!(c.sql.ends_with("WHERE (NOT ((t1.\"duration\" < 1) OR (t1.\"duration\" > 5)))"), "{}", c.sql);
    let c = compiled("lab.Session - {\"session_idx\": 2, \"subject_id\": 1}").unwrap();
    assert!(
        c.sql.ends_with("WHERE (NOT (t1.\"session_idx\" = '2' AND t1.\"subject_id\" = '1'))"),
        "{}",
        c.sql
    );
}

#[test]
fn outer_joins_compute_the_right_side_before_joining() {
    // Where no rig matches, c must be NULL, not 1.
    let c = compiled("extend(lab.Session, proj(lab.Rig, 'c = 1'))").unwrap();
    assert!(
        c.sql.contains("LEFT JOIN (SELECT t2.\"rig\", (1) AS \"c\" FROM \"lab\".\"rig\" AS t2) AS t3"),
        "{}",
        c.sql
    );
    let c = compiled("aggr(lab.Subject, proj(lab.Session, 'one = 1'), 'n = count(one)')").unwrap();
    assert!(c.sql.contains("LEFT JOIN (SELECT"), "{}", c.sql);
}

#[test]
fn grouping_and_ordering_by_computed_columns_go_through_a_subquery() {
    // GROUP BY (1) / ORDER BY (1) would mean "the first column".
    let c =
        compiled("aggr(proj(lab.Subject, 'c = 1'), lab.Session, '...', 'n = count(session_idx)')").unwrap();
    assert!(c.sql.ends_with("GROUP BY t3.\"subject_id\", t3.\"c\""), "{}", c.sql);
    let c = compiled("top(proj(lab.Subject, 'c = 1'), 2, 'c')").unwrap();
    assert!(!c.sql.contains("ORDER BY (1)"), "{}", c.sql);
}

#[test]
fn more_refusals() {
    assert_eq!(compiled("aggr(u(), lab.Session)").unwrap_err().code, Code::Syntax);
    assert_eq!(compiled("u('rig', 'rig') & lab.Session").unwrap_err().code, Code::DuplicateColumn);
    assert_eq!(
        compiled("aggr(lab.Subject, lab.Session, 'sid = subject_id', 'n = count(*)')").unwrap_err().code,
        Code::InvalidReference
    );
    let c = compiled("aggr(lab.Subject, lab.Session, 's = (species)', 'n = count(*)')").unwrap();
    assert!(c.sql.contains("GROUP BY t1.\"subject_id\", t1.\"species\""), "{}", c.sql);
    let c = compiled("aggr(u(), lab.Session, 'n = count(*)') + aggr(u(), lab.Scan, 'm = count(*)')").unwrap();
    assert!(c.sql.contains("FULL JOIN") && c.sql.contains(" ON TRUE"), "{}", c.sql);
    let mut nested = "lab.Subject".to_string();
    for _ in 0..6 {
        nested = format!("lab.Subject & {}", serde_json::json!({ "$rel": nested }));
    }
    assert_eq!(parse(&nested).unwrap_err().code, Code::TooComplex);
}

#[test]
fn json_conditions() {
    let v: Value =
        serde_json::from_str(r#"[{"a": 1}, {"$not": "x > 1"}, {"$and": [true]}, {"$rel": "lab.Scan"}]"#)
            .unwrap();
    let c = Cond::from_json(&v).unwrap();
    assert_eq!(Cond::from_json(&c.to_json()).unwrap(), c);
    assert!(Cond::from_json(&serde_json::json!({"$drop": 1})).is_err());
    assert!(Cond::from_json(&serde_json::json!(3)).is_err());
}
