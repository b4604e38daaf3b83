//! The definition parser and compiler take text from any SQL client: whatever it is, they return
//! a definition or an error, never panic, and never emit SQL that carries text outside quotes.

use datajoint_core::declare::{compile, Options, Parent, ParentColumn, Target};
use datajoint_core::definition::{parse, Item};
use datajoint_core::naming::Tier;
use proptest::prelude::*;

mod common;
use common::outside_quotes;

fn parents_for(text: &str) -> Vec<Parent> {
    let Ok(def) = parse(text) else { return vec![] };
    def.lines
        .iter()
        .filter(|l| matches!(l.item, Item::ForeignKey(_)))
        .map(|_| Parent {
            schema: "lab".into(),
            table: "p".into(),
            primary_key: vec![ParentColumn { name: "pid".into(), sql_type: "integer".into(), lineage: None }],
        })
        .collect()
}

fn check(text: &str) {
    if let Ok(def) = parse(text) {
        for tier in Tier::ALL {
            let target = Target { schema: "lab".into(), table: "t".into(), tier };
            let _ =
                compile(&def, &target, &parents_for(text), Options { job_metadata: true, provenance: true });
        }
    }
}

/// Pieces of the language, so generated text gets deep into the parser.
fn grammar_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("->"),
        Just("---"),
        Just("#"),
        Just(":"),
        Just("="),
        Just("["),
        Just("]"),
        Just("("),
        Just(")"),
        Just(","),
        Just("."),
        Just("'"),
        Just("\""),
        Just("<"),
        Just(">"),
        Just("@"),
        Just(" "),
        Just("\n"),
        Just("nullable"),
        Just("unique"),
        Just("index"),
        Just("proj"),
        Just("master"),
        Just("null"),
        Just("int32"),
        Just("varchar(8)"),
        Just("enum("),
        Just("decimal("),
        Just("datetime"),
        Just("blob"),
        Just("CURRENT_TIMESTAMP"),
        Just("a"),
        Just("b_1"),
        Just("Session"),
        Just("_x"),
        Just("é"),
        Just("🦀"),
        Just(";"),
        Just("--"),
        Just("''"),
        Just("3"),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        check(&text);
    }

    #[test]
    fn grammar_shaped_text_never_panics(text in grammar_text()) {
        check(&text);
    }

    /// Whatever the input, every attribute's SQL type and default reach the DDL only as a quoted
    /// literal or a validated type: no statement separator survives outside quotes.
    #[test]
    fn compiled_ddl_has_no_unquoted_semicolon(text in grammar_text()) {
        if let Ok(def) = parse(&text) {
            let target = Target { schema: "lab".into(), table: "t".into(), tier: Tier::Manual };
            if let Ok(ddl) = compile(&def, &target, &parents_for(&text), Options::default()) {
                for statement in std::iter::once(&ddl.create_table).chain(&ddl.indexes).chain(&ddl.comments) {
                    prop_assert!(!outside_quotes(statement).contains(';'), "{statement}");
                    prop_assert!(!outside_quotes(statement).contains("--"), "{statement}");
                }
            }
        }
    }
}
