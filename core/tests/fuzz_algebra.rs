//! Relation expressions come from any SQL client, stored values and guests: the parser and the
//! compiler never panic, what parses prints back to the same expression, and what compiles is
//! one SELECT statement, whatever injection the conditions and computed attributes try.

use datajoint_core::algebra::{compile, parse, AlgebraError, Attribute, Catalog, Code, TableInfo};
use proptest::prelude::*;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

mod common;
use common::outside_quotes;

struct Lab;

fn attr(name: &str, in_key: bool, lineage: Option<&str>) -> Attribute {
    Attribute { name: name.into(), in_key, lineage: lineage.map(String::from) }
}

impl Catalog for Lab {
    type Error = AlgebraError;
    fn table(&mut self, name: &str) -> Result<TableInfo, AlgebraError> {
        let subject = Some("lab.subject.subject_id");
        let (table, attributes) = match name {
            "lab.Subject" => {
                ("subject", vec![attr("subject_id", true, subject), attr("species", false, None)])
            }
            "lab.Session" => (
                "session",
                vec![
                    attr("subject_id", true, subject),
                    attr("session_idx", true, Some("lab.session.session_idx")),
                    attr("depth", false, None),
                ],
            ),
            _ => return Err(AlgebraError::new(Code::UndefinedTable, "no such table", name, "")),
        };
        Ok(TableInfo {
            display: name.to_string(),
            schema: "lab".into(),
            table: table.into(),
            attributes,
            lineage_available: true,
        })
    }
}

fn expression_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("lab.Subject"),
        Just("lab.Session"),
        Just("lab.\"x\"\"y\""),
        Just(" * "),
        Just(" & "),
        Just(" - "),
        Just(" + "),
        Just("("),
        Just(")"),
        Just(", "),
        Just("proj("),
        Just("aggr("),
        Just("top("),
        Just("u("),
        Just("not("),
        Just("and("),
        Just("extend("),
        Just("'depth > 1'"),
        Just("'n = count(*)'"),
        Just("'x = depth * 2'"),
        Just("'-depth'"),
        Just("'...'"),
        Just("'subject_id'"),
        Just("'depth; drop table t'"),
        Just("'1) union select * from pg_authid --'"),
        Just("'depth > (select 1)'"),
        Just("'pg_sleep(10) is null'"),
        Just("'x = pg_read_file(''/etc/passwd'')'"),
        Just("'/* c */ depth'"),
        Just("'depth DESC'"),
        Just("'KEY'"),
        Just("{\"subject_id\": 1}"),
        Just("{\"subject_id\": \"1'; drop table t; --\"}"),
        Just("{\"$not\": \"depth > 2\"}"),
        Just("[{\"subject_id\": 2}, 'depth < 3']"),
        Just("3"),
        Just("true"),
        Just("exclude_nonmatching=true"),
        Just("offset=2"),
        Just(";"),
        Just("--"),
        Just("'"),
        Just("\""),
    ];
    prop::collection::vec(token, 0..14).prop_map(|t| t.concat())
}

fn single_select(sql: &str) -> bool {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => {
            statements.len() == 1 && matches!(statements[0], sqlparser::ast::Statement::Query(_))
        }
        Err(_) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,160}") {
        if let Ok(mut rel) = parse(&text) {
            let _ = compile(&mut rel, &mut Lab);
        }
    }

    #[test]
    fn parsed_expressions_round_trip_and_compile_to_one_select(text in expression_like()) {
        if let Ok(mut rel) = parse(&text) {
            let printed = rel.to_string();
            prop_assert_eq!(parse(&printed), Ok(rel.clone()), "{} printed as {}", text, printed);
            if let Ok(compiled) = compile(&mut rel, &mut Lab) {
                let bare = outside_quotes(&compiled.sql);
                prop_assert!(!bare.contains(';') && !bare.contains("--") && !bare.contains("/*"), "{}", compiled.sql);
                prop_assert!(!bare.to_lowercase().contains("pg_sleep") && !bare.to_lowercase().contains("pg_read_file"), "{}", compiled.sql);
                prop_assert!(!bare.to_lowercase().contains("union select *"), "{}", compiled.sql);
                prop_assert!(single_select(&compiled.sql), "not one SELECT: {}", compiled.sql);
            }
        }
    }
}

#[test]
fn the_generator_reaches_compiled_queries() {
    // Guard against a strategy that never gets past the parser: these forms must compile.
    for text in [
        "lab.Subject * lab.Session & 'depth > 1'",
        "aggr(lab.Subject, lab.Session, 'n = count(*)') - {\"$not\": \"n > 2\"}",
        "top(proj(lab.Session, 'x = depth * 2'), 3, 'KEY')",
        "lab.Subject & {\"subject_id\": \"1'; drop table t; --\"}",
    ] {
        let mut rel = parse(text).unwrap();
        let compiled = compile(&mut rel, &mut Lab).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(single_select(&compiled.sql), "{}", compiled.sql);
    }
}
