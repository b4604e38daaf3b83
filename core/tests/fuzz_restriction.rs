//! Restrictions come from any SQL client: the checker never panics, and what it accepts is one
//! expression over the table's attributes, stable under re-checking.

use datajoint_core::restriction::condition;
use proptest::prelude::*;

mod common;
use common::outside_quotes;

fn attributes() -> Vec<String> {
    ["depth", "quality", "subject_id"].iter().map(|s| s.to_string()).collect()
}

fn sql_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("depth"),
        Just("quality"),
        Just("subject_id"),
        Just("other"),
        Just("1"),
        Just("'x'"),
        Just("'"),
        Just("\""),
        Just(" "),
        Just("("),
        Just(")"),
        Just(","),
        Just(";"),
        Just("--"),
        Just("/*"),
        Just("*/"),
        Just("="),
        Just("<>"),
        Just(">"),
        Just("and"),
        Just("or"),
        Just("not"),
        Just("in"),
        Just("select"),
        Just("from"),
        Just("pg_sleep"),
        Just("lower"),
        Just("::"),
        Just("int"),
        Just("is"),
        Just("null"),
        Just("between"),
        Just("like"),
        Just("exists"),
        Just("drop table t"),
        Just("$$"),
        Just("e'\\''"),
        Just("."),
    ];
    prop::collection::vec(token, 0..30).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,120}") {
        let _ = condition(&text, &attributes());
    }

    #[test]
    fn accepted_conditions_are_single_safe_expressions(text in sql_like()) {
        if let Ok(emitted) = condition(&text, &attributes()) {
            let bare = outside_quotes(&emitted);
            prop_assert!(!bare.contains(';') && !bare.contains("--") && !bare.contains("/*"), "{emitted}");
            prop_assert!(!bare.to_lowercase().contains("select"), "{emitted}");
            prop_assert_eq!(condition(&emitted, &attributes()), Ok(emitted.clone()));
        }
    }
}
